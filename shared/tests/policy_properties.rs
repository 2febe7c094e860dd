//! Properties every policy must keep, checked through the public `Router` API for every
//! policy name, plus the consistent-hash guarantees (stability, minimal movement, bounded
//! load).

use std::collections::{HashMap, HashSet};

use kvroute_core::{
    Prompt, RouteError, RouteRequest, Router, RouterConfig, Ticket, WorkerId, WorkerSpec,
    policy::PolicyConfig,
};
use proptest::prelude::*;

const MODELS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
struct WorkerSetup {
    healthy: bool,
    draining: bool,
    /// Index into `MODELS`, or `None` for a worker serving every model.
    model: Option<usize>,
}

#[derive(Debug, Clone)]
enum Op {
    Route {
        model: usize,
        key: Option<u8>,
        prompt: u8,
        prompt_len: usize,
        subset: Option<u8>,
    },
    Complete(usize),
    Remove(usize),
    SetHealthy(usize, bool),
}

fn worker_setup() -> impl Strategy<Value = WorkerSetup> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.15),
        prop::option::of(0..2usize),
    )
        .prop_map(|(healthy, draining, model)| WorkerSetup {
            healthy,
            draining,
            model,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, prop::option::of(0..6u8), any::<u8>(), 0..3000usize, prop::option::of(any::<u8>()))
            .prop_map(|(model, key, prompt, prompt_len, subset)| Op::Route { model, key, prompt, prompt_len, subset }),
        3 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, h)| Op::SetHealthy(i, h)),
    ]
}

fn address(i: usize) -> String {
    format!("10.1.0.{i}:8000")
}

fn router_for(name: &str, seed: u64) -> Router {
    router_listing(name, seed, RouterConfig::default().max_endpoints)
}

/// Like [`router_for`], naming up to `max_endpoints` per decision.
fn router_listing(name: &str, seed: u64, max_endpoints: usize) -> Router {
    let policy = PolicyConfig::from_name(name).expect("every listed name builds");
    Router::new(
        RouterConfig {
            policy,
            max_endpoints,
            ..RouterConfig::default()
        },
        seed,
    )
}

fn prompt_text(seed: u8, len: usize) -> String {
    let unit = format!("shared preamble {} / ", seed % 4);
    unit.repeat(len / unit.len() + 1)[..len].to_owned() + &format!("#{seed}")
}

/// Whether the worker at `addr` may receive a request for `model` within `subset`.
fn eligible(router: &Router, addr: &str, model: &str, subset: Option<&[&str]>) -> bool {
    router.workers().by_address(addr).is_some_and(|w| {
        w.is_routable() && w.spec.serves(model) && subset.is_none_or(|s| s.contains(&addr))
    })
}

