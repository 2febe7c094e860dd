//! `prefix_hash`: the hash of the prompt's first blocks, placed on a consistent-hash ring
//! with bounded loads.
//!
//! The key hashes the model, the LoRA adapter, the cache salt and the first `prefix_blocks`
//! whole blocks of the prompt (`block_bytes` bytes of text, or `block_tokens` token ids). Only
//! whole blocks count, so once a conversation's prompt is longer than `prefix_blocks` blocks
//! its key no longer changes as it grows; a prompt shorter than one block is hashed whole.
//! Requests sharing that much prefix (a system prompt, a few-shot preamble, a document) land
//! on the same worker, where the engine's prefix cache holds it, with no state kept per
//! prefix. The ring and the load bound are those of `consistent_hash`: a worker whose load
//! would exceed `ceil(load_factor * (total_load + 1) / n)` is passed over for the next one
//! clockwise. The ranked list is the ring order from the key's position.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use super::hash_ring::{DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES, HashRing};
use super::{Pick, Policy, PolicyEnv};
use crate::request::{Prompt, RouteRequest};
use crate::worker::{Worker, WorkerId};

/// Parameters of `prefix_hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixHashConfig {
    /// Number of leading blocks hashed into the key.
    pub prefix_blocks: usize,
    /// Block size for text prompts, in bytes.
    pub block_bytes: usize,
    /// Block size for token-id prompts, in tokens.
    pub block_tokens: usize,
    /// Points each worker owns on the ring.
    pub virtual_nodes: u32,
    /// Bounded-load factor `c` (at least 1.0), as in `consistent_hash`.
    pub load_factor: f64,
}

impl Default for PrefixHashConfig {
    fn default() -> PrefixHashConfig {
        PrefixHashConfig {
            prefix_blocks: 4,
            block_bytes: 256,
            block_tokens: 64,
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            load_factor: DEFAULT_LOAD_FACTOR,
        }
    }
}

/// The `prefix_hash` policy.
#[derive(Debug)]
pub struct PrefixHashPolicy {
    config: PrefixHashConfig,
    ring: HashRing,
}

impl PrefixHashPolicy {
    /// Builds the policy.
    pub fn new(config: PrefixHashConfig) -> PrefixHashPolicy {
        let ring = HashRing::new(config.virtual_nodes);
        PrefixHashPolicy { config, ring }
    }

    /// The ring key of a request.
    fn key(&self, req: &RouteRequest<'_>) -> u64 {
        let mut h = Xxh3Default::new();
        let mut field = |bytes: Option<&[u8]>| match bytes {
            Some(b) => {
                h.update(&[1]);
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(b);
            }
            None => h.update(&[0]),
        };
        field(Some(req.model.as_bytes()));
        field(req.lora.map(str::as_bytes));
        field(req.cache_salt.map(str::as_bytes));
        match req.prompt {
            Prompt::Text(t) => {
                let n = prefix_len(t.len(), self.config.block_bytes, self.config.prefix_blocks);
                h.update(b"t");
                h.update(&t.as_bytes()[..n]);
            }
            Prompt::Tokens(ids) => {
                let n = prefix_len(
                    ids.len(),
                    self.config.block_tokens,
                    self.config.prefix_blocks,
                );
                h.update(b"i");
                for id in &ids[..n] {
                    h.update(&id.to_le_bytes());
                }
            }
        }
        h.digest()
    }
}

/// How much of a prompt of `len` units is hashed: whole blocks, at most `blocks` of them, or
/// everything when the prompt is shorter than one block.
fn prefix_len(len: usize, block: usize, blocks: usize) -> usize {
    let block = block.max(1);
    if len < block {
        len
    } else {
        (len / block).min(blocks.max(1)) * block
    }
}

impl Policy for PrefixHashPolicy {
    fn name(&self) -> &'static str {
        "prefix_hash"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        _env: &mut PolicyEnv<'_>,
    ) -> Pick {
        self.ring.add_missing(candidates);
        let key = self.key(req);
        Pick {
            ranked: self
                .ring
                .rank_bounded(key, candidates, self.config.load_factor),
            prefix_match: None,
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.ring.remove(id);
    }
}

impl PrefixHashConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        count("prefix_blocks", self.prefix_blocks as u64, 1, 4096)?;
        count("block_bytes", self.block_bytes as u64, 1, 1 << 20)?;
        count("block_tokens", self.block_tokens as u64, 1, 4096)?;
        ring(self.virtual_nodes, self.load_factor)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests_support::{env_rng, request, workers};

    fn first(p: &mut PrefixHashPolicy, ws: &[Worker], req: &RouteRequest<'_>) -> WorkerId {
        let mut rng = env_rng();
        let mut env = PolicyEnv {
            now_ms: 0,
            rng: &mut rng,
        };
        let refs: Vec<&Worker> = ws.iter().collect();
        let ranked = p.pick(req, &refs, &mut env).ranked;
        assert_eq!(ranked.len(), ws.len());
        ranked[0]
    }

    #[test]
    fn prefix_len_counts_whole_blocks() {
        assert_eq!(prefix_len(10, 256, 4), 10);
        assert_eq!(prefix_len(300, 256, 4), 256);
        assert_eq!(prefix_len(5000, 256, 4), 1024);
        assert_eq!(prefix_len(5000, 0, 0), 1);
    }

    #[test]
    fn shared_prefix_same_key_different_prefix_spreads() {
        let p = PrefixHashPolicy::new(PrefixHashConfig::default());
        let system = "You are a meticulous assistant. ".repeat(40);
        let a = Prompt::Text(format!("{system}Question one?").into());
        let b = Prompt::Text(format!("{system}A different, longer question two?").into());
        assert_eq!(p.key(&request(&a)), p.key(&request(&b)));
        let c = Prompt::Text(format!("Other preamble. {system}").into());
        assert_ne!(p.key(&request(&a)), p.key(&request(&c)));
        // Model, adapter and salt are part of the key.
        let mut salted = request(&a);
        salted.cache_salt = Some("tenant-b");
        assert_ne!(p.key(&request(&a)), p.key(&salted));
        let mut lora = request(&a);
        lora.lora = Some("sql");
        assert_ne!(p.key(&lora), p.key(&salted));
        let t1 = Prompt::Tokens((0..300).collect());
        let t2 = Prompt::Tokens((0..400).collect());
        assert_eq!(p.key(&request(&t1)), p.key(&request(&t2)));
    }

    #[test]
    fn many_prefixes_spread_over_workers() {
        let ws = workers(4);
        let mut p = PrefixHashPolicy::new(PrefixHashConfig::default());
        let mut per_worker = [0usize; 4];
        for i in 0..400 {
            let prompt = Prompt::Text(format!("document {i}: ...").into());
            let w = first(&mut p, &ws, &request(&prompt));
            assert_eq!(w, first(&mut p, &ws, &request(&prompt)));
            per_worker[w.0 as usize] += 1;
        }
        assert!(
            per_worker.iter().all(|&n| (50..=200).contains(&n)),
            "{per_worker:?}"
        );
    }
}
