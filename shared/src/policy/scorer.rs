//! `scorer`: a filter -> weighted scorers -> picker pipeline over live engine load.
//!
//! For each request:
//! 1. Filters narrow the candidates (never to nothing): the LoRA filter keeps the workers that
//!    have the requested adapter loaded, when any does; the overload filter drops workers whose
//!    load exceeds the least loaded one's by more than `overload.abs` AND by more than the
//!    factor `overload.rel` (load being [`Worker::load`]: in-flight plus the engine's queue).
//! 2. Each scorer maps one signal to 0..=1 (see [`signals`]): prefix match (the shared
//!    [`PrefixIndex`], as `cache_aware` uses it), queue depth, running requests, KV-cache use,
//!    LoRA affinity and session affinity. A worker's score is the weighted sum.
//! 3. The picker chooses: the maximum score (ties at random), or a softmax draw with a
//!    temperature. Fallbacks follow by descending score, then the filtered-out workers by load.
//!
//! Engine load comes from the scraped [`crate::worker::LoadReport`]; when a worker has none (no
//! scrape, or a stale one) the router's own in-flight count stands in for it.

mod picker;
mod sessions;
pub mod signals;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv};
use crate::prefix_index::{DEFAULT_MAX_BYTES, Namespace, PrefixIndex, PrefixKey};
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

pub use picker::PickerConfig;
use sessions::Sessions;
use signals::{Scores, Signals};

/// Weight of each scorer; 0 turns a scorer off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerWeights {
    /// Share of the prompt the worker likely holds in its KV cache.
    pub prefix: f64,
    /// Requests queued (the engine's waiting queue, else in flight): fewer is better.
    pub queue: f64,
    /// Requests running on the engine: fewer is better.
    pub running: f64,
    /// KV-cache use: lower is better.
    pub kv_cache: f64,
    /// The requested LoRA adapter is loaded on the worker.
    pub lora: f64,
    /// The worker served the same session before.
    pub session: f64,
}

impl Default for ScorerWeights {
    fn default() -> ScorerWeights {
        ScorerWeights {
            prefix: 3.0,
            queue: 2.0,
            running: 0.0,
            kv_cache: 2.0,
            lora: 1.0,
            session: 1.0,
        }
    }
}

/// The overload filter: a worker is left out when its load exceeds the minimum by more than
/// `abs` and is more than `rel` times the minimum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadFilter {
    /// Absolute margin over the least-loaded candidate.
    pub abs: u32,
    /// Relative factor over the least-loaded candidate.
    pub rel: f64,
}

impl Default for OverloadFilter {
    fn default() -> OverloadFilter {
        OverloadFilter { abs: 8, rel: 3.0 }
    }
}

impl OverloadFilter {
    fn overloaded(&self, load: u32, min: u32) -> bool {
        load - min > self.abs && f64::from(load) > self.rel * f64::from(min)
    }
}

/// Parameters of `scorer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// Scorer weights.
    pub weights: ScorerWeights,
    /// How the worker is chosen from the scores.
    pub picker: PickerConfig,
    /// Keep only workers with the requested LoRA adapter loaded, when any has it.
    pub lora_filter: bool,
    /// Leave out overloaded workers; `null` disables the filter.
    pub overload: Option<OverloadFilter>,
    /// The prefix score counts matched bytes in whole blocks of this size (engines reuse
    /// whole KV blocks only: 64 bytes is about 16 tokens); 1 counts every byte.
    pub block_bytes: usize,
    /// Memory bound of the prefix index in bytes (at least 64 KiB).
    pub max_index_bytes: usize,
    /// Sessions remembered for session affinity (about; older ones are forgotten first).
    pub max_sessions: usize,
}

impl Default for ScorerConfig {
    fn default() -> ScorerConfig {
        ScorerConfig {
            weights: ScorerWeights::default(),
            picker: PickerConfig::default(),
            lora_filter: true,
            overload: Some(OverloadFilter::default()),
            block_bytes: 64,
            max_index_bytes: DEFAULT_MAX_BYTES,
            max_sessions: 65_536,
        }
    }
}

