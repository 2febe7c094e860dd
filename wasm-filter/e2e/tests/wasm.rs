//! The real Envoy loading the kvroute proxy-wasm module, in front of simulated engines.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use kvroute_e2e::openai::DESTINATION_HEADER as DEST;
use kvroute_e2e::paths::free_port;
use kvroute_wasm_e2e::workload::{hit_rate, oracle, touch_every_worker_thread};
use kvroute_wasm_e2e::{
    Envoy, EnvoyOptions, MODEL, addresses, chat_body, completion_body, http_client, log_dir, post,
    start_envoy, start_envoy_expecting_failure, start_sims,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_chat_and_completions_streamed_and_not() -> anyhow::Result<()> {
    let dir = log_dir("routes")?;
    let sims = start_sims(2, &dir).await?;
    let envoy = start_envoy(&EnvoyOptions::new(addresses(&sims)), &dir).await?;
    let c = http_client(false)?;
    let ids: HashSet<String> = sims.iter().map(|s| s.id.clone()).collect();
    let chat = format!("{}/v1/chat/completions", envoy.url());
    let completions = format!("{}/v1/completions", envoy.url());
    let cases = [
        (&chat, chat_body(MODEL, "be brief", "hello", false), false),
        (&chat, chat_body(MODEL, "be brief", "hello", true), true),
        (
            &completions,
            completion_body(MODEL, "once upon", false),
            false,
        ),
        (
            &completions,
            completion_body(MODEL, "once upon", true),
            true,
        ),
    ];
    for (url, body, stream) in &cases {
        let r = post(&c, url, body.to_string(), &[]).await?;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let engine = r.engine.clone().context("no engine header")?;
        assert!(ids.contains(&engine), "served by unknown engine {engine}");
        if *stream {
            assert!(r.body.contains("data: [DONE]"), "{}", r.body);
        } else {
            assert!(r.json()["choices"].is_array(), "{}", r.body);
        }
    }
    assert_eq!(envoy.stat("kvroute_decisions_total").await?, 4);
    assert_eq!(envoy.wait_stat("kvroute_released_total", 4, WAIT).await?, 4);
    assert_eq!(envoy.wait_stat("kvroute_in_flight", 0, WAIT).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_json_local_replies() -> anyhow::Result<()> {
    let dir = log_dir("errors")?;
    let sims = start_sims(1, &dir).await?;
    let mut opts = EnvoyOptions::new(addresses(&sims));
    opts.gateway = Some(json!({"max_body_bytes": 4096}));
    let envoy = start_envoy(&opts, &dir).await?;
    let c = http_client(false)?;
    let chat = format!("{}/v1/chat/completions", envoy.url());
    let big = completion_body(MODEL, &"x".repeat(8192), false).to_string();
    let cases: [(String, u16, &str); 5] = [
        ("{not json".into(), 400, ""),
        (json!({"model": MODEL}).to_string(), 400, ""),
        (String::new(), 400, ""),
        (
            chat_body("no-such-model", "s", "q", false).to_string(),
            404,
            "model_not_found",
        ),
        (big, 413, ""),
    ];
    for (body, status, code) in cases {
        let r = post(&c, &chat, body.clone(), &[]).await?;
        assert_eq!(r.status, status, "body {body:.40}: {}", r.body);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(r.engine.is_none(), "an error reached an engine");
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{}", r.body);
        if !code.is_empty() {
            assert_eq!(v["error"]["code"], code);
        }
    }
    assert_eq!(envoy.stat("kvroute_local_replies_total").await?, 5);
    assert_eq!(envoy.stat("kvroute_decisions_total").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_429_and_retry_after() -> anyhow::Result<()> {
    let dir = log_dir("overload")?;
    let sims = start_sims(1, &dir).await?;
    let mut opts = EnvoyOptions::new(addresses(&sims));
    opts.router = Some(json!({"policy": {"name": "least_request"}, "max_in_flight_per_worker": 1}));
    let envoy = start_envoy(&opts, &dir).await?;
    let c = http_client(false)?;
    let chat = format!("{}/v1/chat/completions", envoy.url());
    let mut long = chat_body(MODEL, "s", "tell a long story", true);
    long["max_tokens"] = json!(20000);
    let resp = c
        .post(&chat)
        .header("content-type", "application/json")
        .body(long.to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.context("no first chunk")??;
    let r = post(
        &c,
        &chat,
        chat_body(MODEL, "s", "q", false).to_string(),
        &[],
    )
    .await?;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(r.json()["error"]["code"], "too_many_requests");
    drop(stream);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_models_locally() -> anyhow::Result<()> {
    let dir = log_dir("models")?;
    let sims = start_sims(1, &dir).await?;
    let envoy = start_envoy(&EnvoyOptions::new(addresses(&sims)), &dir).await?;
    let resp = http_client(false)?
        .get(format!("{}/v1/models", envoy.url()))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-kvroute-sim-id").is_none());
    let v: serde_json::Value = resp.json().await?;
    assert_eq!(v["data"][0]["id"], MODEL);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_destination_header_is_ignored() -> anyhow::Result<()> {
    let dir = log_dir("spoof")?;
    let sims = start_sims(3, &dir).await?;
    // engine-2 is a cluster endpoint but not a worker: only a client header could reach it.
    let mut opts = EnvoyOptions::new(addresses(&sims[..2]));
    opts.extra_endpoints = vec![sims[2].addr.to_string()];
    let envoy = start_envoy(&opts, &dir).await?;
    let c = http_client(false)?;
    for i in 0..12 {
        let body = completion_body(MODEL, &format!("prompt {i}"), false).to_string();
        let r = post(
            &c,
            &format!("{}/v1/completions", envoy.url()),
            body,
            &[(DEST, &sims[2].addr.to_string())],
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_ne!(
            r.engine.as_deref(),
            Some("engine-2"),
            "the client chose the engine"
        );
        let r = http_client(false)?
            .get(format!("{}/health", envoy.url()))
            .header(DEST, &sims[2].addr.to_string())
            .send()
            .await?;
        let engine = r
            .headers()
            .get("x-kvroute-sim-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_ne!(
            engine.as_deref(),
            Some("engine-2"),
            "the client chose the engine"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_engine_is_skipped_through_the_fallback_list() -> anyhow::Result<()> {
    let dir = log_dir("dead")?;
    let sims = start_sims(2, &dir).await?;
    let dead = format!("127.0.0.1:{}", free_port()?);
    let mut workers = addresses(&sims);
    workers.insert(0, dead);
    let mut opts = EnvoyOptions::new(workers);
    opts.router = Some(json!({"policy": {"name": "round_robin"}, "max_endpoints": 3}));
    let envoy = start_envoy(&opts, &dir).await?;
    let c = http_client(false)?;
    for i in 0..12 {
        let body = chat_body(MODEL, "s", &format!("question {i}"), i % 2 == 0).to_string();
        let r = post(
            &c,
            &format!("{}/v1/chat/completions", envoy.url()),
            body,
            &[],
        )
        .await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert!(r.engine.is_some());
    }
    // The dead endpoint was really tried first for some requests, and the retry moved on.
    assert!(
        envoy
            .stat("cluster.engines.upstream_cx_connect_fail")
            .await?
            > 0
    );
    assert_eq!(envoy.wait_stat("kvroute_in_flight", 0, WAIT).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_engine_is_avoided_then_used_again() -> anyhow::Result<()> {
    // The filter feeds the core's circuit breaker from the response headers, as the ext_proc
    // service does: two 5xx in a row open the failing engine's circuit, a success after the
    // cooldown closes it.
    let dir = log_dir("failing")?;
    let sims = start_sims(2, &dir).await?;
    let mut opts = EnvoyOptions::new(addresses(&sims));
    opts.router = Some(json!({
        "policy": {"name": "round_robin"},
        "circuit": {"consecutive_failures": 2, "cooldown_ms": 500},
    }));
    let envoy = start_envoy(&opts, &dir).await?;
    let c = http_client(false)?;
    let chat = format!("{}/v1/chat/completions", envoy.url());
    let ask = |i: usize| chat_body(MODEL, "s", &format!("question {i}"), false).to_string();
    let fault = format!("{}/sim/fault", sims[0].url());
    let r = c.post(&fault).body(r#"{"status": 500}"#).send().await?;
    assert!(r.status().is_success(), "fault not set: {}", r.status());

    let mut failures = 0;
    for i in 0..6 {
        let r = post(&c, &chat, ask(i), &[]).await?;
        failures += usize::from(r.status == 500);
    }
    assert_eq!(failures, 2, "the circuit opened after two failures");
    for i in 6..16 {
        let r = post(&c, &chat, ask(i), &[]).await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.engine.as_deref(), Some(sims[1].id.as_str()));
    }

    c.delete(&fault).send().await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut back = false;
    for i in 16..24 {
        let r = post(&c, &chat, ask(i), &[]).await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        back |= r.engine.as_deref() == Some(sims[0].id.as_str());
    }
    assert!(
        back,
        "the recovered engine got no request after the cooldown"
    );
    assert_eq!(envoy.wait_stat("kvroute_in_flight", 0, WAIT).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_is_released_at_stream_end_and_on_reset() -> anyhow::Result<()> {
    let dir = log_dir("release")?;
    let sims = start_sims(2, &dir).await?;
    let envoy = start_envoy(&EnvoyOptions::new(addresses(&sims)), &dir).await?;
    let c = http_client(false)?;
    let chat = format!("{}/v1/chat/completions", envoy.url());
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut body = chat_body(MODEL, "s", &format!("long story {i}"), true);
        body["max_tokens"] = json!(20000);
        let resp = c
            .post(&chat)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        let mut s = resp.bytes_stream();
        s.next().await.context("no first chunk")??;
        streams.push(s);
    }
    assert_eq!(envoy.stat("kvroute_in_flight").await?, 4);
    // Client resets: the streams are dropped mid-response.
    streams.clear();
    assert_eq!(envoy.wait_stat("kvroute_in_flight", 0, WAIT).await?, 0);
    assert_eq!(envoy.stat("kvroute_released_total").await?, 4);
    // Normal completions release too, exactly once each.
    for i in 0..3 {
        let r = post(
            &c,
            &chat,
            chat_body(MODEL, "s", &format!("q{i}"), i == 1).to_string(),
            &[],
        )
        .await?;
        assert_eq!(r.status, 200);
    }
    assert_eq!(envoy.wait_stat("kvroute_released_total", 7, WAIT).await?, 7);
    assert_eq!(envoy.stat("kvroute_in_flight").await?, 0);
    assert_eq!(envoy.stat("kvroute_decisions_total").await?, 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_configuration_refuses_to_load() -> anyhow::Result<()> {
    let dir = log_dir("invalid-config")?;
    let mut opts = EnvoyOptions::new(vec!["127.0.0.1:9".into()]);
    opts.raw_plugin_config = Some(r#"{"workers": [{"address": "not-an-address"}]}"#.into());
    let log = start_envoy_expecting_failure(&opts, &dir).await?;
    assert!(log.contains("kvroute: refusing to load"), "{log}");
    assert!(log.contains("not-an-address"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefixes_converge_across_envoy_worker_threads() -> anyhow::Result<()> {
    let dir = log_dir("converge")?;
    let sims = start_sims(3, &dir).await?;
    let (groups, per_group) = (8, 8);
    let oracle = oracle(per_group);
    let mut rates = Vec::new();
    for concurrency in [1, 4] {
        let mut opts = EnvoyOptions::new(addresses(&sims));
        opts.concurrency = concurrency;
        let envoy = start_envoy(&opts, &dir).await?;
        touch_every_worker_thread(&envoy.url(), 48).await?;
        let rate = hit_rate(&envoy.url(), MODEL, groups, per_group).await?;
        if concurrency > 1 {
            assert!(envoy.stat("kvroute_events_applied_total").await? > 0);
        }
        eprintln!("concurrency {concurrency}: hit rate {rate:.3} (oracle {oracle:.3})");
        rates.push(rate);
    }
    // Requests are sequential, so each decision has reached every VM before the next request:
    // every VM follows the same index. Allow a few misses for a noisy machine; without
    // sharing, 4 VMs place most groups on two or three engines (about 0.6 here).
    let slack = 2.0 / (groups * per_group) as f64;
    assert!(rates[0] >= oracle - slack, "concurrency 1: {rates:?}");
    assert!(
        rates[1] >= oracle - 2.0 * slack,
        "concurrency 4 fragments the cache: {rates:?}"
    );
    Ok(())
}

/// Sends requests until `want` serves `streak` in a row; fails after `WAIT`.
async fn wait_until_served_by(envoy: &Envoy, want: &str, streak: usize) -> anyhow::Result<()> {
    let c = http_client(false)?;
    let deadline = std::time::Instant::now() + WAIT;
    let mut run = 0;
    let mut i = 0;
    while run < streak {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "requests never settled on {want}"
        );
        i += 1;
        let body = completion_body(MODEL, &format!("probe {i}"), false).to_string();
        let r = post(&c, &format!("{}/v1/completions", envoy.url()), body, &[]).await?;
        assert_eq!(r.status, 200, "{}", r.body);
        run = if r.engine.as_deref() == Some(want) {
            run + 1
        } else {
            0
        };
        if run == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_list_follows_the_admin_api() -> anyhow::Result<()> {
    let dir = log_dir("discovery")?;
    let sims = start_sims(2, &dir).await?;
    let (a, b) = (&sims[0].addr.to_string(), &sims[1].addr.to_string());
    let entry = |address: &str, draining: bool| {
        json!({"address": address, "engine": "vllm", "models": [MODEL], "lora_adapters": [],
               "healthy": true, "draining": draining, "in_flight": 0})
    };
    let admin =
        kvroute_wasm_e2e::FakeAdmin::start(json!([entry(a, true), entry(b, false)])).await?;
    // The plugin starts with engine-0 only; engine-1 is a cluster endpoint it must learn.
    let mut opts = EnvoyOptions::new(vec![a.clone()]);
    opts.extra_endpoints = vec![b.clone()];
    opts.admin = Some((admin.address.clone(), 200));
    let envoy = start_envoy(&opts, &dir).await?;
    wait_until_served_by(&envoy, "engine-1", 8).await?;
    assert!(envoy.stat("kvroute_fleet_syncs_total").await? > 0);
    // engine-1 leaves the list, engine-0 stops draining.
    admin.set_workers(json!([entry(a, false)]));
    wait_until_served_by(&envoy, "engine-0", 8).await?;
    // An empty list is ignored: the last known workers keep serving.
    admin.set_workers(json!([]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    wait_until_served_by(&envoy, "engine-0", 4).await?;
    Ok(())
}
