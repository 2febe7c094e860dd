//! Failure handling in the core: ejection purges the cache-aware index, the circuit breaker
//! keeps failing workers out and lets them back, the global in-flight limit sheds with 429.

use kvroute_core::circuit::Transition;
use kvroute_core::{
    ApiRoute, CircuitConfig, CircuitState, Gateway, GatewayConfig, LimitsConfig, Outcome,
    PolicyConfig, Prompt, ResponseOrigin, ResponseReport, RouteRequest, Router, RouterConfig,
    WorkerId, WorkerSpec,
};

/// A response the worker itself answered.
fn upstream(served: Option<&str>, status: u16) -> ResponseReport<'_> {
    ResponseReport {
        served,
        status: Some(status),
        origin: ResponseOrigin::Upstream,
    }
}

fn router(policy: &str, circuit: CircuitConfig) -> (Router, Vec<WorkerId>) {
    let mut r = Router::new(
        RouterConfig {
            policy: PolicyConfig::from_name(policy).expect("known policy"),
            circuit,
            ..RouterConfig::default()
        },
        11,
    );
    let ids = (1..=3)
        .map(|i| r.upsert_worker(WorkerSpec::new(format!("10.0.0.{i}:8000"))))
        .collect();
    (r, ids)
}

fn request<'a>(prompt: &'a Prompt<'a>) -> RouteRequest<'a> {
    RouteRequest {
        model: "m",
        prompt,
        lora: None,
        cache_salt: None,
        session_key: None,
        tokens: None,
    }
}

#[test]
fn unhealthy_transition_purges_the_cache_aware_index() {
    let (mut r, _) = router("cache_aware", CircuitConfig::default());
    let text: String = (0..40)
        .map(|i| format!("shared system prompt {i}. "))
        .collect();
    let prompt = Prompt::Text(text.into());
    let first = r.route(&request(&prompt), None, 0).unwrap();
    let owner = first.ticket.worker();
    r.complete(first.ticket);
    let again = r.route(&request(&prompt), None, 1).unwrap();
    assert_eq!(again.ticket.worker(), owner, "prefix affinity");
    assert!(again.prefix_match.unwrap_or(0.0) > 0.9);
    r.complete(again.ticket);

    // Ejected, then back (an engine restarted with an empty cache).
    r.set_healthy(owner, false);
    r.set_healthy(owner, true);
    let after = r.route(&request(&prompt), None, 2).unwrap();
    assert_eq!(
        after.prefix_match,
        Some(0.0),
        "the index still claimed the prompt was cached on {:?}",
        after.ticket.worker()
    );
    r.complete(after.ticket);
}

#[test]
fn circuit_opens_on_failures_then_half_open_trial_closes_it() {
    let circuit = CircuitConfig {
        consecutive_failures: 2,
        cooldown_ms: 1_000,
        ..CircuitConfig::default()
    };
    let (mut r, ids) = router("round_robin", circuit);
    let bad = ids[0];
    let prompt = Prompt::Text("x".into());
    // Feed failures for `bad` until its circuit opens.
    let mut failures = 0;
    while r.circuit_state(bad, 0) == CircuitState::Closed {
        let routed = r.route(&request(&prompt), None, 0).unwrap();
        let ok = routed.ticket.worker() != bad;
        if !ok {
            failures += 1;
        }
        r.record_result(&routed.ticket, ok, 0);
        r.complete(routed.ticket);
        assert!(failures <= 2, "circuit never opened");
    }
    // Open: never chosen, not even as a fallback.
    for t in 1..50 {
        let routed = r.route(&request(&prompt), None, t).unwrap();
        assert_ne!(routed.ticket.worker(), bad);
        assert!(!routed.endpoints.contains(&"10.0.0.1:8000".to_string()));
        r.complete(routed.ticket);
    }
    // Half-open after the cooldown: exactly one trial goes through.
    let mut trial = None;
    for _ in 0..6 {
        let routed = r.route(&request(&prompt), None, 1_000).unwrap();
        if routed.ticket.worker() == bad {
            assert!(trial.is_none(), "a second trial while the first is out");
            trial = Some(routed);
        } else {
            r.complete(routed.ticket);
        }
    }
    let trial = trial.expect("the half-open circuit let a trial through");
    r.record_result(&trial.ticket, true, 1_010);
    r.complete(trial.ticket);
    assert_eq!(r.circuit_state(bad, 1_010), CircuitState::Closed);
}

