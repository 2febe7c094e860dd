//! `precise_prefix`: route to the worker whose engine reports holding the most leading blocks
//! of the prompt, from the engines' own KV-cache events.
//!
//! The prompt's token ids (the shell's tokenization, or ids the client sent) are cut into full
//! blocks and hashed the way vLLM does ([`BlockHasher`]); the [`BlockIndex`] built from
//! `BlockStored`/`BlockRemoved`/`AllBlocksCleared` events says how many leading blocks each
//! worker really holds. Between a decision and the engine's `BlockStored` event the choice is
//! remembered for `pending_ttl_ms`, so a burst of requests sharing a new prefix converges
//! instead of scattering.
//!
//! The decision, in order:
//! 1. Imbalanced load (as in `cache_aware`): the least-loaded worker.
//! 2. A hit (at least `min_match_blocks` leading blocks held): the worker with the longest
//!    match, ties by load, then at random.
//! 3. Otherwise the least-loaded worker, ties by fewest indexed blocks, then at random.
//!
//! Requests without token ids (text prompts when no tokenizer is configured) are routed by the
//! embedded `cache_aware` policy on prompt text.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{CacheAwareConfig, CacheAwarePolicy, Pick, Policy, PolicyEnv};
use crate::kv_events::{BlockHasher, BlockIndex, HasherConfig, IndexConfig, KvEvent, KvEventBatch};
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

/// Parameters of `precise_prefix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecisePrefixConfig {
    /// Tokens per KV-cache block; must match the engines.
    pub block_size: u32,
    /// The engines' `PYTHONHASHSEED` (vLLM with `--prefix-caching-hash-algo sha256_cbor`).
    pub hash_seed: String,
    /// Most blocks indexed per worker.
    pub max_blocks_per_worker: usize,
    /// Most leading blocks of a prompt hashed per request (bounds the cost of huge prompts).
    pub max_prompt_blocks: usize,
    /// Fewest leading blocks held that make a cache hit.
    pub min_match_blocks: usize,
    /// How long a routing decision counts as holding the prompt's blocks before the engine's
    /// own event confirms it, in milliseconds. 0 disables.
    pub pending_ttl_ms: u64,
    /// Load is imbalanced only if `max - min` exceeds this...
    pub balance_abs_threshold: u32,
    /// ...and `max` exceeds this factor times `min`.
    pub balance_rel_threshold: f64,
    /// The text-prompt policy for requests without token ids.
    pub fallback: CacheAwareConfig,
}

impl Default for PrecisePrefixConfig {
    fn default() -> PrecisePrefixConfig {
        let hasher = HasherConfig::default();
        PrecisePrefixConfig {
            block_size: hasher.block_size,
            hash_seed: hasher.hash_seed,
            max_blocks_per_worker: IndexConfig::default().max_blocks_per_worker,
            max_prompt_blocks: 8192,
            min_match_blocks: 1,
            pending_ttl_ms: 2_000,
            balance_abs_threshold: 32,
            balance_rel_threshold: 1.5,
            fallback: CacheAwareConfig::default(),
        }
    }
}

/// Most block hashes remembered as pending at once.
const MAX_PENDING: usize = 1 << 16;

/// Decisions not yet confirmed by the engines' events: block hash to (worker, expiry).
#[derive(Debug, Default)]
struct Pending {
    holders: HashMap<u64, Vec<(WorkerId, u64)>>,
    expiry: VecDeque<(u64, u64, WorkerId)>,
}

impl Pending {
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, hash, worker)) = self.expiry.front() {
            if at > now_ms && self.expiry.len() <= MAX_PENDING {
                break;
            }
            self.expiry.pop_front();
            if let Some(v) = self.holders.get_mut(&hash) {
                v.retain(|&(w, exp)| !(w == worker && exp <= at));
                if v.is_empty() {
                    self.holders.remove(&hash);
                }
            }
        }
    }

    fn record(&mut self, worker: WorkerId, hashes: &[u64], until_ms: u64) {
        for &h in hashes {
            let v = self.holders.entry(h).or_default();
            v.retain(|&(w, _)| w != worker);
            v.push((worker, until_ms));
            self.expiry.push_back((until_ms, h, worker));
        }
    }

    /// Leading blocks of `hashes` each worker is pending for.
    fn prefix_matches(&self, hashes: &[u64], out: &mut HashMap<WorkerId, usize>) {
        let mut alive: Vec<WorkerId> = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let Some(holders) = self.holders.get(h) else {
                break;
            };
            if i == 0 {
                alive = holders.iter().map(|&(w, _)| w).collect();
            } else {
                alive.retain(|w| holders.iter().any(|(x, _)| x == w));
            }
            if alive.is_empty() {
                break;
            }
            for w in &alive {
                let m = out.entry(*w).or_insert(0);
                *m = (*m).max(i + 1);
            }
        }
    }

    /// The engine reported these blocks (stored or removed): its word replaces the guess.
    fn forget(&mut self, worker: WorkerId, hashes: &[u64]) {
        for h in hashes {
            if let Some(v) = self.holders.get_mut(h) {
                v.retain(|&(w, _)| w != worker);
                if v.is_empty() {
                    self.holders.remove(h);
                }
            }
        }
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        self.holders.retain(|_, v| {
            v.retain(|&(w, _)| w != worker);
            !v.is_empty()
        });
    }
}

