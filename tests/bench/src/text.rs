//! Deterministic synthetic text: pseudo-words sized to a chosen number of tokens.
//!
//! Engines (and the simulator) count roughly `chars_per_token` characters per token, so a text
//! of `n` tokens is exactly `n * chars_per_token` ASCII characters of lowercase pseudo-words.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwz";
const VOWELS: &[u8] = b"aeiou";

/// Derives an independent RNG seed from a base seed, a purpose tag and an index.
///
/// Texts generated from such seeds do not depend on the rest of the workload shape, so for
/// example group 3's system prompt is the same whatever the number of prompts per group.
pub fn derive_seed(seed: u64, tag: &str, index: u64) -> u64 {
    // FNV-1a over the tag, then SplitMix64 mixing of everything.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(splitmix(seed ^ h).wrapping_add(index))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Generates `tokens * chars_per_token` characters of pseudo-words from `seed`.
pub fn synthetic_text(seed: u64, tokens: usize, chars_per_token: usize) -> String {
    let len = tokens.saturating_mul(chars_per_token.max(1));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = String::with_capacity(len + 8);
    while out.len() < len {
        if !out.is_empty() {
            out.push(' ');
        }
        let syllables = rng.random_range(1..=3);
        for _ in 0..syllables {
            out.push(char::from(
                CONSONANTS[rng.random_range(0..CONSONANTS.len())],
            ));
            out.push(char::from(VOWELS[rng.random_range(0..VOWELS.len())]));
        }
    }
    out.truncate(len);
    out
}

/// Estimated token count of `text` under the `chars_per_token` model (rounded up).
pub fn estimate_tokens(text: &str, chars_per_token: usize) -> usize {
    text.len().div_ceil(chars_per_token.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_length_and_deterministic() {
        let a = synthetic_text(7, 100, 4);
        assert_eq!(a.len(), 400);
        assert_eq!(a, synthetic_text(7, 100, 4));
        assert_ne!(a, synthetic_text(8, 100, 4));
        assert!(a.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
        assert_eq!(estimate_tokens(&a, 4), 100);
    }

    #[test]
    fn derived_seeds_differ_by_tag_and_index() {
        assert_ne!(derive_seed(1, "system", 0), derive_seed(1, "system", 1));
        assert_ne!(derive_seed(1, "system", 0), derive_seed(1, "question", 0));
        assert_eq!(derive_seed(1, "system", 5), derive_seed(1, "system", 5));
    }

    #[test]
    fn zero_tokens_is_empty() {
        assert!(synthetic_text(1, 0, 4).is_empty());
    }
}