#[test]
fn every_circuit_open_still_routes() {
    let circuit = CircuitConfig {
        consecutive_failures: 1,
        cooldown_ms: 10_000,
        ..CircuitConfig::default()
    };
    let (mut r, _) = router("least_request", circuit);
    let prompt = Prompt::Text("x".into());
    for _ in 0..20 {
        let routed = r.route(&request(&prompt), None, 0).unwrap();
        r.record_result(&routed.ticket, false, 0);
        r.complete(routed.ticket);
    }
    let routed = r
        .route(&request(&prompt), None, 1)
        .expect("panic mode routes");
    r.complete(routed.ticket);
}

#[test]
fn global_in_flight_limit_sheds_with_429_and_retry_after() {
    let gw = Gateway::new(GatewayConfig::default()).with_limits(LimitsConfig {
        max_in_flight: Some(2),
        retry_after_secs: 3,
        ..LimitsConfig::default()
    });
    let (mut r, _) = router("least_request", CircuitConfig::default());
    let body = br#"{"model":"m","prompt":"hi"}"#;
    let mut held = Vec::new();
    for _ in 0..2 {
        match gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0) {
            Outcome::Forward(f) => held.push(f.routed.ticket),
            Outcome::Reply(reply) => panic!("under the limit: {reply:?}"),
        }
    }
    match gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0) {
        Outcome::Reply(reply) => {
            assert_eq!(reply.status, 429);
            assert_eq!(reply.retry_after_secs, Some(3));
            let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(v["error"]["code"], "too_many_requests");
        }
        Outcome::Forward(_) => panic!("over the limit must be shed"),
    }
    assert!(matches!(gw.route_other(&mut r, None, 0), Outcome::Reply(_)));
    for t in held {
        r.complete(t);
    }
    assert_eq!(r.outstanding(), 0);
    assert!(matches!(
        gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0),
        Outcome::Forward(_)
    ));
}

#[test]
fn serving_elsewhere_moves_the_count_and_fails_the_pick() {
    let circuit = CircuitConfig {
        consecutive_failures: 2,
        cooldown_ms: 1_000,
        ..CircuitConfig::default()
    };
    let (mut r, ids) = router("round_robin", circuit);
    let prompt = Prompt::Text("x".into());
    let mut opened = None;
    for _ in 0..2 {
        // Route until `ids[0]` is picked, then report the retry that served it elsewhere.
        let mut routed = loop {
            let routed = r.route(&request(&prompt), None, 0).unwrap();
            if routed.ticket.worker() == ids[0] {
                break routed;
            }
            r.complete(routed.ticket);
        };
        opened = r.served_by(&mut routed.ticket, "10.0.0.2:8000", 0);
        assert_eq!(routed.ticket.worker(), ids[1]);
        assert_eq!(r.workers().get(ids[0]).unwrap().in_flight, 0);
        assert_eq!(r.workers().get(ids[1]).unwrap().in_flight, 1);
        r.complete(routed.ticket);
    }
    assert_eq!(opened, Some(Transition::Opened));
    assert!(matches!(
        r.circuit_state(ids[0], 0),
        CircuitState::Open { .. }
    ));
    // Served where it was sent, or by an unknown address: nothing moves, nothing fails.
    let mut routed = r.route(&request(&prompt), None, 0).unwrap();
    let pick = routed.ticket.worker();
    let address = r.workers().get(pick).unwrap().spec.address.clone();
    assert_eq!(r.served_by(&mut routed.ticket, &address, 0), None);
    assert_eq!(r.served_by(&mut routed.ticket, "10.9.9.9:1", 0), None);
    assert_eq!(routed.ticket.worker(), pick);
    assert_eq!(r.circuit_state(pick, 0), CircuitState::Closed);
    r.complete(routed.ticket);
}

