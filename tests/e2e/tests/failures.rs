//! Failure handling through the real Envoy: start-up, dead, hung and failing engines,
//! kvroute crashes with fail-open and fail-closed configs, slow health endpoints, drains.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvroute_e2e::load::{Outcome, chat_load as load, collect, failed};
use kvroute_e2e::openai::{chat_body, chat_with_system, read_sse, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::Value;
use tokio::task::JoinHandle;

fn per_engine(results: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, id) in results {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvroute_is_ready_only_once_its_workers_are_probed() -> anyhow::Result<()> {
    let mut stack = Stack::builder("kvroute_is_ready_only_once_its_workers_are_probed")
        .start()
        .await?;
    for round in 0..3 {
        stack.restart_kvroute_no_wait().await?;
        // Right at the ready line every engine is already known healthy: a request arriving
        // now is routed, not answered 503.
        let workers = stack.workers().await?;
        let healthy = workers.iter().filter(|w| w["healthy"] == true).count();
        assert_eq!(healthy, stack.sims().len(), "round {round}: {workers:?}");
        let ready = stack
            .client()
            .get(stack.kvroute_admin_url("/readyz"))
            .send()
            .await?;
        assert!(
            ready.status().is_success(),
            "round {round}: /readyz {}",
            ready.status()
        );
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, "right away", false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200, "round {round}");
    }
    let no_worker = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "5xx")])
        .await?;
    assert_eq!(no_worker, 0.0, "kvroute answered 5xx after a restart");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_under_cache_aware_load_loses_nothing_and_comes_back() -> anyhow::Result<()> {
    const INTERVAL_MS: u64 = 300;
    let mut stack =
        Stack::builder("killed_worker_under_cache_aware_load_loses_nothing_and_comes_back")
            .policy("cache_aware")
            .health_interval_ms(INTERVAL_MS)
            .start()
            .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stack, 3, stop.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;

    stack.kill_sim(2);
    let killed = Instant::now();
    let victim_addr = stack.sims()[2].addr;
    let victim = &stack.sims()[2];
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, victim).is_some_and(|w| w["healthy"] == false)
        })
        .await?;
    let ejected_after = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The engine comes back (same address, empty cache) and receives traffic again.
    stack.restart_sim(2).await?;
    let victim = &stack.sims()[2];
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, victim).is_some_and(|w| w["healthy"] == true)
        })
        .await?;
    let mut back = false;
    for i in 0..40 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("{} unrelated prompt", i * 7919), false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        if sim_id(&resp) == "sim-2" {
            back = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let results = collect(handles).await?;
    println!(
        "ejected after {ejected_after:?}; {} requests: {:?}",
        results.len(),
        per_engine(&results)
    );
    assert!(results.len() >= 20, "too few requests: {}", results.len());
    assert!(
        failed(&results).is_empty(),
        "failed: {:?}",
        failed(&results)
    );
    // Two probes fail (unhealthy_threshold 2) at most two intervals after the kill, plus
    // the probe timeout and scheduling slack on a busy machine.
    let bound = Duration::from_millis(2 * INTERVAL_MS + 1000 + 1500);
    assert!(
        ejected_after <= bound,
        "ejected after {ejected_after:?} > {bound:?}"
    );
    assert!(
        back,
        "the restarted engine {victim_addr} never got traffic again"
    );
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    Ok(())
}

