//! `consistent_hash`: session affinity on a consistent-hash ring with bounded loads.
//!
//! The request's session key (the configured session header, else the `user` field) is hashed
//! onto a ring of worker addresses (see the `hash_ring` module): the same key reaches the same
//! worker while the worker set is unchanged, and a join or leave moves only about 1/N of the
//! keys. A worker whose load would exceed `ceil(load_factor * (total_load + 1) / n)` is passed
//! over for the next worker clockwise, so a hot session spills over instead of piling up.
//!
//! Without a session key there is nothing to be sticky about: the least-loaded candidate is
//! chosen, ties broken at random (hashing the prompt instead is what `prefix_hash` does).
//! The ranked list is the ring order from the key's position (by load without a key).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::hash_ring::{DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES, HashRing};
use super::{Pick, Policy, PolicyEnv, least_loaded, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::{Worker, WorkerId};

/// Parameters of `consistent_hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistentHashConfig {
    /// Points each worker owns on the ring; more points spread keys more evenly.
    pub virtual_nodes: u32,
    /// Bounded-load factor `c` (at least 1.0): a worker may hold at most `c` times the mean
    /// load, rounded up, counting the new request.
    pub load_factor: f64,
}

impl Default for ConsistentHashConfig {
    fn default() -> ConsistentHashConfig {
        ConsistentHashConfig {
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            load_factor: DEFAULT_LOAD_FACTOR,
        }
    }
}

/// The `consistent_hash` policy.
#[derive(Debug)]
pub struct ConsistentHashPolicy {
    config: ConsistentHashConfig,
    ring: HashRing,
}

impl ConsistentHashPolicy {
    /// Builds the policy.
    pub fn new(config: ConsistentHashConfig) -> ConsistentHashPolicy {
        let ring = HashRing::new(config.virtual_nodes);
        ConsistentHashPolicy { config, ring }
    }
}

impl Policy for ConsistentHashPolicy {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let ranked = match req.session_key {
            Some(key) => {
                self.ring.add_missing(candidates);
                self.ring
                    .rank_bounded(xxh3_64(key.as_bytes()), candidates, self.config.load_factor)
            }
            None => rank_with_first(Some(least_loaded(candidates, env.rng)), candidates),
        };
        Pick {
            ranked,
            prefix_match: None,
        }
    }

    fn worker_removed(&mut self, id: WorkerId) {
        self.ring.remove(id);
    }
}

impl ConsistentHashConfig {
    /// Checks the parameter ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        use super::check::*;
        ring(self.virtual_nodes, self.load_factor)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use crate::policy::tests_support::{env_rng, request, workers};
    use crate::request::Prompt;

    fn pick(p: &mut ConsistentHashPolicy, ws: &[Worker], key: Option<&str>) -> Vec<WorkerId> {
        let prompt = Prompt::Text("hello".into());
        let mut req = request(&prompt);
        req.session_key = key;
        let mut rng = env_rng();
        let mut env = PolicyEnv {
            now_ms: 0,
            rng: &mut rng,
        };
        let refs: Vec<&Worker> = ws.iter().collect();
        p.pick(&req, &refs, &mut env).ranked
    }

    #[test]
    fn same_key_same_worker_and_keys_spread() {
        let ws = workers(4);
        let mut p = ConsistentHashPolicy::new(ConsistentHashConfig::default());
        let mut per_worker = [0usize; 4];
        for i in 0..400 {
            let key = format!("session-{i}");
            let first = pick(&mut p, &ws, Some(&key));
            assert_eq!(first.len(), 4);
            assert_eq!(pick(&mut p, &ws, Some(&key)), first);
            per_worker[first[0].0 as usize] += 1;
        }
        // 160 virtual nodes keep every share well within 2x of the mean of 100.
        assert!(
            per_worker.iter().all(|&n| (50..=200).contains(&n)),
            "{per_worker:?}"
        );
    }

    #[test]
    fn removed_worker_loses_only_its_keys() {
        let ws = workers(4);
        let mut p = ConsistentHashPolicy::new(ConsistentHashConfig::default());
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let before: Vec<WorkerId> = keys.iter().map(|k| pick(&mut p, &ws, Some(k))[0]).collect();
        p.worker_removed(WorkerId(3));
        let rest = &ws[..3];
        for (k, was) in keys.iter().zip(&before) {
            let now = pick(&mut p, rest, Some(k))[0];
            if *was != WorkerId(3) {
                assert_eq!(now, *was, "key {k} moved although its worker stayed");
            }
        }
    }

    #[test]
    fn without_a_key_the_least_loaded_wins() {
        let mut ws = workers(3);
        ws[0].in_flight = 2;
        ws[2].in_flight = 1;
        let mut p = ConsistentHashPolicy::new(ConsistentHashConfig::default());
        assert_eq!(
            pick(&mut p, &ws, None),
            vec![WorkerId(1), WorkerId(2), WorkerId(0)]
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: PolicyConfig =
            serde_json::from_str(r#"{"name":"consistent_hash","load_factor":1.5}"#).unwrap();
        assert_eq!(
            c,
            PolicyConfig::ConsistentHash(ConsistentHashConfig {
                load_factor: 1.5,
                ..ConsistentHashConfig::default()
            })
        );
        assert!(
            serde_json::from_str::<PolicyConfig>(r#"{"name":"consistent_hash","x":1}"#).is_err()
        );
    }
}
