//! Routing policies: one trait, one file per policy, all built by name from config.

mod bucket;
mod cache_aware;
pub mod check;
mod consistent_hash;
mod hash_ring;
mod least_request;
mod manual;
mod power_of_two;
mod precise_prefix;
mod prefix_hash;
mod random;
mod round_robin;
pub mod scorer;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::kv_events::KvEventBatch;
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

pub use bucket::{BucketConfig, BucketPolicy};
pub use cache_aware::{CacheAwareConfig, CacheAwarePolicy};
pub use consistent_hash::{ConsistentHashConfig, ConsistentHashPolicy};
pub use least_request::LeastRequestPolicy;
pub use manual::{ManualAssignment, ManualConfig, ManualPolicy};
pub use power_of_two::PowerOfTwoPolicy;
pub use precise_prefix::{PrecisePrefixConfig, PrecisePrefixPolicy};
pub use prefix_hash::{PrefixHashConfig, PrefixHashPolicy};
pub use random::RandomPolicy;
pub use round_robin::RoundRobinPolicy;
pub use scorer::{ScorerConfig, ScorerPolicy};

/// What a policy may use besides the request and the candidates: the shell's clock and the
/// router's seeded random source (so decisions are reproducible in tests).
pub struct PolicyEnv<'a> {
    /// Current time in milliseconds on the shell's clock.
    pub now_ms: u64,
    /// Random source; seeded by the router.
    pub rng: &'a mut dyn RngCore,
}

/// A policy's answer: candidates ranked best first (the first is the choice, the rest are the
/// ordered fallback list), plus what the decision saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pick {
    /// Ranked worker ids; non-empty, each one of the candidates, no repeats.
    pub ranked: Vec<WorkerId>,
    /// Share of the prompt already cached on the first choice, for policies that know it.
    pub prefix_match: Option<f32>,
}

/// A routing policy.
///
/// The router calls [`Policy::pick`] with a non-empty list of candidates that are healthy, not
/// draining, serve the request's model and are in the proxy's subset. The policy ranks them.
pub trait Policy: Send {
    /// The policy's config name (`cache_aware`, ...).
    fn name(&self) -> &'static str;

    /// Ranks `candidates` for `req`. Must return a non-empty ranking of candidate ids.
    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick;

    /// A worker left the set: forget everything about it.
    fn worker_removed(&mut self, _id: WorkerId) {}

    /// A worker was ejected (turned unhealthy): forget what says its cache holds anything.
    /// It may come back later, with an empty cache. Default: nothing to forget.
    fn worker_unavailable(&mut self, _id: WorkerId) {}
    /// A batch of `worker`'s own KV-cache events. Policies that route on what engines really
    /// hold index them; the others ignore them.
    fn kv_events(&mut self, _worker: WorkerId, _batch: &KvEventBatch) {}
}

/// A policy and its parameters, as written in config (`name: cache_aware` plus fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum PolicyConfig {
    /// Uniformly random.
    Random,
    /// Strict rotation.
    RoundRobin,
    /// Two random candidates, the less loaded wins.
    PowerOfTwo,
    /// Fewest requests in flight, random tie-break.
    LeastRequest,
    /// Approximate prefix tree over prompt text with a load-imbalance guard.
    CacheAware(CacheAwareConfig),
    /// Session affinity on a consistent-hash ring with bounded load.
    ConsistentHash(ConsistentHashConfig),
    /// Hash of the first K prefix blocks on a consistent-hash ring.
    PrefixHash(PrefixHashConfig),
    /// Requests bucketed by prompt length, each bucket owned by a worker.
    Bucket(BucketConfig),
    /// Sticky routing on an explicit routing key.
    Manual(ManualConfig),
    /// Filters, weighted scorers over live engine load and prefix match, and a picker.
    Scorer(ScorerConfig),
    /// Longest prefix of blocks the engines report holding (KV-cache events).
    PrecisePrefix(PrecisePrefixConfig),
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig::CacheAware(CacheAwareConfig::default())
    }
}

