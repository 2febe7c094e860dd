//! vLLM's prefix-cache block hashes, computed from token ids.
//!
//! vLLM (v1 engine, `--prefix-caching-hash-algo sha256_cbor`) hashes each full block of
//! `block_size` tokens as `sha256(cbor((parent_hash, tuple(token_ids), extra_keys)))`, encoded
//! canonically, chaining the 32-byte digest of the previous block; the first block's parent is
//! `NONE_HASH = sha256(cbor(PYTHONHASHSEED))`. `extra_keys` is `null` or a tuple of LoRA name
//! then (first block only) the request's `cache_salt`. Its KV events carry the low 64 bits of
//! each digest (its last 8 bytes, big-endian). Engines must run with `PYTHONHASHSEED` set to
//! the configured `hash_seed`, else their first-block parent is random.

use ciborium_ll::{Encoder, Header, simple};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hashing parameters; must match the engines'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HasherConfig {
    /// Tokens per KV-cache block (vLLM `--block-size`, SGLang `--page-size`).
    pub block_size: u32,
    /// The engines' `PYTHONHASHSEED`.
    pub hash_seed: String,
}

impl Default for HasherConfig {
    fn default() -> HasherConfig {
        HasherConfig {
            block_size: 16,
            hash_seed: "0".to_owned(),
        }
    }
}

/// A 32-byte block digest.
pub type Digest32 = [u8; 32];

/// Computes vLLM-compatible block hashes.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    block_size: usize,
    none_hash: Digest32,
}

impl BlockHasher {
    /// A hasher for `config`. A zero block size is treated as 1.
    pub fn new(config: &HasherConfig) -> BlockHasher {
        BlockHasher {
            block_size: config.block_size.max(1) as usize,
            none_hash: {
                let mut buf: Vec<u8> = Vec::new();
                let mut enc = Encoder::from(&mut buf);
                // Writing into a Vec cannot fail.
                let _ = enc.text(&config.hash_seed, None);
                Sha256::digest(&buf).into()
            },
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The parent digest of every chain's first block.
    pub fn none_hash(&self) -> Digest32 {
        self.none_hash
    }

    /// The digest of one full block after `parent`, with vLLM's `extra_keys` (empty: none).
    pub fn hash_block(parent: &Digest32, tokens: &[u32], extra_keys: &[&str]) -> Digest32 {
        let mut buf = Vec::with_capacity(48 + tokens.len() * 5);
        hash_block_into(&mut buf, parent, tokens, extra_keys)
    }

    /// The 64-bit hashes of the first `max_blocks` full blocks of `tokens`, as the engine
    /// publishes them. `lora` and `cache_salt` are the request's adapter name and salt.
    pub fn block_hashes(
        &self,
        tokens: &[u32],
        lora: Option<&str>,
        cache_salt: Option<&str>,
        max_blocks: usize,
    ) -> Vec<u64> {
        let mut parent = self.none_hash;
        let mut buf = Vec::with_capacity(48 + self.block_size * 5);
        tokens
            .chunks_exact(self.block_size)
            .take(max_blocks)
            .enumerate()
            .map(|(i, block)| {
                let salt = if i == 0 { cache_salt } else { None };
                let extra: Vec<&str> = lora.into_iter().chain(salt).collect();
                parent = hash_block_into(&mut buf, &parent, block, &extra);
                low_u64(&parent)
            })
            .collect()
    }
}

/// The low 64 bits of a digest: its last 8 bytes, big-endian.
pub fn low_u64(d: &Digest32) -> u64 {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&d[24..]);
    u64::from_be_bytes(tail)
}

/// Hashes one block, encoding `[parent, [tokens...], extra_keys | null]` into `buf` as
/// canonical CBOR (definite lengths, shortest integer heads), as `cbor2.dumps(canonical=True)`
/// writes that tuple.
fn hash_block_into(
    buf: &mut Vec<u8>,
    parent: &Digest32,
    tokens: &[u32],
    extra_keys: &[&str],
) -> Digest32 {
    buf.clear();
    let mut enc = Encoder::from(&mut *buf);
    // Writing into a Vec cannot fail.
    let _ = (|| -> Result<(), std::io::Error> {
        enc.push(Header::Array(Some(3)))?;
        enc.bytes(parent, None)?;
        enc.push(Header::Array(Some(tokens.len())))?;
        for &t in tokens {
            enc.push(Header::Positive(u64::from(t)))?;
        }
        if extra_keys.is_empty() {
            enc.push(Header::Simple(simple::NULL))?;
        } else {
            enc.push(Header::Array(Some(extra_keys.len())))?;
            for k in extra_keys {
                enc.text(k, None)?;
            }
        }
        Ok(())
    })();
    Sha256::digest(&buf[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values re-derived independently with Python's `cbor2.dumps(x, canonical=True)`
    // and `hashlib.sha256`, following vLLM's `hash_block_tokens` / `init_none_hash`.
    const NONE_HASH_SEED_0: &str =
        "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e";
    const NONE_HASH_SEED_42: &str =
        "9fa6eb003f14425eb9c8e6baacfbcaab26257357b829c7bfa74ffcc4f31c1780";

    fn hex(d: &Digest32) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hasher(seed: &str) -> BlockHasher {
        BlockHasher::new(&HasherConfig {
            block_size: 16,
            hash_seed: seed.to_owned(),
        })
    }

    #[test]
    fn none_hash_matches_the_reference() {
        assert_eq!(hex(&hasher("0").none_hash()), NONE_HASH_SEED_0);
        assert_eq!(hex(&hasher("42").none_hash()), NONE_HASH_SEED_42);
    }

    #[test]
    fn chained_hashes_match_the_reference() {
        let h = hasher("0");
        let seq: Vec<u32> = (0..32).collect();
        type Case<'a> = (&'a [u32], Option<&'a str>, Option<&'a str>, [u64; 2]);
        let cases: [Case; 5] = [
            (
                &seq,
                None,
                None,
                [12687895063098490012, 1814341696565857452],
            ),
            (
                &seq,
                Some("sql"),
                None,
                [8742221617830640250, 11149663305430400837],
            ),
            (
                &seq,
                Some("sql"),
                Some("tenant"),
                [10970999810621813352, 14008511759565271708],
            ),
            (
                &seq,
                None,
                Some("tenant"),
                [3236391496705566249, 13587018833178558560],
            ),
            (
                &[151643, 70000, 300, 5].repeat(8),
                None,
                None,
                [13306666361357261139, 514505468776534417],
            ),
        ];
        for (tokens, lora, salt, want) in cases {
            assert_eq!(
                h.block_hashes(tokens, lora, salt, usize::MAX),
                want,
                "{lora:?} {salt:?}"
            );
        }
    }

    #[test]
    fn only_full_blocks_are_hashed_and_prefixes_share_hashes() {
        let h = hasher("0");
        let long: Vec<u32> = (0..70).collect();
        let all = h.block_hashes(&long, None, None, usize::MAX);
        assert_eq!(all.len(), 4);
        assert_eq!(
            h.block_hashes(&long[..40], None, None, usize::MAX),
            all[..2]
        );
        assert_eq!(h.block_hashes(&long, None, None, 3), all[..3]);
        assert!(
            h.block_hashes(&long[..15], None, None, usize::MAX)
                .is_empty()
        );
        // A different seed changes every hash.
        let other = hasher("1").block_hashes(&long, None, None, usize::MAX);
        assert!(all.iter().zip(&other).all(|(a, b)| a != b));
    }
}