/// Replays `ops` on a router running `name`, checking every decision.
fn check_policy(
    name: &str,
    setups: &[WorkerSetup],
    ops: &[Op],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut router = router_for(name, seed);
    let mut ids: Vec<WorkerId> = Vec::new();
    for (i, s) in setups.iter().enumerate() {
        let spec = WorkerSpec {
            models: s
                .model
                .map(|m| vec![MODELS[m].to_owned()])
                .unwrap_or_default(),
            ..WorkerSpec::new(address(i))
        };
        let id = router.upsert_worker(spec);
        router.set_healthy(id, s.healthy);
        router.set_draining(id, s.draining);
        ids.push(id);
    }
    let mut removed: HashSet<String> = HashSet::new();
    let mut tickets: Vec<Ticket> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Route {
                model,
                key,
                prompt,
                prompt_len,
                subset,
            } => {
                let model = MODELS[*model];
                let key_text = key.map(|k| format!("session-{k}"));
                let text = prompt_text(*prompt, *prompt_len);
                let prompt = Prompt::Text(text.as_str().into());
                let req = RouteRequest {
                    model,
                    prompt: &prompt,
                    lora: None,
                    cache_salt: None,
                    session_key: key_text.as_deref(),
                    tokens: None,
                };
                let subset_addrs: Option<Vec<String>> = subset.map(|mask| {
                    (0..setups.len())
                        .filter(|i| mask & (1 << (i % 8)) != 0)
                        .map(address)
                        .collect()
                });
                let subset_refs: Option<Vec<&str>> = subset_addrs
                    .as_ref()
                    .map(|v| v.iter().map(String::as_str).collect());
                let subset = subset_refs.as_deref();
                let any_eligible = router
                    .workers()
                    .iter()
                    .any(|w| eligible(&router, &w.spec.address, model, subset));
                let routed = router.route(&req, subset, step as u64 * 10);
                match routed {
                    Ok(r) => {
                        prop_assert!(!r.endpoints.is_empty());
                        prop_assert_eq!(r.policy, name);
                        let distinct: HashSet<&String> = r.endpoints.iter().collect();
                        prop_assert_eq!(distinct.len(), r.endpoints.len(), "{:?}", r.endpoints);
                        for addr in &r.endpoints {
                            prop_assert!(
                                eligible(&router, addr, model, subset),
                                "{} picked ineligible {}",
                                name,
                                addr
                            );
                            prop_assert!(!removed.contains(addr));
                        }
                        let chosen = router.workers().by_address(&r.endpoints[0]).map(|w| w.id);
                        prop_assert_eq!(Some(r.ticket.worker()), chosen);
                        tickets.push(r.ticket);
                    }
                    Err(e) => {
                        prop_assert!(
                            !any_eligible,
                            "{} failed with {:?} although a worker was eligible",
                            name,
                            e
                        );
                        prop_assert!(!matches!(e, RouteError::Overloaded));
                    }
                }
            }
            Op::Complete(i) if !tickets.is_empty() => {
                let t = tickets.swap_remove(i % tickets.len());
                router.complete(t);
            }
            Op::Remove(i) if !ids.is_empty() => {
                let id = ids.swap_remove(i % ids.len());
                if let Some(w) = router.remove_worker(id) {
                    removed.insert(w.spec.address);
                }
            }
            Op::SetHealthy(i, healthy) if !ids.is_empty() => {
                router.set_healthy(ids[i % ids.len()], *healthy);
            }
            _ => {}
        }
    }
    for t in tickets.drain(..) {
        router.complete(t);
    }
    prop_assert_eq!(router.outstanding(), 0);
    for w in router.workers().iter() {
        prop_assert_eq!(
            w.in_flight,
            0,
            "{} left {} in flight on {}",
            name,
            w.in_flight,
            w.spec.address
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_policy_picks_only_eligible_workers(
        setups in prop::collection::vec(worker_setup(), 1..8),
        ops in prop::collection::vec(op(), 1..60),
        seed in any::<u64>(),
    ) {
        for name in PolicyConfig::NAMES {
            check_policy(name, &setups, &ops, seed)?;
        }
    }

    #[test]
    fn bounded_load_holds_for_a_hot_key(
        workers in 2..7usize,
        requests in 1..80usize,
        preload in prop::collection::vec(0..4u32, 7),
        policy in prop_oneof![Just("consistent_hash"), Just("prefix_hash")],
    ) {
        let mut router = router_for(policy, 1);
        let ids: Vec<WorkerId> = (0..workers).map(|i| router.upsert_worker(WorkerSpec::new(address(i)))).collect();
        let prompt = Prompt::Text("the same hot prompt".into());
        let req = RouteRequest { model: "m", prompt: &prompt, lora: None, cache_salt: None, session_key: Some("hot"), tokens: None };
        let mut tickets = Vec::new();
        // Some in-flight load elsewhere first, on other keys.
        for (i, &n) in preload.iter().take(workers).enumerate() {
            for _ in 0..n {
                let r = router.route(&req, Some(&[address(i).as_str()]), 0).unwrap();
                tickets.push(r.ticket);
            }
        }
        for _ in 0..requests {
            let total: u64 = router.workers().iter().map(|w| u64::from(w.in_flight)).sum();
            let bound = (1.25 * (total + 1) as f64 / workers as f64).ceil() as u32;
            let r = router.route(&req, None, 0).unwrap();
            let chosen = router.workers().get(r.ticket.worker()).unwrap();
            // Preloaded workers may sit above the bound, but some worker is always below it
            // and the choice never takes one past it.
            prop_assert!(chosen.in_flight <= bound, "{} in flight > bound {}", chosen.in_flight, bound);
            tickets.push(r.ticket);
        }
        for t in tickets {
            router.complete(t);
        }
        prop_assert!(ids.iter().all(|id| router.workers().get(*id).unwrap().in_flight == 0));
    }
}

/// Routes each key once (completing at once, so loads stay zero) and returns its worker.
fn assignment(router: &mut Router, keys: &[String]) -> HashMap<String, String> {
    let prompt = Prompt::Text("p".into());
    keys.iter()
        .map(|k| {
            let req = RouteRequest {
                model: "m",
                prompt: &prompt,
                lora: None,
                cache_salt: None,
                session_key: Some(k),
                tokens: None,
            };
            let r = router.route(&req, None, 0).unwrap();
            let addr = r.endpoints[0].clone();
            router.complete(r.ticket);
            (k.clone(), addr)
        })
        .collect()
}

#[test]
fn consistent_hash_is_stable_and_moves_few_keys_on_a_join() {
    let mut router = router_for("consistent_hash", 3);
    for i in 0..4 {
        router.upsert_worker(WorkerSpec::new(address(i)));
    }
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let before = assignment(&mut router, &keys);
    assert_eq!(
        assignment(&mut router, &keys),
        before,
        "same key, same worker"
    );
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 4, "keys spread over every worker");

    router.upsert_worker(WorkerSpec::new(address(4)));
    let after = assignment(&mut router, &keys);
    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    assert!(moved.len() <= 350, "{} of 1000 keys moved", moved.len());
    assert!(!moved.is_empty(), "the newcomer took some keys");
    assert!(
        moved.iter().all(|k| after[*k] == address(4)),
        "keys only move to the newcomer"
    );

    // A leave moves back exactly the newcomer's keys.
    let id = router.workers().by_address(&address(4)).unwrap().id;
    router.remove_worker(id);
    assert_eq!(assignment(&mut router, &keys), before);
}