impl PolicyConfig {
    /// All policy names, for help texts and errors.
    pub const NAMES: &'static [&'static str] = &[
        "random",
        "round_robin",
        "power_of_two",
        "least_request",
        "cache_aware",
        "consistent_hash",
        "prefix_hash",
        "bucket",
        "manual",
        "scorer",
        "precise_prefix",
    ];

    /// Checks the policy's parameter ranges; the error is `(field, message)` with the field
    /// inside the parameters (`balance_rel_threshold`, `weights.queue`, ...).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            PolicyConfig::Random
            | PolicyConfig::RoundRobin
            | PolicyConfig::PowerOfTwo
            | PolicyConfig::LeastRequest => Ok(()),
            PolicyConfig::CacheAware(c) => c.validate(),
            PolicyConfig::ConsistentHash(c) => c.validate(),
            PolicyConfig::PrefixHash(c) => c.validate(),
            PolicyConfig::Bucket(c) => c.validate(),
            PolicyConfig::Manual(c) => c.validate(),
            PolicyConfig::Scorer(c) => c.validate(),
            PolicyConfig::PrecisePrefix(c) => c.validate(),
        }
    }

    /// The policy of that name with default parameters.
    pub fn from_name(name: &str) -> Option<PolicyConfig> {
        Some(match name {
            "random" => PolicyConfig::Random,
            "round_robin" => PolicyConfig::RoundRobin,
            "power_of_two" => PolicyConfig::PowerOfTwo,
            "least_request" => PolicyConfig::LeastRequest,
            "cache_aware" => PolicyConfig::CacheAware(CacheAwareConfig::default()),
            "consistent_hash" => PolicyConfig::ConsistentHash(ConsistentHashConfig::default()),
            "prefix_hash" => PolicyConfig::PrefixHash(PrefixHashConfig::default()),
            "bucket" => PolicyConfig::Bucket(BucketConfig::default()),
            "manual" => PolicyConfig::Manual(ManualConfig::default()),
            "scorer" => PolicyConfig::Scorer(ScorerConfig::default()),
            "precise_prefix" => PolicyConfig::PrecisePrefix(PrecisePrefixConfig::default()),
            _ => return None,
        })
    }

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::Random => "random",
            PolicyConfig::RoundRobin => "round_robin",
            PolicyConfig::PowerOfTwo => "power_of_two",
            PolicyConfig::LeastRequest => "least_request",
            PolicyConfig::CacheAware(_) => "cache_aware",
            PolicyConfig::ConsistentHash(_) => "consistent_hash",
            PolicyConfig::PrefixHash(_) => "prefix_hash",
            PolicyConfig::Bucket(_) => "bucket",
            PolicyConfig::Manual(_) => "manual",
            PolicyConfig::Scorer(_) => "scorer",
            PolicyConfig::PrecisePrefix(_) => "precise_prefix",
        }
    }

    /// Builds the policy.
    pub fn build(&self) -> Box<dyn Policy> {
        match self {
            PolicyConfig::Random => Box::new(RandomPolicy),
            PolicyConfig::RoundRobin => Box::new(RoundRobinPolicy::default()),
            PolicyConfig::PowerOfTwo => Box::new(PowerOfTwoPolicy),
            PolicyConfig::LeastRequest => Box::new(LeastRequestPolicy),
            PolicyConfig::CacheAware(c) => Box::new(CacheAwarePolicy::new(c.clone())),
            PolicyConfig::ConsistentHash(c) => Box::new(ConsistentHashPolicy::new(c.clone())),
            PolicyConfig::PrefixHash(c) => Box::new(PrefixHashPolicy::new(c.clone())),
            PolicyConfig::Bucket(c) => Box::new(BucketPolicy::new(c.clone())),
            PolicyConfig::Manual(c) => Box::new(ManualPolicy::new(c.clone())),
            PolicyConfig::Scorer(c) => Box::new(ScorerPolicy::new(c.clone())),
            PolicyConfig::PrecisePrefix(c) => Box::new(PrecisePrefixPolicy::new(c.clone())),
        }
    }
}

/// The item with the smallest `key`, ties broken at random (never "the first one": at low
/// load that would pile every tie on one worker).
pub(crate) fn random_min_by<'a, T, K: Ord>(
    items: &'a [T],
    rng: &mut dyn RngCore,
    key: impl Fn(&T) -> K,
) -> Option<&'a T> {
    use rand::Rng;
    let min = items.iter().map(&key).min()?;
    let tied = items.iter().filter(|c| key(c) == min).count();
    let nth = rng.random_range(0..tied);
    items.iter().filter(|c| key(c) == min).nth(nth)
}

/// Ranks candidates by ascending load, `first` (if given) pinned at the head. Ties keep the
/// candidates' order. Shared by policies that pick one worker and fall back to the least loaded.
pub fn rank_with_first(first: Option<WorkerId>, candidates: &[&Worker]) -> Vec<WorkerId> {
    let mut rest: Vec<&Worker> = candidates
        .iter()
        .copied()
        .filter(|w| Some(w.id) != first)
        .collect();
    rest.sort_by_key(|w| w.load());
    first.into_iter().chain(rest.iter().map(|w| w.id)).collect()
}

/// The least-loaded candidate, ties broken at random. `candidates` must not be empty.
pub fn least_loaded(candidates: &[&Worker], rng: &mut dyn RngCore) -> WorkerId {
    least_loaded_by(candidates, rng, |w| u64::from(w.load()))
}

/// The candidate with the smallest `load`, ties broken at random. `candidates` must not be
/// empty.
pub fn least_loaded_by(
    candidates: &[&Worker],
    rng: &mut dyn RngCore,
    load: impl Fn(&Worker) -> u64,
) -> WorkerId {
    let min = candidates.iter().map(|w| load(w)).min().unwrap_or(0);
    let tied = candidates.iter().filter(|w| load(w) == min).count();
    let nth = if tied > 1 {
        rng.random_range(0..tied)
    } else {
        0
    };
    candidates
        .iter()
        .filter(|w| load(w) == min)
        .nth(nth)
        .map_or(candidates[0].id, |w| w.id)
}

/// Helpers for policy unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use crate::request::{Prompt, RouteRequest};
    use crate::worker::{Worker, WorkerId, WorkerSpec};

    /// `n` healthy idle workers at 10.0.0.i:8000 with ids 0..n.
    pub fn workers(n: u32) -> Vec<Worker> {
        (0..n)
            .map(|i| Worker {
                id: WorkerId(i),
                spec: WorkerSpec::new(format!("10.0.0.{i}:8000")),
                healthy: true,
                draining: false,
                in_flight: 0,
                in_flight_elsewhere: 0,
                load: None,
            })
            .collect()
    }

    /// A seeded random source.
    pub fn env_rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    /// A request for model `m` with `prompt`.
    pub fn request<'a>(prompt: &'a Prompt<'a>) -> RouteRequest<'a> {
        RouteRequest {
            model: "m",
            prompt,
            lora: None,
            cache_salt: None,
            session_key: None,
            tokens: None,
        }
    }
}
