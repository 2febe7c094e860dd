//! `bucket`: requests split by prompt length into load-adaptive buckets, one per worker.
//!
//! The semantics of the SGLang Model Gateway's `bucket` policy (built there for the prefill
//! workers of a prefill/decode split), in a sans-IO form:
//! - Candidates, ordered by address, own consecutive prompt-length ranges: short prompts go to
//!   the first worker, the longest to the last, so long prefills do not stall short ones.
//!   Length is counted in characters of text (4 per token for token-id prompts).
//! - Every request is recorded in a sliding window of `window_ms` (length and worker). Every
//!   `window_ms` the boundaries are recomputed from the window so that each bucket receives
//!   about the same number of characters: the boundaries are the load-weighted quantiles of
//!   the recent lengths. Before any traffic (and when the window is empty) the range
//!   `0..initial_max_len` is split evenly, the last bucket being open-ended.
//! - Load guard: when the characters sent to candidates in the window are imbalanced
//!   (`max - min > balance_abs_threshold` and `max > balance_rel_threshold * min`), the
//!   candidate with the fewest characters is chosen instead of the bucket's owner.
//!
//! Differences from the peer, by choice: boundaries are recomputed every window rather than
//! only when the per-bucket load doubled or halved, the window also drives the load figures
//! (the peer's adjustment thread and request window share one period too), and the default
//! thresholds are higher (32 characters there would make nearly every request a
//! load-balancing decision). The ranked list is the choice, then the others by load.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, least_loaded_by, rank_with_first};
use crate::request::{Prompt, RouteRequest};
use crate::worker::{Worker, WorkerId};

/// Characters counted per token of a token-id prompt.
const CHARS_PER_TOKEN: u64 = 4;

/// Parameters of `bucket`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketConfig {
    /// Load is imbalanced only if the characters in the window of the busiest and the idlest
    /// candidate differ by more than this...
    pub balance_abs_threshold: u64,
    /// ...and the busiest has more than this factor times the idlest.
    pub balance_rel_threshold: f64,
    /// Length of the sliding window, and period of boundary recomputation (milliseconds).
    pub window_ms: u64,
    /// Prompt length (characters) split evenly across buckets before there is traffic.
    pub initial_max_len: u64,
    /// Most requests kept in the window (the oldest go first beyond it).
    pub max_window_requests: usize,
}

impl Default for BucketConfig {
    fn default() -> BucketConfig {
        BucketConfig {
            balance_abs_threshold: 16_384,
            balance_rel_threshold: 1.5,
            window_ms: 5_000,
            initial_max_len: 4_096,
            max_window_requests: 65_536,
        }
    }
}

/// One routed request in the window.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at_ms: u64,
    len: u64,
    worker: WorkerId,
}

/// The `bucket` policy.
#[derive(Debug)]
pub struct BucketPolicy {
    config: BucketConfig,
    window: VecDeque<Sent>,
    /// Characters per worker in the window.
    sent: HashMap<WorkerId, u64>,
    /// Inclusive upper length bound of every bucket but the last.
    bounds: Vec<u64>,
    last_adjust_ms: Option<u64>,
}

impl BucketPolicy {
    /// Builds the policy.
    pub fn new(config: BucketConfig) -> BucketPolicy {
        BucketPolicy {
            config,
            window: VecDeque::new(),
            sent: HashMap::new(),
            bounds: Vec::new(),
            last_adjust_ms: None,
        }
    }

    /// Current inclusive upper bounds of the buckets (all but the open-ended last one).
    pub fn bounds(&self) -> &[u64] {
        &self.bounds
    }

    fn forget_oldest(&mut self) {
        if let Some(old) = self.window.pop_front()
            && let Some(n) = self.sent.get_mut(&old.worker)
        {
            *n = n.saturating_sub(old.len);
            if *n == 0 {
                self.sent.remove(&old.worker);
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while self
            .window
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.at_ms) > self.config.window_ms)
        {
            self.forget_oldest();
        }
    }

    /// Boundaries for `buckets` buckets: load-weighted quantiles of the window's lengths, or
    /// an even split of `initial_max_len` without traffic.
    fn compute_bounds(&self, buckets: usize) -> Vec<u64> {
        let cuts = buckets.saturating_sub(1);
        let mut lens: Vec<u64> = self.window.iter().map(|s| s.len).collect();
        let total: u64 = lens.iter().sum();
        if total == 0 {
            let gap = (self.config.initial_max_len / buckets.max(1) as u64).max(1);
            return (1..=cuts as u64).map(|i| i * gap - 1).collect();
        }
        lens.sort_unstable();
        let mut bounds = Vec::with_capacity(cuts);
        let mut acc = 0u64;
        let mut lens_iter = lens.iter();
        for k in 1..=cuts as u64 {
            let target = total.saturating_mul(k) / buckets as u64;
            let mut bound = bounds.last().map_or(0, |b: &u64| b + 1);
            while acc < target {
                let Some(&len) = lens_iter.next() else { break };
                acc += len;
                bound = bound.max(len);
            }
            bounds.push(bound);
        }
        bounds
    }

    fn maybe_adjust(&mut self, now_ms: u64, buckets: usize) {
        let due = self
            .last_adjust_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.config.window_ms);
        if due || self.bounds.len() + 1 != buckets {
            self.bounds = self.compute_bounds(buckets);
            self.last_adjust_ms = Some(now_ms);
        }
    }

    fn is_imbalanced(&self, candidates: &[&Worker]) -> bool {
        let loads = candidates
            .iter()
            .map(|w| self.sent.get(&w.id).copied().unwrap_or(0));
        let (min, max) = loads.fold((u64::MAX, 0), |(lo, hi), l| (lo.min(l), hi.max(l)));
        max - min.min(max) > self.config.balance_abs_threshold
            && max as f64 > self.config.balance_rel_threshold * min as f64
    }
}

