//! kvroute on its defaults (no config file, no policy flag) behind the Envoy configs the
//! gateways generate for an InferencePool route (`tests/e2e/gateways/`): Envoy Gateway / AI
//! Gateway and the Inference Extension's test Envoy (ORIGINAL_DST reading one `ip:port`,
//! fail-closed), Istio (override_host on metadata, the served endpoint reported back,
//! fail-open) and kgateway (a subset load balancer on metadata copied from the header,
//! fail-open). All of them speak TLS to the picker without verifying it and stream bodies in
//! FULL_DUPLEX_STREAMED mode.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvroute_e2e::load::{chat_load, collect, failed};
use kvroute_e2e::openai::{cached_tokens, chat_with_system, read_sse, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::Value;

const GROUPS: usize = 4;
const PER_GROUP: usize = 6;

/// What a gateway does when the picker cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PickerDown {
    /// `failure_mode_allow: true` (the pool's FailOpen). In FULL_DUPLEX_STREAMED mode Envoy
    /// can fail open only while no body has streamed to the picker: a request without a
    /// body reaches an engine, a request whose body was already handed to the dead stream
    /// gets 500.
    FailOpen,
    /// `failure_mode_allow: false`: every request gets Envoy's 500.
    FailClosed,
}

/// A system prompt unique to `group` (~1,600 characters).
fn system_prompt(group: usize) -> String {
    (0..40)
        .map(|i| format!("Group {group} rule {i}: answer in the voice of tutor {group}. "))
        .collect()
}

/// Shared-prefix workload (4 groups x 6, interleaved, every other request streamed): every
/// request answered, each group on one engine, and the hit rate (non-streamed requests after
/// a group's first that found its prefix cached) at least 0.9 of the oracle's (all of them).
async fn cache_affinity(stack: &Stack, shape: &str) -> anyhow::Result<usize> {
    let mut engines: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let (mut hits, mut oracle) = (0usize, 0usize);
    let mut sent = 0;
    for round in 0..PER_GROUP {
        for slot in 0..GROUPS {
            let group = (slot + round) % GROUPS;
            let stream = (round + slot) % 2 == 1;
            let body = chat_with_system(
                MODEL,
                &system_prompt(group),
                &format!("Question {round} of group {group}?"),
                stream,
                4,
            );
            let resp = stack.post("/v1/chat/completions", &body).await?;
            anyhow::ensure!(resp.status() == 200, "{shape}: status {}", resp.status());
            engines.entry(group).or_default().insert(sim_id(&resp));
            sent += 1;
            if stream {
                // Streamed answers carry no usage; they must stream to the end.
                let events = read_sse(resp).await?;
                anyhow::ensure!(!events.is_empty(), "{shape}: empty stream");
                continue;
            }
            let cached = cached_tokens(&resp.json::<Value>().await?);
            if round > 0 {
                oracle += 1;
                hits += usize::from(cached > 0);
            }
        }
    }
    for (group, on) in &engines {
        anyhow::ensure!(on.len() == 1, "{shape}: group {group} on {on:?}");
    }
    let ratio = hits as f64 / oracle as f64;
    println!("{shape}: hit rate {ratio:.3} x oracle");
    anyhow::ensure!(ratio >= 0.9, "{shape}: hit rate {ratio:.3} x oracle < 0.9");
    Ok(sent)
}

/// What the gateway tells kvroute about responses.
#[derive(Clone, Copy, Debug)]
struct Reports {
    /// The endpoint that served (Istio's `selected_host_key`).
    served: bool,
    /// Envoy's `x-envoy-upstream-service-time` header marks engine responses (absent with
    /// `suppress_envoy_headers`: the origin is then unknown and only successes count).
    upstream_timing: bool,
}

/// kvroute saw every response it routed, with the origin the gateway lets it tell, and
/// learned the served endpoint from the proxy exactly where the gateway reports it.
async fn responses_accounted(
    stack: &Stack,
    shape: &str,
    sent: usize,
    reports: Reports,
) -> anyhow::Result<()> {
    let reports_served = reports.served;
    let origin = if reports.upstream_timing {
        "upstream"
    } else {
        "unknown"
    };
    let forwarded = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "forwarded")])
        .await?;
    anyhow::ensure!(
        forwarded as usize == sent,
        "{shape}: {forwarded} decisions for {sent} requests"
    );
    let (expected, other) = if reports_served {
        ("reported", "assumed")
    } else {
        ("assumed", "reported")
    };
    let upstream = stack
        .kvroute_metric(
            "kvroute_responses_total",
            &[("origin", origin), ("served", expected)],
        )
        .await?;
    let wrong = stack
        .kvroute_metric("kvroute_responses_total", &[("served", other)])
        .await?;
    anyhow::ensure!(
        upstream as usize == sent && wrong == 0.0,
        "{shape}: {upstream} responses origin={origin} served={expected}, {wrong} \
         served={other}, for {sent} requests"
    );
    Ok(())
}

