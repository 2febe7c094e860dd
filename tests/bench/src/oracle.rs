//! The oracle prefix-cache hit rate: perfect routing with unbounded caches.
//!
//! Each request in order hits the longest token prefix it shares with any earlier request,
//! counted in whole blocks of `block_tokens` tokens (as engines cache whole blocks). A token is
//! `chars_per_token` characters of the prompt text, the same model the synthetic text uses.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Serialize;

/// Totals of an oracle computation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Oracle {
    /// Prompt tokens that an ideal router would find cached.
    pub hit_tokens: u64,
    /// All prompt tokens.
    pub prompt_tokens: u64,
}

impl Oracle {
    /// hit_tokens / prompt_tokens (0 for an empty workload).
    pub fn rate(&self) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.prompt_tokens as f64
        }
    }
}

/// Computes the oracle over prompts given in send order.
pub fn oracle<'a>(
    prompts: impl IntoIterator<Item = &'a str>,
    chars_per_token: usize,
    block_tokens: usize,
) -> Oracle {
    let cpt = chars_per_token.max(1);
    let block_tokens = block_tokens.max(1);
    let block_bytes = cpt * block_tokens;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut result = Oracle {
        hit_tokens: 0,
        prompt_tokens: 0,
    };
    for prompt in prompts {
        let bytes = prompt.as_bytes();
        result.prompt_tokens += bytes.len().div_ceil(cpt) as u64;
        let mut parent = 0u64;
        let mut matching = true;
        for block in bytes.chunks_exact(block_bytes) {
            let mut hasher = DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            if matching && seen.contains(&parent) {
                result.hit_tokens += block_tokens as u64;
            } else {
                matching = false;
                seen.insert(parent);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_blocks() {
        // One char per token, blocks of 2 tokens.
        let prompts = ["abcdef", "abcdxy", "abzzzz", "q", "abc", "zzabcd"];
        let o = oracle(prompts, 1, 2);
        // 0 + 4 ("ab","cd") + 2 ("ab") + 0 + 2 ("ab"; "c" is a partial block) + 0
        assert_eq!(o.hit_tokens, 8);
        assert_eq!(o.prompt_tokens, 6 + 6 + 6 + 1 + 3 + 6);
        assert!((o.rate() - 8.0 / 28.0).abs() < 1e-12);
    }

    #[test]
    fn tokens_round_up_and_empty_is_zero() {
        let o = oracle(["abcde", "abcde"], 2, 1);
        // 3 tokens each; the second hits 2 whole blocks of 1 token (4 chars).
        assert_eq!(o.prompt_tokens, 6);
        assert_eq!(o.hit_tokens, 2);
        assert_eq!(oracle([], 4, 16).rate(), 0.0);
    }

    #[test]
    fn a_block_only_hits_after_its_whole_prefix() {
        // Same second block, different first block: no hit.
        let o = oracle(["aabb", "ccbb"], 1, 2);
        assert_eq!(o.hit_tokens, 0);
    }
}