#[test]
fn every_name_in_the_list_builds_and_routes() {
    for name in PolicyConfig::NAMES {
        let mut router = router_listing(name, 9, 3);
        router.upsert_worker(WorkerSpec::new(address(0)));
        router.upsert_worker(WorkerSpec::new(address(1)));
        let prompt = Prompt::Tokens(vec![1, 2, 3]);
        let req = RouteRequest {
            model: "m",
            prompt: &prompt,
            lora: Some("adapter"),
            cache_salt: Some("salt"),
            session_key: Some("s"),
            tokens: None,
        };
        let r = router.route(&req, None, 0).unwrap();
        assert_eq!(r.policy, *name);
        assert_eq!(r.endpoints.len(), 2);
        router.complete(r.ticket);
        assert_eq!(router.outstanding(), 0);
    }
}

#[test]
fn every_default_validates_and_out_of_range_parameters_are_named() {
    for name in PolicyConfig::NAMES {
        let policy = PolicyConfig::from_name(name).unwrap();
        assert_eq!(policy.validate(), Ok(()), "{name}");
    }
    assert_eq!(RouterConfig::default().validate(), Ok(()));
    let bad: [(&str, &str); 5] = [
        (
            r#"{"name":"cache_aware","balance_rel_threshold":0.5}"#,
            "router.policy.balance_rel_threshold",
        ),
        (
            r#"{"name":"consistent_hash","virtual_nodes":0}"#,
            "router.policy.virtual_nodes",
        ),
        (
            r#"{"name":"precise_prefix","block_size":0}"#,
            "router.policy.block_size",
        ),
        (
            r#"{"name":"scorer","weights":{"queue":-1}}"#,
            "router.policy.weights.queue",
        ),
        (
            r#"{"name":"prefix_hash","load_factor":0.9}"#,
            "router.policy.load_factor",
        ),
    ];
    for (json, field) in bad {
        let policy: PolicyConfig = serde_json::from_str(json).expect(json);
        let config = RouterConfig {
            policy,
            ..RouterConfig::default()
        };
        let (got, _) = config.validate().expect_err(json);
        assert_eq!(got, field, "{json}");
    }
    let config = RouterConfig {
        max_endpoints: 0,
        ..RouterConfig::default()
    };
    assert_eq!(config.validate().unwrap_err().0, "router.max_endpoints");
}