#[test]
fn response_headers_feed_the_circuit_of_the_worker_that_answered() {
    let circuit = CircuitConfig {
        consecutive_failures: 2,
        cooldown_ms: 1_000,
        ..CircuitConfig::default()
    };
    let (mut r, ids) = router("round_robin", circuit);
    let prompt = Prompt::Text("x".into());
    let pick = |r: &mut Router, id: WorkerId, now: u64| loop {
        let routed = r.route(&request(&prompt), None, now).unwrap();
        if routed.ticket.worker() == id {
            break routed;
        }
        r.complete(routed.ticket);
    };
    // Two 5xx answers from worker 1 open its circuit.
    for _ in 0..2 {
        let mut routed = pick(&mut r, ids[0], 0);
        let t = r.response_started(&mut routed.ticket, upstream(None, 503), 0);
        r.complete(routed.ticket);
        if !t.is_empty() {
            assert_eq!(t, vec![(ids[0], Transition::Opened)]);
        }
    }
    assert!(matches!(
        r.circuit_state(ids[0], 0),
        CircuitState::Open { .. }
    ));
    // After the cooldown, the trial is answered by worker 2 after a retry: worker 1's trial
    // failed (open again), worker 2 answered 200 (stays closed), the count moved there.
    let mut routed = pick(&mut r, ids[0], 1_000);
    let t = r.response_started(
        &mut routed.ticket,
        upstream(Some("10.0.0.2:8000"), 200),
        1_000,
    );
    assert_eq!(t, vec![(ids[0], Transition::Opened)]);
    assert_eq!(routed.ticket.worker(), ids[1]);
    assert_eq!(r.circuit_state(ids[1], 1_000), CircuitState::Closed);
    r.complete(routed.ticket);
    // A 200 from the worker itself after the next cooldown closes its circuit.
    let mut routed = pick(&mut r, ids[0], 2_500);
    let t = r.response_started(
        &mut routed.ticket,
        upstream(Some("10.0.0.1:8000"), 200),
        2_500,
    );
    assert_eq!(t, vec![(ids[0], Transition::Closed)]);
    r.complete(routed.ticket);
    assert!(r.workers().iter().all(|w| w.in_flight == 0));
}

#[test]
fn proxy_made_errors_never_open_a_circuit() {
    // The ORIGINAL_DST gateway given a list answers 503 itself ("no original_dst") for every
    // request: none of that may count against the workers.
    let circuit = CircuitConfig {
        consecutive_failures: 2,
        cooldown_ms: 60_000,
        ..CircuitConfig::default()
    };
    let (mut r, ids) = router("round_robin", circuit);
    let prompt = Prompt::Text("x".into());
    for origin in [ResponseOrigin::Proxy, ResponseOrigin::Unknown] {
        for _ in 0..30 {
            let mut routed = r.route(&request(&prompt), None, 0).unwrap();
            let report = ResponseReport {
                served: None,
                status: Some(503),
                origin,
            };
            assert!(r.response_started(&mut routed.ticket, report, 0).is_empty());
            r.complete(routed.ticket);
        }
    }
    for id in ids {
        assert_eq!(r.circuit_state(id, 0), CircuitState::Closed);
    }
    // A success of unknown origin still closes a circuit: it comes from a worker.
    let mut routed = r.route(&request(&prompt), None, 0).unwrap();
    let id = routed.ticket.worker();
    for _ in 0..2 {
        r.record_result(&routed.ticket, false, 0);
    }
    assert!(matches!(r.circuit_state(id, 0), CircuitState::Open { .. }));
    let ok = ResponseReport {
        served: None,
        status: Some(200),
        origin: ResponseOrigin::Unknown,
    };
    assert_eq!(
        r.response_started(&mut routed.ticket, ok, 1),
        vec![(id, Transition::Closed)]
    );
    r.complete(routed.ticket);
}