/// The `precise_prefix` policy, its block index and its text fallback.
#[derive(Debug)]
pub struct PrecisePrefixPolicy {
    config: PrecisePrefixConfig,
    hasher: BlockHasher,
    index: BlockIndex,
    pending: Pending,
    fallback: CacheAwarePolicy,
}

/// What the decision looks at for one candidate.
#[derive(Clone, Copy)]
struct Candidate {
    id: WorkerId,
    matched: usize,
    load: u32,
    blocks: usize,
}

impl PrecisePrefixPolicy {
    /// Builds the policy with an empty index.
    pub fn new(config: PrecisePrefixConfig) -> PrecisePrefixPolicy {
        PrecisePrefixPolicy {
            hasher: BlockHasher::new(&HasherConfig {
                block_size: config.block_size,
                hash_seed: config.hash_seed.clone(),
            }),
            index: BlockIndex::new(IndexConfig {
                max_blocks_per_worker: config.max_blocks_per_worker,
            }),
            pending: Pending::default(),
            fallback: CacheAwarePolicy::new(config.fallback.clone()),
            config,
        }
    }

    /// The block index (for metrics and tests).
    pub fn index(&self) -> &BlockIndex {
        &self.index
    }

    /// The hasher in use.
    pub fn hasher(&self) -> &BlockHasher {
        &self.hasher
    }

    fn imbalanced(&self, min: u32, max: u32) -> bool {
        max - min > self.config.balance_abs_threshold
            && f64::from(max) > self.config.balance_rel_threshold * f64::from(min)
    }

    /// The LoRA name that keys the blocks: SGLang's `lora_path`, or the model name when some
    /// candidate serves it as an adapter (vLLM names adapters through `model`).
    fn lora<'a>(req: &RouteRequest<'a>, candidates: &[&Worker]) -> Option<&'a str> {
        req.lora.or_else(|| {
            candidates
                .iter()
                .any(|w| w.spec.lora_adapters.iter().any(|a| a == req.model))
                .then_some(req.model)
        })
    }
}

/// The candidate with the smallest `key`, ties broken at random.
fn pick_min_by<K: Ord>(
    cands: &[Candidate],
    rng: &mut dyn rand::RngCore,
    key: impl Fn(&Candidate) -> K,
) -> Option<WorkerId> {
    super::random_min_by(cands, rng, key).map(|c| c.id)
}

impl Policy for PrecisePrefixPolicy {
    fn name(&self) -> &'static str {
        "precise_prefix"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let Some(tokens) = req.token_ids() else {
            return self.fallback.pick(req, candidates, env);
        };
        let lora = PrecisePrefixPolicy::lora(req, candidates);
        let hashes =
            self.hasher
                .block_hashes(tokens, lora, req.cache_salt, self.config.max_prompt_blocks);
        let mut matches = self.index.prefix_matches(&hashes);
        if self.config.pending_ttl_ms > 0 {
            self.pending.expire(env.now_ms);
            self.pending.prefix_matches(&hashes, &mut matches);
        }
        let mut cands: Vec<Candidate> = candidates
            .iter()
            .map(|w| Candidate {
                id: w.id,
                matched: matches.get(&w.id).copied().unwrap_or(0),
                load: w.load(),
                blocks: self.index.worker_blocks(w.id),
            })
            .collect();
        let min = cands.iter().map(|c| c.load).min().unwrap_or(0);
        let max = cands.iter().map(|c| c.load).max().unwrap_or(0);
        let best = cands.iter().map(|c| c.matched).max().unwrap_or(0);

        let choice = if self.imbalanced(min, max) {
            pick_min_by(&cands, env.rng, |c| c.load)
        } else if best > 0 && best >= self.config.min_match_blocks {
            pick_min_by(&cands, env.rng, |c| (Reverse(c.matched), c.load))
        } else {
            pick_min_by(&cands, env.rng, |c| (c.load, c.blocks))
        };
        let Some(choice) = choice else {
            return Pick::default();
        };
        let chosen_match = cands
            .iter()
            .find(|c| c.id == choice)
            .map_or(0, |c| c.matched);
        cands.retain(|c| c.id != choice);
        cands.sort_by_key(|c| (Reverse(c.matched), c.load));
        let ranked = std::iter::once(choice)
            .chain(cands.iter().map(|c| c.id))
            .collect();