/// Envoy's counter `name` from its `/stats`.
async fn envoy_counter(stack: &Stack, name: &str) -> anyhow::Result<u64> {
    let text = stack
        .client()
        .get(stack.envoy_admin_url("/stats"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no counter {name} in Envoy's stats"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_engine_is_timed_out_retried_and_ejected() -> anyhow::Result<()> {
    // Engine 0 freezes (SIGSTOP): its kernel still accepts connections and requests, nothing
    // answers, not even /health. Requests already sent there must be retried elsewhere after
    // the per-try timeout, the probes must eject it, and nothing else may stall.
    const INTERVAL_MS: u64 = 300;
    let stack = Stack::builder("hung_engine_is_timed_out_retried_and_ejected")
        .engines(3)
        .policy("round_robin")
        .health_interval_ms(INTERVAL_MS)
        .kvroute_config("health: {timeout_ms: 300}\n")
        .per_try_timeout("1s")
        .start()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stack, 3, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    stack.pause_sim(0)?;
    let paused = Instant::now();
    let hung = &stack.sims()[0];
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, hung).is_some_and(|w| w["healthy"] == false)
        })
        .await?;
    let ejected_after = paused.elapsed();
    // While it hangs, requests are answered at the healthy engines' pace.
    let mut latencies = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("while hung {i}"), false, 2),
            )
            .await?;
        latencies.push(started.elapsed());
        assert_eq!(resp.status(), 200);
        assert_ne!(sim_id(&resp), "sim-0", "routed to the ejected engine");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // Nothing is sent there after the ejection: every try still stuck on it times out
    // (1 s) before it may answer again.
    tokio::time::sleep(
        Duration::from_millis(1500).saturating_sub(paused.elapsed() - ejected_after),
    )
    .await;

    stack.resume_sim(0)?;
    let hung = &stack.sims()[0];
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, hung).is_some_and(|w| w["healthy"] == true)
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = collect(handles).await?;
    let timeouts = envoy_counter(&stack, "cluster.engines.upstream_rq_per_try_timeout").await?;
    let retries = envoy_counter(&stack, "cluster.engines.upstream_rq_retry").await?;
    println!(
        "ejected after {ejected_after:?}; median while hung {median:?}; per-try timeouts \
         {timeouts}, retries {retries}; {} requests: {:?}",
        results.len(),
        per_engine(&results)
    );
    assert!(
        failed(&results).is_empty(),
        "failed: {:?}",
        failed(&results)
    );
    // Round robin sent requests to the engine before the probes ejected it: they timed out
    // and were retried elsewhere, none answered by the hung engine until it came back.
    assert!(
        timeouts >= 1,
        "no request hit the hung engine's per-try timeout"
    );
    assert!(retries >= timeouts, "timed-out tries were not retried");
    let bound = Duration::from_millis(2 * INTERVAL_MS + 2 * 300 + 1500);
    assert!(
        ejected_after <= bound,
        "ejected after {ejected_after:?} > {bound:?}"
    );
    assert!(median < Duration::from_millis(500), "median {median:?}");
    assert!(
        per_engine(&results).get("sim-0").copied().unwrap_or(0) > 0,
        "the engine never served before or after the hang"
    );
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_engine_is_avoided_then_recovers() -> anyhow::Result<()> {
    let config = "router:\n  circuit: {consecutive_failures: 3, cooldown_ms: 1500}\n";
    let stack = Stack::builder("failing_engine_is_avoided_then_recovers")
        .kvroute_config(config)
        .engines(3)
        .start()
        .await?;
    stack.sim_fault(0, 500, None).await?;
    let mut results = Vec::new();
    for i in 0..60 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("f {i}"), false, 2),
            )
            .await?;
        results.push((resp.status().as_u16(), sim_id(&resp)));
    }
    let errors = results.iter().filter(|(s, _)| *s == 500).count();
    let workers = stack.workers().await?;
    let circuit = Stack::worker_entry(&workers, &stack.sims()[0])
        .map(|w| w["circuit"].clone())
        .unwrap_or_default();
    println!("during the fault: {errors} errors of 60; circuit {circuit}");
    // Three failures open the circuit; each cooldown lets one trial through.
    assert!((3..=8).contains(&errors), "{errors} failed: {results:?}");
    assert!(
        results.iter().all(|(s, id)| *s == 200 || id == "sim-0"),
        "only the failing engine fails: {results:?}"
    );
    assert_ne!(circuit, "closed", "circuit after the fault");

    stack.clear_sim_fault(0).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut recovered = false;
    while Instant::now() < deadline && !recovered {
        let resp = stack
            .post("/v1/chat/completions", &chat_body(MODEL, "after", false, 2))
            .await?;
        assert_eq!(resp.status(), 200, "after the fault cleared");
        recovered = sim_id(&resp) == "sim-0";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the engine never got traffic back");
    let workers = stack.workers().await?;
    let entry = Stack::worker_entry(&workers, &stack.sims()[0]).cloned();
    assert_eq!(
        entry.map(|w| w["circuit"].clone()),
        Some(Value::from("closed"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_gives_json_5xx_while_kvroute_is_down() -> anyhow::Result<()> {
    let mut stack = Stack::builder("fail_closed_gives_json_5xx_while_kvroute_is_down")
        .policy("cache_aware")
        .fail_closed()
        .start()
        .await?;
    let resp = stack
        .post("/v1/chat/completions", &chat_body(MODEL, "up", false, 2))
        .await?;
    assert_eq!(resp.status(), 200);

    stack.kill_kvroute();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let resp = stack
            .post("/v1/chat/completions", &chat_body(MODEL, "down", false, 2))
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status != 200 {
            break (status, text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fail-closed gateway kept answering 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("kvroute down, fail-closed: {status} {body}");
    assert!((500..600).contains(&status), "status {status}");
    let json: Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("not JSON ({e}): {body:?}"))?;
    assert!(json["error"]["message"].is_string(), "{json}");

    stack.restart_kvroute().await?;
    let system: String = (0..30)
        .map(|i| format!("Policy text, part {i}. "))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut engines = std::collections::BTreeSet::new();
    let mut ok_streak = 0;
    while ok_streak < 4 {
        anyhow::ensure!(Instant::now() < deadline, "no affinity after the restart");
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_with_system(MODEL, &system, &format!("again {ok_streak}"), false, 2),
            )
            .await?;
        if resp.status() != 200 {
            ok_streak = 0;
            engines.clear();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        engines.insert(sim_id(&resp));
        ok_streak += 1;
    }
    assert_eq!(
        engines.len(),
        1,
        "prefix affinity after restart: {engines:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_health_endpoint_times_out_without_stalling_requests() -> anyhow::Result<()> {
    // Engine 0 takes 1 s to answer /health; probes time out after 300 ms.
    let mut stack = Stack::builder("slow_health_endpoint_times_out_without_stalling_requests")
        .engines(3)
        .sim_args(0, &["--health-delay-ms", "1000"])
        .unready(0)
        .kvroute_config("health: {timeout_ms: 300}\n")
        .start()
        .await?;
    let mut latencies = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("s {i}"), false, 2),
            )
            .await?;
        latencies.push(started.elapsed());
        assert_eq!(resp.status(), 200);
        assert_ne!(
            sim_id(&resp),
            "sim-0",
            "routed to an engine that never passed a probe"
        );
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    println!("median latency with a hung health endpoint: {median:?}");
    // A stall behind the 1 s health answer would show as ~1 s.
    assert!(median < Duration::from_millis(500), "median {median:?}");
    let workers = stack.workers().await?;
    assert_eq!(
        Stack::worker_entry(&workers, &stack.sims()[0]).map(|w| w["healthy"].clone()),
        Some(Value::Bool(false))
    );

    // A timeout longer than the delay: the slow engine is healthy and used.
    stack.expect_ready(0);
    stack.set_config("health: {timeout_ms: 2500}\n").await?;
    let slow = &stack.sims()[0];
    stack
        .wait_workers(Duration::from_secs(15), |ws| {
            Stack::worker_entry(ws, slow).is_some_and(|w| w["healthy"] == true)
        })
        .await?;
    let mut seen = false;
    for i in 0..20 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("t {i}"), false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        seen |= sim_id(&resp) == "sim-0";
    }
    assert!(seen, "the slow-but-healthy engine got no request");
    Ok(())
}

/// Starts `n` streamed chats (~3 s each at the test time scale); returns their tasks, each
/// resolving to (engine, number of SSE events) once `[DONE]` came.
fn long_streams(stack: &Stack, n: usize) -> Vec<JoinHandle<anyhow::Result<(String, usize)>>> {
    (0..n)
        .map(|i| {
            let client = stack.client().clone();
            let url = stack.gateway_url("/v1/chat/completions");
            tokio::spawn(async move {
                let body = chat_body(MODEL, &format!("long stream {i}"), true, 6000);
                let resp = client.post(&url).json(&body).send().await?;
                anyhow::ensure!(resp.status() == 200, "stream {i}: {}", resp.status());
                let id = sim_id(&resp);
                let events = read_sse(resp).await?;
                Ok((id, events.len()))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_and_removed_workers_finish_in_flight_requests() -> anyhow::Result<()> {
    let stack = Stack::builder("drained_and_removed_workers_finish_in_flight_requests")
        .policy("least_request")
        .engines(3)
        .start()
        .await?;
    let streams = long_streams(&stack, 9);
    // Wait until each engine holds some.
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"].as_u64().unwrap_or(0) > 0)
        })
        .await?;
    let drained = stack.sims()[0].addr.to_string();
    let removed = stack.sims()[1].addr.to_string();
    let client = stack.client();
    let resp = client
        .post(stack.kvroute_admin_url(&format!("/workers/{drained}/drain")))
        .send()
        .await?;
    assert!(resp.status().is_success(), "drain: {}", resp.status());
    let resp = client
        .delete(stack.kvroute_admin_url(&format!("/workers/{removed}")))
        .send()
        .await?;
    assert!(resp.status().is_success(), "remove: {}", resp.status());

    // New requests go to the remaining engine only.
    for i in 0..10 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("new {i}"), false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            sim_id(&resp),
            "sim-2",
            "request {i} after drain and removal"
        );
    }
    // Every stream that was in flight finished with [DONE].
    let mut per = BTreeMap::new();
    for s in streams {
        let (id, events) = s.await??;
        assert!(events > 0);
        *per.entry(id).or_insert(0) += 1;
    }
    println!("streams completed per engine: {per:?}");
    assert!(
        per.contains_key("sim-0") && per.contains_key("sim-1"),
        "{per:?}"
    );
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    let gauge = stack
        .kvroute_metric("kvroute_requests_in_flight", &[])
        .await?;
    assert_eq!(gauge, 0.0, "in-flight after drain and removal");
    Ok(())
}