/// An engine killed under load: kvroute ejects it within its health-check window and no
/// other engine is excluded; afterwards every request is served.
async fn worker_killed_under_load(stack: &mut Stack, shape: &str) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let load = chat_load(stack, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill_sim(3);
    let victim = stack.sims()[3].addr.to_string();
    let killed = Instant::now();
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().any(|w| {
                w["address"].as_str().is_some_and(|a| a.ends_with(&victim)) && w["healthy"] == false
            })
        })
        .await?;
    let ejected_after = killed.elapsed();
    // Requests already routed to the dead engine finish failing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let during = collect(load).await?;
    // After ejection, a fresh load loses nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let load = chat_load(stack, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let after = collect(load).await?;
    println!(
        "{shape}: engine ejected after {ejected_after:?}; {} requests around the kill, {} \
         failed; {} after ejection, {} failed",
        during.len(),
        failed(&during).len(),
        after.len(),
        failed(&after).len()
    );
    anyhow::ensure!(!after.is_empty(), "{shape}: no requests after ejection");
    anyhow::ensure!(
        failed(&after).is_empty(),
        "{shape}: failures after ejection: {:?}",
        failed(&after)
    );
    let workers = stack
        .wait_workers(Duration::from_secs(5), |ws| ws.len() == 4)
        .await?;
    let healthy = workers.iter().filter(|w| w["healthy"] == true).count();
    anyhow::ensure!(
        healthy == 3,
        "{shape}: {healthy} healthy workers, expected 3"
    );
    for i in 0..12 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &kvroute_e2e::openai::chat_body(MODEL, &format!("after the kill {i}"), false, 2),
            )
            .await?;
        anyhow::ensure!(
            resp.status() == 200,
            "{shape}: request {i}: {}",
            resp.status()
        );
        anyhow::ensure!(
            sim_id(&resp) != "sim-3",
            "{shape}: routed to the dead engine"
        );
    }
    let own_5xx = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "5xx")])
        .await?;
    anyhow::ensure!(own_5xx == 0.0, "{shape}: kvroute answered 5xx itself");
    Ok(())
}

/// The picker gone: answers come at once (never a hang) and are what the gateway's failure
/// mode promises (see [`PickerDown`]).
async fn picker_down(stack: &mut Stack, shape: &str, mode: PickerDown) -> anyhow::Result<()> {
    stack.kill_kvroute();
    let client = stack.client().clone();
    let body = kvroute_e2e::openai::chat_body(MODEL, "is anyone there", false, 2);
    let open_status = match mode {
        PickerDown::FailOpen => 200,
        PickerDown::FailClosed => 500,
    };
    for i in 0..4 {
        let chat = client
            .post(stack.gateway_url("/v1/chat/completions"))
            .json(&body);
        let models = client.get(stack.gateway_url("/v1/models"));
        for (what, request, expected) in
            [("chat", chat, 500), ("GET /v1/models", models, open_status)]
        {
            let resp = tokio::time::timeout(Duration::from_secs(10), request.send())
                .await
                .map_err(|_| anyhow::anyhow!("{shape}: {what} {i} hung with the picker down"))??;
            let status = resp.status().as_u16();
            anyhow::ensure!(
                status == expected,
                "{shape}: {what} {i} with the picker down answered {status}, expected {expected}"
            );
        }
    }
    Ok(())
}

async fn shape_on_defaults(shape: &str, reports: Reports, down: PickerDown) -> anyhow::Result<()> {
    let mut stack = Stack::builder(&format!("gateway_shape_{shape}"))
        .gateway(shape)
        .start()
        .await?;
    let sent = cache_affinity(&stack, shape).await?;
    responses_accounted(&stack, shape, sent, reports).await?;
    worker_killed_under_load(&mut stack, shape).await?;
    // The gateway's own fallback balancing knows nothing of dead engines: restart it first.
    stack.restart_sim(3).await?;
    picker_down(&mut stack, shape, down).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_shape_works_on_defaults() -> anyhow::Result<()> {
    shape_on_defaults(
        "envoy-gateway",
        Reports {
            served: false,
            upstream_timing: true,
        },
        PickerDown::FailClosed,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gie_test_envoy_shape_works_on_defaults() -> anyhow::Result<()> {
    shape_on_defaults(
        "gie-test-envoy",
        Reports {
            served: false,
            upstream_timing: false,
        },
        PickerDown::FailClosed,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_shape_works_on_defaults() -> anyhow::Result<()> {
    shape_on_defaults(
        "istio",
        Reports {
            served: true,
            upstream_timing: true,
        },
        PickerDown::FailOpen,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kgateway_shape_works_on_defaults() -> anyhow::Result<()> {
    shape_on_defaults(
        "kgateway",
        Reports {
            served: false,
            upstream_timing: true,
        },
        PickerDown::FailOpen,
    )
    .await
}
