//! `cache_aware`: route to the worker that most likely holds the prompt's prefix in its KV
//! cache, unless load is imbalanced.
//!
//! The decision, in order:
//! 1. Imbalanced load (`max - min > balance_abs_threshold` and `max > balance_rel_threshold x
//!    min`, load being [`Worker::load`]): the least-loaded worker.
//! 2. A cache hit: the worker with the longest match in the prefix index, if its match ratio
//!    reaches `cache_threshold`, or if the match is at least `min_match_bytes` long whatever
//!    the ratio (a long shared document followed by a longer unique part is still worth
//!    reusing: the peer's ratio-only rule would scatter such requests).
//! 3. Otherwise the worker with the smallest share of the index, so new prefixes spread.
//!
//! Every tie is broken by load, then at random (never by list position, which at low
//! concurrency would send every miss to the first worker). The prompt is then recorded for the
//! chosen worker. Fallbacks follow by match length, then load.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv};
use crate::prefix_index::{DEFAULT_MAX_BYTES, Namespace, PrefixIndex, PrefixKey};
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

/// Parameters of `cache_aware`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheAwareConfig {
    /// Minimum share of the prompt (0.0..=1.0) the best worker must hold for a cache hit.
    pub cache_threshold: f64,
    /// A match at least this long (bytes of prompt) is a hit even below `cache_threshold`.
    /// 0 disables the rule.
    pub min_match_bytes: usize,
    /// Load is imbalanced only if `max - min` exceeds this...
    pub balance_abs_threshold: u32,
    /// ...and `max` exceeds this factor times `min`.
    pub balance_rel_threshold: f64,
    /// Memory bound of the prefix index in bytes (at least 64 KiB). Each model with its own
    /// `cache_aware` policy entry has its own index.
    pub max_index_bytes: usize,
}

