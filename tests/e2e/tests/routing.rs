//! Requests through Envoy + kvroute reach the engines, for every API shape and policy.

use std::time::Duration;

use kvroute_e2e::openai::{
    DESTINATION_HEADER, cached_tokens, chat_body, completion_body, read_sse, sim_id, sse_text,
};
use kvroute_e2e::{BodyMode, MODEL, Stack, http_client};
use serde_json::{Value, json};

/// Every policy name kvroute accepts.
const POLICIES: [&str; 9] = [
    "random",
    "round_robin",
    "power_of_two",
    "least_request",
    "cache_aware",
    "consistent_hash",
    "prefix_hash",
    "bucket",
    "manual",
];

fn engine_ids(stack: &Stack) -> Vec<String> {
    stack.sims().iter().map(|s| s.id.clone()).collect()
}

/// One non-streamed request; returns the engine that answered and the body.
async fn unary(
    stack: &Stack,
    client: &reqwest::Client,
    path: &str,
    body: &Value,
) -> anyhow::Result<(String, Value)> {
    let resp = client
        .post(stack.gateway_url(path))
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let id = sim_id(&resp);
    let json: Value = resp.json().await?;
    anyhow::ensure!(status == 200, "{path}: {status} {json}");
    Ok((id, json))
}

/// One streamed request; returns the engine that answered and the generated text.
async fn streamed(
    stack: &Stack,
    client: &reqwest::Client,
    path: &str,
    body: &Value,
) -> anyhow::Result<(String, String)> {
    let resp = client
        .post(stack.gateway_url(path))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "{path}: {}", resp.status());
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type}"
    );
    let id = sim_id(&resp);
    let events = read_sse(resp).await?;
    Ok((id, sse_text(&events)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_streamed_and_not() -> anyhow::Result<()> {
    let stack = Stack::builder("chat_and_completions_streamed_and_not")
        .start()
        .await?;
    let ids = engine_ids(&stack);
    let http2 = http_client(true)?;

    for client in [stack.client(), &http2] {
        let (id, body) = unary(
            &stack,
            client,
            "/v1/chat/completions",
            &chat_body(MODEL, "Say hello.", false, 6),
        )
        .await?;
        assert!(ids.contains(&id), "answered by {id:?}");
        assert_eq!(body["object"], "chat.completion");
        assert!(
            !body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        assert_eq!(body["usage"]["completion_tokens"], 6);

        let (id, body) = unary(
            &stack,
            client,
            "/v1/completions",
            &completion_body(MODEL, "Once upon a time", false, 5),
        )
        .await?;
        assert!(ids.contains(&id), "answered by {id:?}");
        assert_eq!(body["object"], "text_completion");
        assert!(
            !body["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }

    for client in [stack.client(), &http2] {
        let body = chat_body(MODEL, "Stream please.", true, 8);
        let (id, text) = streamed(&stack, client, "/v1/chat/completions", &body).await?;
        assert!(ids.contains(&id), "answered by {id:?}");
        assert!(!text.is_empty());
        let body = completion_body(MODEL, "Stream a story", true, 8);
        let (id, text) = streamed(&stack, client, "/v1/completions", &body).await?;
        assert!(ids.contains(&id), "answered by {id:?}");
        assert!(!text.is_empty());
    }

    let models: Value = stack
        .client()
        .get(stack.gateway_url("/v1/models"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let listed = models["data"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.iter().any(|m| m["id"] == MODEL),
        "GET /v1/models: {models}"
    );

    let forwarded = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "forwarded")])
        .await?;
    assert!(forwarded >= 8.0, "kvroute routed {forwarded} requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_routes_requests() -> anyhow::Result<()> {
    let mut stack = Stack::builder("every_policy_routes_requests")
        .start()
        .await?;
    let ids = engine_ids(&stack);
    for (i, policy) in POLICIES.into_iter().enumerate() {
        // Half by flag, half by config file.
        if i % 2 == 0 {
            stack.set_policy(policy).await?;
        } else {
            stack
                .set_config(&format!("router:\n  policy:\n    name: {policy}\n"))
                .await?;
        }
        // Envoy reconnects to the restarted kvroute; until then it fails open.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let prompt = format!("A question for the {policy} policy.");
            let (id, _) = unary(
                &stack,
                stack.client(),
                "/v1/chat/completions",
                &chat_body(MODEL, &prompt, false, 2),
            )
            .await?;
            assert!(ids.contains(&id), "{policy}: answered by {id:?}");
            let decided = stack
                .kvroute_metric(
                    "kvroute_decisions_total",
                    &[("policy", policy), ("outcome", "forwarded")],
                )
                .await?;
            if decided >= 1.0 {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "policy {policy}: kvroute never decided a request"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, text) = streamed(
            &stack,
            stack.client(),
            "/v1/chat/completions",
            &chat_body(MODEL, "And a stream.", true, 3),
        )
        .await?;
        assert!(!text.is_empty(), "{policy}: empty stream");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_json() -> anyhow::Result<()> {
    let mut stack = Stack::builder("errors_are_openai_json").start().await?;
    let url = stack.gateway_url("/v1/chat/completions");

    let resp = stack
        .client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"model\": \"sim-model\", \"messages\": [")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert!(
        sim_id(&resp).is_empty(),
        "a bad body must not reach an engine"
    );
    let body: Value = resp.json().await?;
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );

    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body("no-such-model", "hi", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 404);
    assert!(
        sim_id(&resp).is_empty(),
        "an unknown model must not reach an engine"
    );
    let body: Value = resp.json().await?;
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );

    // Every engine gone: first Envoy's own 503 (the picked engines refuse connections),
    // later kvroute's (no healthy worker). Both are OpenAI JSON.
    for i in 0..stack.sims().len() {
        stack.kill_sim(i);
    }
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body(MODEL, "anyone?", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await?;
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["healthy"] == false)
        })
        .await?;
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body(MODEL, "anyone?", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await?;
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );
    Ok(())
}

/// Sends `n` requests (chat and completions, streamed and not) with the destination header
/// set to `spoof`; each must be answered by a pool engine.
async fn send_spoofed(stack: &Stack, spoof: &str, n: usize) -> anyhow::Result<()> {
    let ids = engine_ids(stack);
    for i in 0..n {
        let (path, body) = if i % 2 == 0 {
            let body = chat_body(MODEL, &format!("spoof attempt {i}"), i % 4 == 0, 3);
            ("/v1/chat/completions", body)
        } else {
            (
                "/v1/completions",
                completion_body(MODEL, &format!("spoof attempt {i}"), false, 3),
            )
        };
        let resp = stack
            .client()
            .post(stack.gateway_url(path))
            .header(DESTINATION_HEADER, spoof)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == 200,
            "spoofed request {i}: {}",
            resp.status()
        );
        let id = sim_id(&resp);
        anyhow::ensure!(ids.contains(&id), "answered by {id:?}, not a pool engine");
        let _ = resp.bytes().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_destination_header_is_never_honoured() -> anyhow::Result<()> {
    let mut stack = Stack::builder("spoofed_destination_header_is_never_honoured")
        .with_outsider()
        .start()
        .await?;
    let outsider = stack
        .outsider()
        .ok_or_else(|| anyhow::anyhow!("no outsider"))?;
    let spoof = outsider.addr.to_string();
    send_spoofed(&stack, &spoof, 12).await?;

    // With kvroute down (fail-open) the header is still stripped before anything uses it.
    stack.kill_kvroute();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "Envoy never noticed kvroute is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_spoofed(&stack, &spoof, 6).await?;

    let outsider = stack
        .outsider()
        .ok_or_else(|| anyhow::anyhow!("no outsider"))?;
    assert_eq!(
        stack
            .sim_metric(outsider, "vllm:prompt_tokens_total")
            .await?,
        0.0
    );
    assert_eq!(
        stack
            .sim_metric(outsider, "vllm:request_success_total")
            .await?,
        0.0
    );

    // Envoy's access log (flushed every 100 ms) shows what went upstream: kvroute's list
    // while it ran, no destination header at all once it was gone, never the spoof.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let log = stack.envoy_log()?;
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("\"POST "))
            .map(str::to_string)
            .collect();
        if lines.len() >= 18 {
            break lines;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "access log has {} lines",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in &lines {
        assert!(
            !line.contains(&spoof),
            "spoofed address reached the router: {line}"
        );
    }
    let unrouted = lines
        .iter()
        .filter(|l| l.contains("picked=- dest_header=-"))
        .count();
    assert_eq!(
        unrouted, 6,
        "fail-open requests carry no destination: {lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompt_routes_within_buffer_limits() -> anyhow::Result<()> {
    let stack = Stack::builder("long_prompt_routes_within_buffer_limits")
        .policy("cache_aware")
        .start()
        .await?;
    let ids = engine_ids(&stack);
    // ~220 KB of varied text (a long document), as in the peers' overhead reports.
    let prompt: String = (0..4000)
        .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog. "))
        .collect();
    assert!(prompt.len() > 220_000);
    let body = chat_body(MODEL, &prompt, false, 4);
    let (first, _) = unary(&stack, stack.client(), "/v1/chat/completions", &body).await?;
    assert!(ids.contains(&first));
    let (second, json) = unary(&stack, stack.client(), "/v1/chat/completions", &body).await?;
    assert_eq!(first, second, "the same long prompt goes back to its cache");
    assert!(
        cached_tokens(&json) > 0,
        "repeat hits the prefix cache: {}",
        json["usage"]
    );
    let (_, text) = streamed(
        &stack,
        stack.client(),
        "/v1/chat/completions",
        &chat_body(MODEL, &prompt, true, 4),
    )
    .await?;
    assert!(!text.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_streamed_body_mode_routes() -> anyhow::Result<()> {
    body_mode_routes(
        "full_duplex_streamed_body_mode_routes",
        BodyMode::FullDuplexStreamed,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_mode_routes() -> anyhow::Result<()> {
    body_mode_routes("buffered_body_mode_routes", BodyMode::Buffered).await
}

/// Long and short prompts, streamed and not, and a bad body, through one body mode.
async fn body_mode_routes(test: &str, mode: BodyMode) -> anyhow::Result<()> {
    let stack = Stack::builder(test)
        .policy("cache_aware")
        .body_mode(mode)
        .start()
        .await?;
    let ids = engine_ids(&stack);
    // Larger than one 62,000-byte re-streamed chunk.
    let system: String = (0..2000)
        .map(|i| format!("rule {i}: be concise. "))
        .collect();
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        "max_tokens": 3,
    });
    let (first, json) = unary(&stack, stack.client(), "/v1/chat/completions", &body).await?;
    assert!(ids.contains(&first));
    assert!(
        json["usage"]["prompt_tokens"].as_u64() > Some(5_000),
        "whole body arrived: {}",
        json["usage"]
    );
    let (second, json) = unary(&stack, stack.client(), "/v1/chat/completions", &body).await?;
    assert_eq!(first, second);
    assert!(cached_tokens(&json) > 0);
    let (_, text) = streamed(
        &stack,
        stack.client(),
        "/v1/completions",
        &completion_body(MODEL, "duplex", true, 4),
    )
    .await?;
    assert!(!text.is_empty());
    let resp = stack
        .client()
        .post(stack.gateway_url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    Ok(())
}