/// Prompt length in characters (4 per token id).
fn prompt_chars(prompt: &Prompt<'_>) -> u64 {
    match prompt {
        Prompt::Text(t) => t.chars().count() as u64,
        Prompt::Tokens(ids) => ids.len() as u64 * CHARS_PER_TOKEN,
    }
}

impl Policy for BucketPolicy {
    fn name(&self) -> &'static str {
        "bucket"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let now = env.now_ms;
        self.expire(now);
        self.maybe_adjust(now, candidates.len());
        let len = prompt_chars(req.prompt);
        let first = if self.is_imbalanced(candidates) {
            least_loaded_by(candidates, env.rng, |w| {
                self.sent.get(&w.id).copied().unwrap_or(0)
            })
        } else {
            let mut owners: Vec<&Worker> = candidates.to_vec();
            owners.sort_by(|a, b| a.spec.address.cmp(&b.spec.address));
            let bucket = self.bounds.partition_point(|&b| b < len);
            owners[bucket.min(owners.len() - 1)].id
        };
        if self.window.len() >= self.config.max_window_requests.max(1) {
            self.forget_oldest();
        }
        self.window.push_back(Sent {
            at_ms: now,
            len,
            worker: first,
        });
        *self.sent.entry(first).or_insert(0) += len;
        Pick {
            ranked: rank_with_first(Some(first), candidates),
            prefix_match: None,
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.window.retain(|s| s.worker != id);
        self.sent.remove(&id);
    }
}

impl BucketConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        ratio("balance_rel_threshold", self.balance_rel_threshold)?;
        count("window_ms", self.window_ms, 1, u64::MAX)?;
        count(
            "max_window_requests",
            self.max_window_requests as u64,
            1,
            10_000_000,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests_support::{env_rng, request, workers};

    fn pick(p: &mut BucketPolicy, ws: &[Worker], chars: usize, now_ms: u64) -> WorkerId {
        let prompt = Prompt::Text("a".repeat(chars).into());
        let mut rng = env_rng();
        let mut env = PolicyEnv {
            now_ms,
            rng: &mut rng,
        };
        let refs: Vec<&Worker> = ws.iter().collect();
        let ranked = p.pick(&request(&prompt), &refs, &mut env).ranked;
        assert_eq!(ranked.len(), ws.len());
        ranked[0]
    }

    fn no_guard() -> BucketConfig {
        BucketConfig {
            balance_abs_threshold: u64::MAX,
            ..BucketConfig::default()
        }
    }

    #[test]
    fn initial_buckets_split_lengths_evenly() {
        let ws = workers(3);
        let mut p = BucketPolicy::new(no_guard());
        assert_eq!(pick(&mut p, &ws, 10, 0), WorkerId(0));
        assert_eq!(p.bounds(), &[1364, 2729]);
        assert_eq!(pick(&mut p, &ws, 1365, 1), WorkerId(1));
        assert_eq!(pick(&mut p, &ws, 2729, 2), WorkerId(1));
        assert_eq!(pick(&mut p, &ws, 100_000, 3), WorkerId(2));
    }

    #[test]
    fn boundaries_follow_the_recent_load() {
        let ws = workers(3);
        let mut p = BucketPolicy::new(no_guard());
        // Traffic of lengths 5..=26 with a total of 100 characters.
        for (i, len) in [5, 10, 15, 20, 24, 26].into_iter().enumerate() {
            pick(&mut p, &ws, len, i as u64);
        }
        // After a window the boundaries put about a third of the characters in each bucket.
        pick(&mut p, &ws, 1, 5_000);
        // Lengths up to 20 carry 50, 21..=24 carry 24 and 25.. carry 26 characters.
        assert_eq!(p.bounds(), &[20, 24]);
        assert_eq!(pick(&mut p, &ws, 19, 5_001), WorkerId(0));
        assert_eq!(pick(&mut p, &ws, 22, 5_002), WorkerId(1));
        assert_eq!(pick(&mut p, &ws, 25, 5_003), WorkerId(2));
        // When the window has emptied, the even split comes back.
        pick(&mut p, &ws, 1, 20_000);
        assert_eq!(pick(&mut p, &ws, 1, 30_000), WorkerId(0));
        assert_eq!(p.bounds(), &[1364, 2729]);
    }

    #[test]
    fn imbalance_sends_to_the_idlest() {
        let ws = workers(3);
        let mut p = BucketPolicy::new(BucketConfig {
            balance_abs_threshold: 32,
            balance_rel_threshold: 1.0001,
            ..BucketConfig::default()
        });
        assert_eq!(pick(&mut p, &ws, 33, 0), WorkerId(0));
        // Worker 0 has 33 characters, the others none: imbalanced, so not worker 0.
        let second = pick(&mut p, &ws, 33, 1);
        assert_ne!(second, WorkerId(0));
        let third = pick(&mut p, &ws, 33, 2);
        assert_ne!(third, WorkerId(0));
        assert_ne!(third, second);
    }

    #[test]
    fn removed_workers_are_forgotten_and_bounds_follow_the_candidate_count() {
        let ws = workers(4);
        let mut p = BucketPolicy::new(no_guard());
        pick(&mut p, &ws, 5000, 0);
        assert_eq!(p.bounds().len(), 3);
        p.worker_removed(WorkerId(3));
        assert!(p.window.is_empty());
        assert_eq!(pick(&mut p, &ws[..2], 10, 1), WorkerId(0));
        assert_eq!(p.bounds().len(), 1);
    }
}