impl Default for CacheAwareConfig {
    fn default() -> CacheAwareConfig {
        CacheAwareConfig {
            cache_threshold: 0.5,
            min_match_bytes: 16 << 10,
            balance_abs_threshold: 32,
            balance_rel_threshold: 1.5,
            max_index_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The `cache_aware` policy and its prefix index.
#[derive(Debug)]
pub struct CacheAwarePolicy {
    config: CacheAwareConfig,
    index: PrefixIndex,
}

impl CacheAwarePolicy {
    /// Builds the policy with an empty index.
    pub fn new(config: CacheAwareConfig) -> CacheAwarePolicy {
        CacheAwarePolicy {
            index: PrefixIndex::new(config.max_index_bytes),
            config,
        }
    }

    /// The prefix index (for metrics and tests).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// Whether loads are imbalanced enough to ignore the cache.
    fn imbalanced(&self, min: u32, max: u32) -> bool {
        max - min > self.config.balance_abs_threshold
            && f64::from(max) > self.config.balance_rel_threshold * f64::from(min)
    }

    /// The cache-hit choice, if the best match qualifies.
    fn cache_hit(
        &self,
        cands: &[Candidate],
        key_len: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Option<WorkerId> {
        let best = cands.iter().map(|c| c.matched).max()?;
        if best == 0 || key_len == 0 {
            return None;
        }
        let ratio = best as f64 / key_len as f64;
        let long = self.config.min_match_bytes > 0 && best >= self.config.min_match_bytes;
        if ratio < self.config.cache_threshold && !long {
            return None;
        }
        pick_min_by(cands, rng, |c| (Reverse(c.matched), c.load))
    }
}

/// What the decision looks at for one candidate.
#[derive(Clone, Copy)]
struct Candidate {
    id: WorkerId,
    matched: usize,
    load: u32,
}

/// The candidate with the smallest `key`, ties broken at random.
fn pick_min_by<K: Ord>(
    cands: &[Candidate],
    rng: &mut dyn rand::RngCore,
    key: impl Fn(&Candidate) -> K,
) -> Option<WorkerId> {
    super::random_min_by(cands, rng, key).map(|c| c.id)
}

impl Policy for CacheAwarePolicy {
    fn name(&self) -> &'static str {
        "cache_aware"
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
        let mut cands: Vec<Candidate> = candidates
            .iter()
            .map(|w| Candidate {
                id: w.id,
                matched: m.matched(w.id),
                load: w.load(),
            })
            .collect();
        let min = cands.iter().map(|c| c.load).min().unwrap_or(0);
        let max = cands.iter().map(|c| c.load).max().unwrap_or(0);

        let choice = if self.imbalanced(min, max) {
            pick_min_by(&cands, env.rng, |c| c.load)
        } else {
            self.cache_hit(&cands, m.key_len(), env.rng).or_else(|| {
                pick_min_by(&cands, env.rng, |c| (self.index.worker_size(c.id), c.load))
            })
        };
        let Some(choice) = choice else {
            return Pick::default();
        };

        cands.retain(|c| c.id != choice);
        cands.sort_by_key(|c| (Reverse(c.matched), c.load));
        let ranked = std::iter::once(choice)
            .chain(cands.iter().map(|c| c.id))
            .collect();
        let prefix_match = Some(m.ratio(choice));

        if !key.is_empty() {
            self.index.insert_matched(&ns, &key, &m, choice);
        }
        Pick {
            ranked,
            prefix_match,
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.index.remove_worker(id);
    }

    fn worker_unavailable(&mut self, id: WorkerId) {
        self.index.remove_worker(id);
    }
}

impl CacheAwareConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        within("cache_threshold", self.cache_threshold, 0.0, 1.0)?;
        ratio("balance_rel_threshold", self.balance_rel_threshold)?;
        index_bytes(self.max_index_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::tests_support::{env_rng, request, workers};
    use crate::request::Prompt;

    fn text(s: String) -> Prompt<'static> {
        Prompt::Text(s.into())
    }

    /// Routes `prompt` to one of `ws`, returning the pick.
    fn route(
        p: &mut CacheAwarePolicy,
        ws: &[Worker],
        prompt: &Prompt<'_>,
        rng: &mut dyn rand::RngCore,
    ) -> Pick {
        let candidates: Vec<&Worker> = ws.iter().collect();
        let mut env = PolicyEnv { now_ms: 0, rng };
        p.pick(&request(prompt), &candidates, &mut env)
    }

    fn shared_prefix() -> String {
        "You are a helpful assistant. ".repeat(70)
    }

    #[test]
    fn shared_prefixes_converge_on_one_worker() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let ws = workers(4);
        let mut rng = env_rng();
        let chosen: BTreeSet<WorkerId> = (0..50)
            .map(|i| {
                let prompt = text(format!("{}Question {i}?", shared_prefix()));
                route(&mut p, &ws, &prompt, &mut rng).ranked[0]
            })
            .collect();
        assert_eq!(chosen.len(), 1);
        let again = text(format!("{}Question 7?", shared_prefix()));
        let pick = route(&mut p, &ws, &again, &mut rng);
        assert_eq!(pick.prefix_match, Some(1.0));
        assert_eq!(pick.ranked.len(), 4);
    }

    #[test]
    fn imbalance_always_goes_to_the_least_loaded() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let mut ws = workers(4);
        let mut rng = env_rng();
        let prompt = text(shared_prefix());
        let holder = route(&mut p, &ws, &prompt, &mut rng).ranked[0];
        // Within the thresholds the cache wins.
        for w in &mut ws {
            w.in_flight = if w.id == holder { 30 } else { 0 };
        }
        assert_eq!(route(&mut p, &ws, &prompt, &mut rng).ranked[0], holder);
        // Beyond both thresholds the least loaded wins, cache or not.
        for w in &mut ws {
            w.in_flight = if w.id == holder { 40 } else { 5 };
        }
        let idle = ws.iter().find(|w| w.id != holder).map(|w| w.id).unwrap();
        ws.iter_mut().find(|w| w.id == idle).unwrap().in_flight = 0;
        for _ in 0..20 {
            assert_eq!(route(&mut p, &ws, &prompt, &mut rng).ranked[0], idle);
        }
        // Ties among the least loaded are broken at random.
        for w in &mut ws {
            w.in_flight = if w.id == holder { 40 } else { 0 };
        }
        let chosen: BTreeSet<WorkerId> = (0..40)
            .map(|_| route(&mut p, &ws, &prompt, &mut rng).ranked[0])
            .collect();
        assert_eq!(chosen.len(), 3);
    }

    #[test]
    fn misses_spread_over_idle_workers() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let ws = workers(4);
        let mut rng = env_rng();
        let mut counts = [0usize; 4];
        for i in 0..100 {
            let prompt = text(format!("{i:03} distinct prompt body"));
            counts[route(&mut p, &ws, &prompt, &mut rng).ranked[0].0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c >= 10), "{counts:?}");
    }