impl ScorerConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        let w = &self.weights;
        for (field, v) in [
            ("weights.prefix", w.prefix),
            ("weights.queue", w.queue),
            ("weights.running", w.running),
            ("weights.kv_cache", w.kv_cache),
            ("weights.lora", w.lora),
            ("weights.session", w.session),
        ] {
            non_negative(field, v)?;
        }
        if let PickerConfig::Softmax { temperature } = self.picker {
            within("picker.temperature", temperature, 1e-9, 1e9)?;
        }
        if let Some(o) = &self.overload {
            ratio("overload.rel", o.rel)?;
        }
        count("block_bytes", self.block_bytes as u64, 1, 1 << 20)?;
        index_bytes(self.max_index_bytes)?;
        count("max_sessions", self.max_sessions as u64, 1, 100_000_000)?;
        Ok(())
    }
}

/// The `scorer` policy: its prefix index and session memory.
#[derive(Debug)]
pub struct ScorerPolicy {
    config: ScorerConfig,
    index: PrefixIndex,
    sessions: Sessions,
}

impl ScorerPolicy {
    /// Builds the policy with empty state.
    pub fn new(config: ScorerConfig) -> ScorerPolicy {
        ScorerPolicy {
            index: PrefixIndex::new(config.max_index_bytes),
            sessions: Sessions::new(config.max_sessions),
            config,
        }
    }

    /// The prefix index (for metrics and tests).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// Applies the filters; returns the kept candidates' positions. Never empty when
    /// `candidates` is not.
    fn filter(&self, req: &RouteRequest<'_>, candidates: &[&Worker]) -> Vec<usize> {
        let mut kept: Vec<usize> = (0..candidates.len()).collect();
        if self.config.lora_filter
            && let Some(adapter) = req.lora
        {
            let with: Vec<usize> = kept
                .iter()
                .copied()
                .filter(|&i| signals::has_adapter(candidates[i], adapter))
                .collect();
            if !with.is_empty() {
                kept = with;
            }
        }
        if let Some(o) = &self.config.overload {
            let min = kept
                .iter()
                .map(|&i| candidates[i].load())
                .min()
                .unwrap_or(0);
            kept.retain(|&i| !o.overloaded(candidates[i].load(), min));
        }
        kept
    }
}

/// Share of a `key_len`-byte key covered by the whole `block`-byte blocks of `matched` bytes.
fn block_ratio(matched: usize, key_len: usize, block: usize) -> f32 {
    if key_len == 0 {
        return 0.0;
    }
    let block = block.max(1);
    ((matched / block * block) as f64 / key_len as f64) as f32
}

impl Policy for ScorerPolicy {
    fn name(&self) -> &'static str {
        "scorer"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let ns = Namespace::of(req);
        let key = PrefixKey::from_prompt(req.prompt);
        let m = self.index.match_prefix(&ns, &key);
        let session = req.session_key.and_then(|k| self.sessions.get(k));

        let kept = self.filter(req, candidates);
        let kept_workers: Vec<&Worker> = kept.iter().map(|&i| candidates[i]).collect();
        let signals: Vec<Signals> = kept_workers
            .iter()
            .map(|w| {
                let prefix = block_ratio(m.matched(w.id), m.key_len(), self.config.block_bytes);
                Signals::of(w, prefix, req.lora, session)
            })
            .collect();
        let scores = Scores::compute(&signals, &self.config.weights);
        let order = self.config.picker.rank(&scores.total, env.rng);

        let mut ranked: Vec<WorkerId> = order.iter().map(|&i| kept_workers[i].id).collect();
        let mut rest: Vec<&Worker> = candidates
            .iter()
            .copied()
            .filter(|w| !ranked.contains(&w.id))
            .collect();
        rest.sort_by_key(|w| w.load());
        ranked.extend(rest.iter().map(|w| w.id));
        let Some(&choice) = ranked.first() else {
            return Pick::default();
        };

        if !key.is_empty() {
            self.index.insert_matched(&ns, &key, &m, choice);
        }
        if let Some(k) = req.session_key {
            self.sessions.insert(k, choice);
        }
        Pick {
            ranked,
            prefix_match: Some(m.ratio(choice)),
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.index.remove_worker(id);
        self.sessions.remove_worker(id);
    }
}
