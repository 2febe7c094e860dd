//! `manual`: sticky routing on an explicit routing key, remembered per key.
//!
//! The semantics of the SGLang Model Gateway's `manual` policy, in a sans-IO form:
//! - The routing key is the request's session key (the configured session header, else the
//!   `user` field).
//! - A key seen before goes to the worker it was assigned, as long as that worker is a
//!   candidate (healthy, not draining, in the subset). Unlike consistent hashing, a worker
//!   joining never moves an existing key.
//! - Each key remembers up to two workers, oldest first. When none of them is a candidate the
//!   key is assigned a new worker, which is appended (the oldest is forgotten when full); when
//!   an earlier worker comes back it is preferred again, as its cache holds the session.
//! - New keys are assigned by `assignment`: `least_load` (fewest in flight, random tie-break;
//!   the default here) or `random` (the peer's default).
//! - Requests without a key are assigned the same way and not remembered.
//! - Memory is bounded: keys idle for `max_idle_ms` are dropped (checked at most every
//!   `eviction_interval_ms`, on the shell's clock), and beyond `max_keys` the least recently
//!   used eighth of the keys is dropped at once.
//!
//! The ranked list is the choice, then the other candidates by load.

use std::collections::HashMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, least_loaded, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

/// Workers remembered per key.
const WORKERS_PER_KEY: usize = 2;

/// How a key without a usable worker is assigned one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAssignment {
    /// The least-loaded candidate, random tie-break.
    #[default]
    LeastLoad,
    /// A uniformly random candidate.
    Random,
}

/// Parameters of `manual`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManualConfig {
    /// How new keys (and requests without a key) are assigned.
    pub assignment: ManualAssignment,
    /// A key unused for this long is forgotten (milliseconds). 0 keeps keys until `max_keys`.
    pub max_idle_ms: u64,
    /// Idle keys are looked for at most this often (milliseconds).
    pub eviction_interval_ms: u64,
    /// Most keys remembered (at least 1); the least recently used go first.
    pub max_keys: usize,
}

impl Default for ManualConfig {
    fn default() -> ManualConfig {
        ManualConfig {
            assignment: ManualAssignment::LeastLoad,
            max_idle_ms: 4 * 3600 * 1000,
            eviction_interval_ms: 60_000,
            max_keys: 100_000,
        }
    }
}

/// What is remembered about one key.
#[derive(Debug, Clone)]
struct Assigned {
    /// Workers assigned over time, oldest first.
    workers: Vec<WorkerId>,
    last_used_ms: u64,
}

/// The `manual` policy.
#[derive(Debug)]
pub struct ManualPolicy {
    config: ManualConfig,
    /// By the key's 128-bit hash: a remembered key costs the same whatever its length.
    keys: HashMap<u128, Assigned>,
    last_sweep_ms: u64,
}

/// The map key of a routing key.
fn key_hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

impl ManualPolicy {
    /// Builds the policy.
    pub fn new(config: ManualConfig) -> ManualPolicy {
        ManualPolicy {
            config,
            keys: HashMap::new(),
            last_sweep_ms: 0,
        }
    }

