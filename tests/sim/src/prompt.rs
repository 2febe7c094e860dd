//! Approximate tokenization: prompt length in tokens and chained block hashes.

use kvroute_core::kv_events::{BlockHasher, HasherConfig};
use serde_json::Value;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A prompt reduced to what the engine model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Prompt length in tokens.
    pub tokens: usize,
    /// Chained hashes of the prompt's full blocks, in order.
    pub block_hashes: Vec<u64>,
    /// The token ids, when the prompt was given or tokenized as ids (empty for the
    /// approximate text tokenizer).
    pub token_ids: Vec<u32>,
}

impl Prompt {
    /// Hash of the whole prompt (the last block hash, or a hash of the length).
    pub fn fingerprint(&self) -> u64 {
        self.block_hashes
            .last()
            .copied()
            .unwrap_or_else(|| fnv1a(FNV_OFFSET, &(self.tokens as u64).to_le_bytes()))
    }
}

/// Root of a model's hash chain, so that models never share blocks.
fn chain_root(model: &str) -> u64 {
    fnv1a(FNV_OFFSET, model.as_bytes())
}

fn chain(root: u64, blocks: impl Iterator<Item = Vec<u8>>) -> Vec<u64> {
    let mut parent = root;
    blocks
        .map(|block| {
            parent = fnv1a(fnv1a(FNV_OFFSET, &parent.to_le_bytes()), &block);
            parent
        })
        .collect()
}

/// Text prompt: ceil(bytes / chars_per_token) tokens; full blocks of
/// `block_size * chars_per_token` bytes hashed in a chain.
pub fn from_text(model: &str, text: &str, block_size: u32, chars_per_token: u32) -> Prompt {
    let cpt = chars_per_token.max(1) as usize;
    let block_bytes = block_size.max(1) as usize * cpt;
    let bytes = text.as_bytes();
    let tokens = bytes.len().div_ceil(cpt);
    let block_hashes = chain(
        chain_root(model),
        bytes.chunks_exact(block_bytes).map(<[u8]>::to_vec),
    );
    Prompt {
        tokens,
        block_hashes,
        token_ids: Vec::new(),
    }
}

/// Token-id prompt hashed exactly like vLLM (`sha256_cbor`, seeded by `hash_seed`, LoRA name
/// as extra key), so a router can compute the same block hashes.
pub fn from_token_ids(ids: &[u32], block_size: u32, hash_seed: &str, lora: Option<&str>) -> Prompt {
    let hasher = BlockHasher::new(&HasherConfig {
        block_size,
        hash_seed: hash_seed.to_owned(),
    });
    Prompt {
        tokens: ids.len(),
        block_hashes: hasher.block_hashes(ids, lora, None, usize::MAX),
        token_ids: ids.to_vec(),
    }
}

/// Token-id prompt: one token per id; full blocks of `block_size` ids hashed in a chain, the
/// vLLM way ([`from_token_ids`], LoRA key `lora`) when every id fits 32 bits.
pub fn from_ids(
    model: &str,
    ids: &[u64],
    block_size: u32,
    hash_seed: &str,
    lora: Option<&str>,
) -> Prompt {
    if let Ok(small) = ids
        .iter()
        .map(|&i| u32::try_from(i))
        .collect::<Result<Vec<u32>, _>>()
    {
        return from_token_ids(&small, block_size, hash_seed, lora);
    }
    let bs = block_size.max(1) as usize;
    let block_hashes = chain(
        chain_root(model),
        ids.chunks_exact(bs)
            .map(|ids| ids.iter().flat_map(|id| id.to_le_bytes()).collect()),
    );
    Prompt {
        tokens: ids.len(),
        block_hashes,
        token_ids: Vec::new(),
    }
}

/// Text of one chat message's `content`: a string, or the `text` parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders chat messages with a fixed template, so equal message prefixes give
/// equal text prefixes. Returns `None` when a message is not an object.
pub fn render_chat(messages: &[Value]) -> Option<String> {
    let mut out = String::new();
    for m in messages {
        let obj = m.as_object()?;
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("user");
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(&content_text(obj.get("content").unwrap_or(&Value::Null)));
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_blocks_chain_and_share_prefixes() {
        let a = from_text("m", &"x".repeat(200), 4, 4);
        assert_eq!(a.tokens, 50);
        assert_eq!(a.block_hashes.len(), 12);
        let b = from_text("m", &format!("{}{}", "x".repeat(64), "y".repeat(64)), 4, 4);
        assert_eq!(a.block_hashes[..4], b.block_hashes[..4]);
        assert_ne!(a.block_hashes[4], b.block_hashes[4]);
        // Same block content at another position hashes differently (chained).
        assert_ne!(a.block_hashes[0], a.block_hashes[1]);
        let other_model = from_text("n", &"x".repeat(200), 4, 4);
        assert_ne!(a.block_hashes[0], other_model.block_hashes[0]);
    }

    #[test]
    fn ids_and_chat_rendering() {
        let p = from_ids("m", &[1, 2, 3, 4, 5], 2, "0", None);
        assert_eq!((p.tokens, p.block_hashes.len()), (5, 2));
        // Ids are hashed like vLLM: the same chain as the router's hasher computes.
        let hasher = BlockHasher::new(&HasherConfig {
            block_size: 2,
            hash_seed: "0".into(),
        });
        assert_eq!(
            p.block_hashes,
            hasher.block_hashes(&[1, 2, 3, 4], None, None, 9)
        );
        let big = from_ids("m", &[u64::MAX, 2, 3, 4], 2, "0", None);
        assert_eq!(big.block_hashes.len(), 2);
        let msgs: Vec<Value> = serde_json::from_str(
            r#"[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}]"#,
        )
        .unwrap_or_default();
        let text = render_chat(&msgs).unwrap_or_default();
        assert!(text.contains("system\ns") && text.contains("user\nhi"));
        assert!(render_chat(&[Value::from(3)]).is_none());
    }
}