#[test]
fn an_abandoned_half_open_trial_does_not_exclude_the_worker_for_good() {
    let circuit = CircuitConfig {
        consecutive_failures: 1,
        cooldown_ms: 100,
        ..CircuitConfig::default()
    };
    let (mut r, ids) = router("round_robin", circuit);
    let bad = ids[0];
    let prompt = Prompt::Text("x".into());
    let pick = |r: &mut Router, now: u64| loop {
        let routed = r.route(&request(&prompt), None, now).unwrap();
        if routed.ticket.worker() == bad {
            break routed;
        }
        r.complete(routed.ticket);
    };
    let routed = pick(&mut r, 0);
    r.record_result(&routed.ticket, false, 0);
    r.complete(routed.ticket);
    // The trial goes out after the cooldown; its client leaves before any response.
    let trial = pick(&mut r, 100);
    r.complete(trial.ticket);
    // The worker is picked again (a new trial) instead of being left out for good.
    let again = pick(&mut r, 101);
    assert_eq!(
        r.circuit_state(bad, 101),
        CircuitState::HalfOpen {
            trial_in_flight: true
        }
    );
    r.record_result(&again.ticket, true, 102);
    r.complete(again.ticket);
    assert_eq!(r.circuit_state(bad, 102), CircuitState::Closed);
}

#[test]
fn circuits_open_on_most_of_the_fleet_are_ignored_panic_mode() {
    let circuit = CircuitConfig {
        consecutive_failures: 1,
        cooldown_ms: 60_000,
        ..CircuitConfig::default()
    };
    let mut r = Router::new(
        RouterConfig {
            policy: PolicyConfig::from_name("round_robin").unwrap(),
            circuit,
            ..RouterConfig::default()
        },
        5,
    );
    let ids: Vec<WorkerId> = (1..=4)
        .map(|i| r.upsert_worker(WorkerSpec::new(format!("10.0.0.{i}:8000"))))
        .collect();
    let prompt = Prompt::Text("x".into());
    let open = |r: &mut Router, id: WorkerId| loop {
        let routed = r.route(&request(&prompt), None, 0).unwrap();
        let hit = routed.ticket.worker() == id;
        if hit {
            r.record_result(&routed.ticket, false, 0);
        }
        r.complete(routed.ticket);
        if hit {
            break;
        }
    };
    // Two of four open: half the fleet is still usable, circuits are obeyed.
    open(&mut r, ids[0]);
    open(&mut r, ids[1]);
    for _ in 0..20 {
        let routed = r.route(&request(&prompt), None, 1).unwrap();
        assert!(!ids[..2].contains(&routed.ticket.worker()));
        r.complete(routed.ticket);
    }
    // Three of four open: below the panic threshold every healthy worker is used again.
    open(&mut r, ids[2]);
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let routed = r.route(&request(&prompt), None, 2).unwrap();
        used.insert(routed.ticket.worker());
        r.complete(routed.ticket);
    }
    assert_eq!(
        used.len(),
        4,
        "panic mode spreads over the whole fleet: {used:?}"
    );
}

#[test]
fn absurd_engine_metrics_make_a_worker_look_full_never_idle() {
    for policy in ["least_request", "power_of_two", "cache_aware", "scorer"] {
        let (mut r, ids) = router(policy, CircuitConfig::default());
        // One request in flight on every worker, then worker 0 reports an absurd queue.
        let prompt = Prompt::Text("warm".into());
        let mut tickets = Vec::new();
        for _ in 0..3 {
            tickets.push(r.route(&request(&prompt), None, 0).unwrap().ticket);
        }
        r.set_load(
            ids[0],
            Some(kvroute_core::LoadReport {
                waiting: u32::MAX,
                running: u32::MAX,
                kv_cache_usage: f32::NAN,
                observed_at_ms: 0,
            }),
        );
        let w = r.workers().get(ids[0]).unwrap();
        assert!(
            w.load() >= kvroute_core::worker::MAX_REPORTED_REQUESTS,
            "{policy}: {}",
            w.load()
        );
        assert_eq!(w.load.unwrap().kv_cache_usage, 0.0, "NaN reads as 0");
        for i in 0..20 {
            let prompt = Prompt::Text(format!("request {i}").into());
            let routed = r.route(&request(&prompt), None, 0).unwrap();
            assert_ne!(
                routed.endpoints[0], "10.0.0.1:8000",
                "{policy}: the full worker"
            );
            r.complete(routed.ticket);
        }
        for t in tickets {
            r.complete(t);
        }
    }
}