    /// Number of keys remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No key remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn assign(&self, candidates: &[&Worker], env: &mut PolicyEnv<'_>) -> WorkerId {
        match self.config.assignment {
            ManualAssignment::LeastLoad => least_loaded(candidates, env.rng),
            ManualAssignment::Random => candidates[env.rng.random_range(0..candidates.len())].id,
        }
    }

    /// Drops idle keys, at most once per `eviction_interval_ms`.
    fn sweep_idle(&mut self, now_ms: u64) {
        if self.config.max_idle_ms == 0
            || now_ms.saturating_sub(self.last_sweep_ms) < self.config.eviction_interval_ms
        {
            return;
        }
        self.last_sweep_ms = now_ms;
        let max_idle = self.config.max_idle_ms;
        self.keys
            .retain(|_, a| now_ms.saturating_sub(a.last_used_ms) < max_idle);
    }

    /// Makes room for one more key by dropping the least recently used eighth.
    fn make_room(&mut self) {
        let max = self.config.max_keys.max(1);
        if self.keys.len() < max {
            return;
        }
        let mut ages: Vec<u64> = self.keys.values().map(|a| a.last_used_ms).collect();
        let drop = (ages.len() / 8).max(1 + ages.len() - max);
        let (_, cutoff, _) = ages.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut budget = drop;
        self.keys.retain(|_, a| {
            if budget > 0 && a.last_used_ms <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }

    fn pick_for_key(
        &mut self,
        key: &str,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> WorkerId {
        let is_candidate = |id: &WorkerId| candidates.iter().any(|w| w.id == *id);
        let key = &key_hash(key);
        if let Some(found) = self
            .keys
            .get(key)
            .and_then(|a| a.workers.iter().copied().find(is_candidate))
        {
            if let Some(a) = self.keys.get_mut(key) {
                a.last_used_ms = env.now_ms;
            }
            return found;
        }
        let chosen = self.assign(candidates, env);
        if let Some(a) = self.keys.get_mut(key) {
            if a.workers.len() >= WORKERS_PER_KEY {
                a.workers.remove(0);
            }
            a.workers.push(chosen);
            a.last_used_ms = env.now_ms;
        } else {
            self.make_room();
            self.keys.insert(
                *key,
                Assigned {
                    workers: vec![chosen],
                    last_used_ms: env.now_ms,
                },
            );
        }
        chosen
    }
}

impl Policy for ManualPolicy {
    fn name(&self) -> &'static str {
        "manual"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        self.sweep_idle(env.now_ms);
        let first = match req.session_key {
            Some(key) => self.pick_for_key(key, candidates, env),
            None => self.assign(candidates, env),
        };
        Pick {
            ranked: rank_with_first(Some(first), candidates),
            prefix_match: None,
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.keys.retain(|_, a| {
            a.workers.retain(|w| *w != id);
            !a.workers.is_empty()
        });
    }
}

impl ManualConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        count("max_keys", self.max_keys as u64, 1, 100_000_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests_support::{env_rng, request, workers};
    use crate::request::Prompt;

    fn pick(p: &mut ManualPolicy, ws: &[Worker], key: Option<&str>, now_ms: u64) -> WorkerId {
        let prompt = Prompt::Text("x".into());
        let mut req = request(&prompt);
        req.session_key = key;
        let mut rng = env_rng();
        let mut env = PolicyEnv {
            now_ms,
            rng: &mut rng,
        };
        let refs: Vec<&Worker> = ws.iter().collect();
        let ranked = p.pick(&req, &refs, &mut env).ranked;
        assert_eq!(ranked.len(), ws.len());
        ranked[0]
    }

    #[test]
    fn keys_stick_and_new_workers_do_not_move_them() {
        let mut ws = workers(2);
        let mut p = ManualPolicy::new(ManualConfig::default());
        ws[1].in_flight = 5;
        assert_eq!(pick(&mut p, &ws, Some("a"), 0), WorkerId(0), "least loaded");
        ws[0].in_flight = 9;
        ws[1].in_flight = 0;
        assert_eq!(
            pick(&mut p, &ws, Some("a"), 1),
            WorkerId(0),
            "sticky despite load"
        );
        ws.extend(workers(3).into_iter().skip(2));
        assert_eq!(
            pick(&mut p, &ws, Some("a"), 2),
            WorkerId(0),
            "a join moves nothing"
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn failover_remembers_two_workers_and_returns() {
        let mut ws = workers(3);
        let mut p = ManualPolicy::new(ManualConfig::default());
        ws[1].in_flight = 1;
        ws[2].in_flight = 1;
        assert_eq!(pick(&mut p, &ws, Some("k"), 0), WorkerId(0));
        // Worker 0 is not a candidate: reassigned, and both are remembered.
        let without_0 = vec![ws[1].clone(), ws[2].clone()];
        let second = pick(&mut p, &without_0, Some("k"), 1);
        assert_ne!(second, WorkerId(0));
        assert_eq!(pick(&mut p, &without_0, Some("k"), 2), second);
        // Worker 0 is back: its cache holds the session, so it is preferred again.
        assert_eq!(pick(&mut p, &ws, Some("k"), 3), WorkerId(0));
        p.worker_removed(WorkerId(0));
        assert_eq!(pick(&mut p, &ws, Some("k"), 4), second);
    }

    #[test]
    fn long_keys_are_stored_as_hashes() {
        let ws = workers(2);
        let mut p = ManualPolicy::new(ManualConfig::default());
        let long = "k".repeat(1 << 20);
        let first = pick(&mut p, &ws, Some(&long), 0);
        assert_eq!(
            pick(&mut p, &ws, Some(&long), 1),
            first,
            "the key still sticks"
        );
        assert!(p.keys.contains_key(&key_hash(&long)));
        // What is kept per key is fixed-size: the map's key type holds no text.
        assert_eq!(std::mem::size_of_val(p.keys.keys().next().unwrap()), 16);
    }

    #[test]
    fn idle_keys_expire_and_memory_is_bounded() {
        let ws = workers(2);
        let mut p = ManualPolicy::new(ManualConfig {
            max_idle_ms: 1000,
            eviction_interval_ms: 100,
            max_keys: 16,
            ..ManualConfig::default()
        });
        for i in 0..100u64 {
            pick(&mut p, &ws, Some(&format!("key-{i}")), i);
            assert!(p.len() <= 16);
        }
        // The most recent key survived the LRU drops; idle ones vanish after max_idle_ms.
        assert!(p.keys.contains_key(&key_hash("key-99")));
        pick(&mut p, &ws, None, 5000);
        assert!(p.is_empty(), "{} keys left", p.len());
    }

    #[test]
    fn random_assignment_uses_every_worker() {
        let ws = workers(3);
        let mut p = ManualPolicy::new(ManualConfig {
            assignment: ManualAssignment::Random,
            ..ManualConfig::default()
        });
        let mut rng = env_rng();
        let refs: Vec<&Worker> = ws.iter().collect();
        let prompt = Prompt::Text("x".into());
        let mut seen = [false; 3];
        for i in 0..60 {
            let key = format!("r{i}");
            let mut req = request(&prompt);
            req.session_key = Some(&key);
            let mut env = PolicyEnv {
                now_ms: 0,
                rng: &mut rng,
            };
            seen[p.pick(&req, &refs, &mut env).ranked[0].0 as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn config_from_json() {
        let c: crate::policy::PolicyConfig =
            serde_json::from_str(r#"{"name":"manual","assignment":"random","max_keys":10}"#)
                .unwrap();
        let expected = ManualConfig {
            assignment: ManualAssignment::Random,
            max_keys: 10,
            ..ManualConfig::default()
        };
        assert_eq!(c, crate::policy::PolicyConfig::Manual(expected));
        assert!(serde_json::from_str::<ManualConfig>(r#"{"ttl":1}"#).is_err());
    }
}
