//! Index keys: prompt bytes plus the unit they may be split on.

use std::borrow::Cow;

use crate::request::Prompt;

/// What the bytes of a key are, which decides where edges may be split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// UTF-8 text: split only on char boundaries.
    Text,
    /// Token ids as 4-byte little-endian units: split only on unit boundaries.
    Tokens,
}

/// The bytes of one prompt as the index sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixKey<'a> {
    bytes: Cow<'a, [u8]>,
    kind: KeyKind,
}

impl<'a> PrefixKey<'a> {
    /// A text key borrowing `text`.
    pub fn text(text: &'a str) -> PrefixKey<'a> {
        PrefixKey {
            bytes: Cow::Borrowed(text.as_bytes()),
            kind: KeyKind::Text,
        }
    }

    /// A token key: each id becomes 4 little-endian bytes.
    pub fn tokens(ids: &[u32]) -> PrefixKey<'static> {
        PrefixKey {
            bytes: Cow::Owned(ids.iter().flat_map(|t| t.to_le_bytes()).collect()),
            kind: KeyKind::Tokens,
        }
    }

    /// The key of a prompt: its text, or its token ids.
    pub fn from_prompt(prompt: &'a Prompt<'a>) -> PrefixKey<'a> {
        match prompt {
            Prompt::Text(t) => PrefixKey::text(t),
            Prompt::Tokens(ids) => PrefixKey::tokens(ids),
        }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Empty key.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Text or tokens.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The longest prefix of at most `max` bytes that ends on a unit boundary.
    pub(crate) fn truncated(&self, max: usize) -> &[u8] {
        if self.bytes.len() <= max {
            return &self.bytes;
        }
        let end = floor_boundary(self.kind, &self.bytes, max);
        &self.bytes[..end]
    }
}

/// Whether `pos` is a unit boundary of `bytes` (a valid key of `kind`).
pub(crate) fn is_boundary(kind: KeyKind, bytes: &[u8], pos: usize) -> bool {
    match kind {
        KeyKind::Tokens => pos.is_multiple_of(4),
        // Not a UTF-8 continuation byte (0b10xx_xxxx), or the end.
        KeyKind::Text => bytes.get(pos).is_none_or(|&b| (b as i8) >= -0x40),
    }
}

/// The greatest unit boundary `<= pos` (clamped to the key length).
pub(crate) fn floor_boundary(kind: KeyKind, bytes: &[u8], pos: usize) -> usize {
    let mut pos = pos.min(bytes.len());
    match kind {
        KeyKind::Tokens => pos - pos % 4,
        KeyKind::Text => {
            while pos > 0 && !is_boundary(kind, bytes, pos) {
                pos -= 1;
            }
            pos
        }
    }
}

/// The first unit of `bytes` (non-empty, starting on a boundary) packed into a `u32`, used to
/// find a child by its first unit. Distinct units give distinct values.
pub(crate) fn unit_key(kind: KeyKind, bytes: &[u8]) -> u32 {
    let width = match kind {
        KeyKind::Tokens => 4,
        KeyKind::Text => match bytes.first() {
            Some(&b) if b < 0x80 => 1,
            Some(&b) if b < 0xE0 => 2,
            Some(&b) if b < 0xF0 => 3,
            _ => 4,
        },
    };
    let mut packed = [0u8; 4];
    let n = width.min(bytes.len());
    packed[..n].copy_from_slice(&bytes[..n]);
    u32::from_be_bytes(packed)
}

/// Length of the common prefix of `a` and `b` in bytes, comparing in 16-byte blocks first.
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    if a == b {
        return n;
    }
    const BLOCK: usize = 16;
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_utf8_and_token_units() {
        let s = "aé€😀";
        let b = s.as_bytes();
        let text: Vec<usize> = (0..=b.len())
            .filter(|&p| is_boundary(KeyKind::Text, b, p))
            .collect();
        let expected: Vec<usize> = (0..=b.len()).filter(|&p| s.is_char_boundary(p)).collect();
        assert_eq!(text, expected);
        assert_eq!(floor_boundary(KeyKind::Text, b, 2), 1);
        assert_eq!(floor_boundary(KeyKind::Tokens, &[0; 12], 7), 4);
        assert_eq!(floor_boundary(KeyKind::Tokens, &[0; 12], 20), 12);
    }

    #[test]
    fn unit_keys_distinguish_chars_sharing_a_lead_byte() {
        let e1 = unit_key(KeyKind::Text, "é".as_bytes());
        let e2 = unit_key(KeyKind::Text, "è".as_bytes());
        assert_ne!(e1, e2);
        assert_eq!(
            unit_key(KeyKind::Text, b"ab"),
            unit_key(KeyKind::Text, b"ax")
        );
        let t = PrefixKey::tokens(&[1, 2]);
        assert_eq!(t.len(), 8);
        assert_eq!(unit_key(KeyKind::Tokens, t.as_bytes()), 0x0100_0000);
    }

    #[test]
    fn common_prefix_finds_first_difference() {
        let a = vec![7u8; 100];
        let mut b = a.clone();
        assert_eq!(common_prefix(&a, &b), 100);
        b[37] = 0;
        assert_eq!(common_prefix(&a, &b), 37);
        assert_eq!(common_prefix(&a, &b[..10]), 10);
        assert_eq!(common_prefix(b"", b"x"), 0);
    }

    #[test]
    fn truncation_respects_boundaries() {
        let k = PrefixKey::text("ab€");
        assert_eq!(k.truncated(3), b"ab");
        assert_eq!(k.truncated(100), "ab€".as_bytes());
    }
}