        if self.config.pending_ttl_ms > 0 && !hashes.is_empty() {
            let until = env.now_ms.saturating_add(self.config.pending_ttl_ms);
            self.pending.record(choice, &hashes, until);
        }
        let prefix_match = if hashes.is_empty() {
            0.0
        } else {
            chosen_match as f32 / hashes.len() as f32
        };
        Pick {
            ranked,
            prefix_match: Some(prefix_match),
        }
    }

    fn kv_events(&mut self, worker: WorkerId, batch: &KvEventBatch) {
        self.index.apply(worker, batch);
        for event in &batch.events {
            match event {
                KvEvent::BlockStored { block_hashes, .. }
                | KvEvent::BlockRemoved { block_hashes, .. } => {
                    self.pending.forget(worker, block_hashes);
                }
                KvEvent::AllBlocksCleared => self.pending.remove_worker(worker),
            }
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.index.clear_worker(id);
        self.pending.remove_worker(id);
        self.fallback.worker_removed(id);
    }
}

impl PrecisePrefixConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        count("block_size", u64::from(self.block_size), 1, 4096)?;
        count(
            "max_blocks_per_worker",
            self.max_blocks_per_worker as u64,
            1,
            u64::MAX,
        )?;
        count(
            "max_prompt_blocks",
            self.max_prompt_blocks as u64,
            1,
            1 << 20,
        )?;
        ratio("balance_rel_threshold", self.balance_rel_threshold)?;
        self.fallback
            .validate()
            .map_err(|(f, m)| (format!("fallback.{f}"), m))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::tests_support::{env_rng, request, workers};
    use crate::request::Prompt;

    fn stored(hashes: Vec<u64>) -> KvEventBatch {
        KvEventBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored {
                block_hashes: hashes,
                parent_block_hash: None,
                token_ids: Vec::new(),
                block_size: 16,
                lora_id: None,
                medium: None,
            }],
            dp_rank: None,
        }
    }

    fn removed(hashes: Vec<u64>) -> KvEventBatch {
        KvEventBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockRemoved {
                block_hashes: hashes,
                medium: None,
            }],
            dp_rank: None,
        }
    }

    fn no_pending() -> PrecisePrefixConfig {
        PrecisePrefixConfig {
            pending_ttl_ms: 0,
            ..PrecisePrefixConfig::default()
        }
    }

    fn route(
        p: &mut PrecisePrefixPolicy,
        ws: &[Worker],
        prompt: &Prompt<'_>,
        now_ms: u64,
        rng: &mut dyn rand::RngCore,
    ) -> Pick {
        let candidates: Vec<&Worker> = ws.iter().collect();
        let mut env = PolicyEnv { now_ms, rng };
        p.pick(&request(prompt), &candidates, &mut env)
    }

    fn doc(seed: u32, len: u32) -> Vec<u32> {
        (0..len).map(|i| seed * 100_000 + i).collect()
    }

    #[test]
    fn follows_the_worker_that_reports_the_blocks() {
        let mut p = PrecisePrefixPolicy::new(no_pending());
        let ws = workers(4);
        let mut rng = env_rng();
        let tokens = doc(1, 160);
        let hashes = p.hasher().block_hashes(&tokens, None, None, usize::MAX);
        p.kv_events(WorkerId(2), &stored(hashes[..6].to_vec()));
        p.kv_events(WorkerId(3), &stored(hashes[..10].to_vec()));
        let prompt = Prompt::Tokens(tokens);
        for _ in 0..10 {
            let pick = route(&mut p, &ws, &prompt, 0, &mut rng);
            assert_eq!(pick.ranked[0], WorkerId(3));
            assert_eq!(pick.ranked[1], WorkerId(2));
            assert_eq!(pick.prefix_match, Some(1.0));
        }
        // The engine evicted the blocks: the other holder wins.
        p.kv_events(WorkerId(3), &removed(hashes[..1].to_vec()));
        let pick = route(&mut p, &ws, &prompt, 0, &mut rng);
        assert_eq!(pick.ranked[0], WorkerId(2));
        assert_eq!(pick.prefix_match, Some(0.6));
        // A cleared cache forgets everything.
        p.kv_events(WorkerId(2), &KvEventBatch::cleared());
        assert_eq!(
            route(&mut p, &ws, &prompt, 0, &mut rng).prefix_match,
            Some(0.0)
        );
    }

    #[test]
    fn misses_spread_and_imbalance_wins_over_the_cache() {
        let mut p = PrecisePrefixPolicy::new(no_pending());
        let mut ws = workers(4);
        let mut rng = env_rng();
        let chosen: BTreeSet<WorkerId> = (0..40)
            .map(|i| route(&mut p, &ws, &Prompt::Tokens(doc(i, 64)), 0, &mut rng).ranked[0])
            .collect();
        assert_eq!(chosen.len(), 4);

        let tokens = doc(99, 64);
        let hashes = p.hasher().block_hashes(&tokens, None, None, usize::MAX);
        p.kv_events(WorkerId(0), &stored(hashes));
        for w in &mut ws {
            w.in_flight = if w.id == WorkerId(0) { 40 } else { 2 };
        }
        ws[1].in_flight = 0;
        let pick = route(&mut p, &ws, &Prompt::Tokens(tokens), 0, &mut rng);
        assert_eq!(pick.ranked[0], WorkerId(1));
    }

    #[test]
    fn pending_decisions_hold_a_burst_together_until_they_expire() {
        let mut p = PrecisePrefixPolicy::new(PrecisePrefixConfig {
            pending_ttl_ms: 1_000,
            ..PrecisePrefixConfig::default()
        });
        let ws = workers(4);
        let mut rng = env_rng();
        let prompt = Prompt::Tokens(doc(5, 64));
        let first = route(&mut p, &ws, &prompt, 0, &mut rng).ranked[0];
        for t in 1..20 {
            assert_eq!(
                route(&mut p, &ws, &prompt, t * 10, &mut rng).ranked[0],
                first
            );
        }
        // Never confirmed by an event: forgotten after the TTL.
        let late = route(&mut p, &ws, &prompt, 10_000, &mut rng);
        assert_eq!(late.prefix_match, Some(0.0));
        // The engine's own word replaces the guess at once: a cleared cache holds nothing.
        let holder = late.ranked[0];
        assert_eq!(
            route(&mut p, &ws, &prompt, 10_010, &mut rng).prefix_match,
            Some(1.0)
        );
        p.kv_events(holder, &KvEventBatch::cleared());
        assert_eq!(
            route(&mut p, &ws, &prompt, 10_020, &mut rng).prefix_match,
            Some(0.0)
        );
    }

    #[test]
    fn text_prompts_use_the_cache_aware_fallback() {
        let mut p = PrecisePrefixPolicy::new(no_pending());
        let ws = workers(3);
        let mut rng = env_rng();
        let text = Prompt::Text("You are a helpful assistant. ".repeat(50).into());
        let first = route(&mut p, &ws, &text, 0, &mut rng);
        let again = route(&mut p, &ws, &text, 0, &mut rng);
        assert_eq!(again.ranked[0], first.ranked[0]);
        assert_eq!(again.prefix_match, Some(1.0));
        assert_eq!(p.index().distinct_blocks(), 0);
    }

    #[test]
    fn tokens_from_the_shell_win_over_text_and_lora_salts_hashes() {
        let mut p = PrecisePrefixPolicy::new(no_pending());
        let ws = workers(3);
        let candidates: Vec<&Worker> = ws.iter().collect();
        let mut rng = env_rng();
        let tokens = doc(7, 48);
        let plain = p.hasher().block_hashes(&tokens, None, None, usize::MAX);
        let with_lora = p
            .hasher()
            .block_hashes(&tokens, Some("sql"), None, usize::MAX);
        p.kv_events(WorkerId(1), &stored(plain));
        p.kv_events(WorkerId(2), &stored(with_lora));
        let text = Prompt::Text("ignored when tokens are given".into());
        let base = request(&text).with_tokens(Some(&tokens));
        for (req, want) in [
            (base, WorkerId(1)),
            (
                RouteRequest {
                    lora: Some("sql"),
                    ..base
                },
                WorkerId(2),
            ),
        ] {
            let mut env = PolicyEnv {
                now_ms: 0,
                rng: &mut rng,
            };
            assert_eq!(p.pick(&req, &candidates, &mut env).ranked[0], want);
        }
    }

    #[test]
    fn removed_worker_is_purged() {
        let mut p = PrecisePrefixPolicy::new(PrecisePrefixConfig::default());
        let ws = workers(2);
        let mut rng = env_rng();
        let tokens = doc(3, 32);
        let hashes = p.hasher().block_hashes(&tokens, None, None, usize::MAX);
        p.kv_events(WorkerId(0), &stored(hashes));
        route(&mut p, &ws, &Prompt::Tokens(tokens), 0, &mut rng);
        p.worker_removed(WorkerId(0));
        p.worker_removed(WorkerId(1));
        assert_eq!(p.index().distinct_blocks(), 0);
        assert!(p.pending.holders.is_empty());
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: PrecisePrefixConfig =
            serde_json::from_str(r#"{"block_size": 32, "hash_seed": "42"}"#).unwrap();
        assert_eq!((c.block_size, c.hash_seed.as_str()), (32, "42"));
        assert_eq!(c.min_match_blocks, 1);
        assert!(serde_json::from_str::<PrecisePrefixConfig>(r#"{"nope": 1}"#).is_err());
    }
}