    #[test]
    fn lora_and_salt_namespaces_are_isolated() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let ws = workers(4);
        let candidates: Vec<&Worker> = ws.iter().collect();
        let mut rng = env_rng();
        let prompt = text(shared_prefix());
        let base = request(&prompt);
        let variants = [
            base,
            RouteRequest {
                lora: Some("sql"),
                ..base
            },
            RouteRequest {
                cache_salt: Some("tenant-a"),
                ..base
            },
            RouteRequest {
                cache_salt: Some("tenant-b"),
                ..base
            },
        ];
        for req in variants {
            let mut env = PolicyEnv {
                now_ms: 0,
                rng: &mut rng,
            };
            assert_eq!(p.pick(&req, &candidates, &mut env).prefix_match, Some(0.0));
        }
        for req in variants {
            let mut env = PolicyEnv {
                now_ms: 0,
                rng: &mut rng,
            };
            assert_eq!(p.pick(&req, &candidates, &mut env).prefix_match, Some(1.0));
        }
    }

    #[test]
    fn removed_worker_is_purged() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let mut ws = workers(4);
        let mut rng = env_rng();
        let prompt = text(shared_prefix());
        let holder = route(&mut p, &ws, &prompt, &mut rng).ranked[0];
        assert!(p.index().worker_size(holder) > 0);
        p.worker_removed(holder);
        assert_eq!(p.index().worker_size(holder), 0);
        assert_eq!(p.index().stored_bytes(), 0);
        ws.retain(|w| w.id != holder);
        for i in 0..20 {
            let prompt = text(format!("{}{i}", shared_prefix()));
            let pick = route(&mut p, &ws, &prompt, &mut rng);
            assert!(!pick.ranked.contains(&holder));
        }
    }

    #[test]
    fn long_absolute_match_is_a_hit_below_the_ratio() {
        let doc = "A long shared document. ".repeat(1000);
        let tail = |i: usize| format!("{i} unique question ").repeat(2000);
        for (min_match_bytes, converges) in [(16 << 10, true), (0, false)] {
            let mut p = CacheAwarePolicy::new(CacheAwareConfig {
                min_match_bytes,
                ..CacheAwareConfig::default()
            });
            let ws = workers(4);
            let mut rng = env_rng();
            let chosen: BTreeSet<WorkerId> = (0..12)
                .map(|i| {
                    let prompt = text(format!("{doc}{}", tail(i)));
                    route(&mut p, &ws, &prompt, &mut rng).ranked[0]
                })
                .collect();
            assert_eq!(
                chosen.len() == 1,
                converges,
                "{min_match_bytes}: {chosen:?}"
            );
        }
    }

    #[test]
    fn fallbacks_follow_match_then_load() {
        let mut p = CacheAwarePolicy::new(CacheAwareConfig::default());
        let mut ws = workers(3);
        let mut rng = env_rng();
        let first = text(format!("{}one", shared_prefix()));
        let holder = route(&mut p, &ws, &first, &mut rng).ranked[0];
        // Make the holder busy but within thresholds, the others differ in load.
        for w in &mut ws {
            w.in_flight = if w.id == holder { 10 } else { 1 + w.id.0 };
        }
        let pick = route(&mut p, &ws, &first, &mut rng);
        assert_eq!(pick.ranked[0], holder);
        let others: Vec<u32> = pick.ranked[1..]
            .iter()
            .map(|id| ws.iter().find(|w| w.id == *id).unwrap().load())
            .collect();
        assert!(others.windows(2).all(|w| w[0] <= w[1]), "{others:?}");
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: CacheAwareConfig = serde_json::from_str(r#"{"cache_threshold": 0.7}"#).unwrap();
        assert_eq!(c.cache_threshold, 0.7);
        assert_eq!(c.balance_abs_threshold, 32);
        assert!(serde_json::from_str::<CacheAwareConfig>(r#"{"nope": 1}"#).is_err());
    }
}
