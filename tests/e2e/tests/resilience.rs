//! Failures: a dead engine, a restarted kvroute, clients that hang up mid-stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvroute_e2e::load::{chat_load, collect, failed};
use kvroute_e2e::openai::{chat_body, chat_with_system, read_sse, sim_id};
use kvroute_e2e::{BodyMode, MODEL, Stack};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_routed_around_and_reported_unhealthy() -> anyhow::Result<()> {
    const INTERVAL_MS: u64 = 500;
    let mut stack = Stack::builder("killed_worker_is_routed_around_and_reported_unhealthy")
        .health_interval_ms(INTERVAL_MS)
        .start()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = chat_load(&stack, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    stack.kill_sim(1);
    let killed_at = Instant::now();
    let victim = &stack.sims()[1];
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, victim).is_some_and(|w| w["healthy"] == Value::Bool(false))
        })
        .await?;
    let detected = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let results = collect(load).await?;

    println!(
        "unhealthy after {detected:?}; {} requests during the run",
        results.len()
    );
    assert!(results.len() >= 10, "too few requests: {}", results.len());
    assert!(
        failed(&results).is_empty(),
        "failed requests: {:?}",
        failed(&results)
    );
    // Two failed probes at most two intervals apart, plus polling slack on a busy machine.
    let bound = Duration::from_millis(2 * INTERVAL_MS + 1500);
    assert!(
        detected <= bound,
        "reported unhealthy after {detected:?} (> {bound:?})"
    );
    for (_, engine) in &results {
        assert_ne!(engine, "", "an answer without engine id");
    }
    Ok(())
}

/// A picker known to be down (Envoy's health check noticed) costs nothing in duplex mode:
/// the ext_proc stream fails at once and Envoy fails open before any body is streamed.
/// Requests already streaming to the picker when it died are the ones duplex cannot save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvroute_known_down_fails_open_in_duplex_mode() -> anyhow::Result<()> {
    let mut stack = Stack::builder("kvroute_known_down_fails_open_in_duplex_mode")
        .policy("cache_aware")
        .start()
        .await?;
    stack.kill_kvroute();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(Instant::now() < deadline, "Envoy never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut engines = std::collections::BTreeSet::new();
    for i in 0..8 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("while down {i}"), true, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200, "request {i} while kvroute is down");
        engines.insert(sim_id(&resp));
        let _ = resp.bytes().await?;
    }
    assert!(engines.len() >= 2, "fallback round robin: {engines:?}");
    Ok(())
}

/// In BUFFERED mode even requests in flight when the picker dies fail open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvroute_restart_fails_open_then_routing_resumes() -> anyhow::Result<()> {
    let mut stack = Stack::builder("kvroute_restart_fails_open_then_routing_resumes")
        .policy("cache_aware")
        .body_mode(BodyMode::Buffered)
        .start()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = chat_load(&stack, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    stack.kill_kvroute();
    // While kvroute is down every request still gets an answer (fail-open, round robin).
    let mut down_engines = std::collections::BTreeSet::new();
    for i in 0..8 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("while down {i}"), false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200, "request {i} while kvroute is down");
        down_engines.insert(sim_id(&resp));
    }
    assert!(
        down_engines.len() >= 2,
        "fallback round robin spreads: {down_engines:?}"
    );

    // A supervisor restarts the crashed picker; Envoy's readiness check has noticed the
    // crash by then, and uses the new process only once it has probed the engines.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "Envoy never noticed kvroute is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.restart_kvroute().await?;
    let system: String = (0..30)
        .map(|i| format!("Shared instructions, part {i}. "))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_with_system(MODEL, &system, "after restart", false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        let decided = stack
            .kvroute_metric("kvroute_decisions_total", &[("outcome", "forwarded")])
            .await?;
        if decided >= 1.0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "kvroute never routed after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Routing resumed: the same prefix sticks to one engine again.
    let mut engines = std::collections::BTreeSet::new();
    for i in 0..4 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_with_system(MODEL, &system, &format!("again {i}"), false, 2),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        engines.insert(sim_id(&resp));
    }
    assert_eq!(
        engines.len(),
        1,
        "cache_aware affinity after restart: {engines:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let results = collect(load).await?;
    println!("{} background requests across the restart", results.len());
    assert!(
        failed(&results).is_empty(),
        "failed requests: {:?}",
        failed(&results)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_returns_to_zero_after_streams_and_disconnects() -> anyhow::Result<()> {
    let stack = Stack::builder("in_flight_returns_to_zero_after_streams_and_disconnects")
        .policy("least_request")
        .start()
        .await?;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = stack.client().clone();
        let url = stack.gateway_url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            // Long enough (~0.5 s at the test time scale) to hang up in the middle.
            let body = chat_body(MODEL, &format!("stream {i}"), true, 1000);
            let resp = client.post(&url).json(&body).send().await?;
            anyhow::ensure!(resp.status() == 200, "stream {i}: {}", resp.status());
            if i % 3 == 0 {
                let mut stream = resp.bytes_stream();
                let first = stream.next().await;
                anyhow::ensure!(matches!(first, Some(Ok(_))), "stream {i}: no first chunk");
                drop(stream);
                Ok(0)
            } else {
                Ok(read_sse(resp).await?.len())
            }
        }));
    }
    // While the burst runs, kvroute counts the streams in flight.
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        if let Ok(ws) = stack.workers().await {
            let sum: u64 = ws.iter().filter_map(|w| w["in_flight"].as_u64()).sum();
            peak = peak.max(sum);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut completed = 0;
    for t in tasks {
        if t.await?? > 0 {
            completed += 1;
        }
    }
    assert_eq!(completed, 16);
    println!("peak in flight during the burst: {peak}");
    assert!(peak > 0, "kvroute never counted a stream in flight");

    stack
        .wait_workers(Duration::from_secs(15), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    let gauge = stack
        .kvroute_metric("kvroute_requests_in_flight", &[])
        .await?;
    assert_eq!(gauge, 0.0);
    // The engines saw the hang-ups too (Envoy resets the upstream stream).
    let deadline = Instant::now() + Duration::from_secs(15);
    for sim in stack.sims() {
        loop {
            let running = stack.sim_metric(sim, "vllm:num_requests_running").await?;
            if running == 0.0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} still runs {running} requests",
                sim.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
