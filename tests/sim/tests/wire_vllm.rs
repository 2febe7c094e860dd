//! vLLM dialect: response shapes, SSE framing, errors and auxiliary routes.

mod common;

use common::{client, fast_config, post_json, sse_events, start};
use kvroute_sim::EngineKind;
use serde_json::{Value, json};

fn vllm() -> kvroute_sim::SimConfig {
    let mut cfg = fast_config(EngineKind::Vllm);
    cfg.models = vec!["m-a".into(), "m-b".into()];
    cfg.id = Some("engine-7".into());
    cfg
}

#[tokio::test]
async fn chat_non_streamed_shape_and_usage() {
    let sim = start(vllm()).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", sim.url());
    let body = json!({"model": "m-b", "messages": [{"role": "user", "content": "hello"}],
                      "max_completion_tokens": 5, "ignore_eos": true, "unknown_field": 1});
    let r = c.post(&url).json(&body).send().await.expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("x-kvroute-sim-id")
            .and_then(|v| v.to_str().ok()),
        Some("engine-7")
    );
    let v: Value = r.json().await.expect("json");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m-b");
    assert!(v["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().expect("content");
    assert_eq!(
        text.split(' ').count(),
        5,
        "five word-like tokens: {text:?}"
    );
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 5);
    let prompt = u["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt > 0);
    assert_eq!(u["total_tokens"].as_u64(), Some(prompt + 5));
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);

    // Deterministic text for the same prompt.
    let (_, again) = post_json(&c, &url, &body).await;
    assert_eq!(again["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn completion_non_streamed_defaults_to_16_tokens() {
    let sim = start(vllm()).await;
    let (status, v) = post_json(
        &client(),
        &format!("{}/v1/completions", sim.url()),
        &json!({"model": "m-a", "prompt": "once upon a time"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(
        v["usage"]["prompt_tokens"], 4,
        "16 chars at 4 chars per token"
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let sim = start(vllm()).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(
            &json!({"model": "m-a", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 3, "stream": true,
                      "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .expect("sent");
    assert!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    // role, 3 tokens, usage
    assert_eq!(chunks.len(), 5, "{events:?}");
    let id = chunks[0]["id"].clone();
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], id);
        assert_eq!(ch["model"], "m-a");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for (i, ch) in chunks[1..4].iter().enumerate() {
        let delta = &ch["choices"][0]["delta"];
        assert!(delta["content"].as_str().is_some_and(|s| !s.is_empty()));
        let finish = &ch["choices"][0]["finish_reason"];
        if i == 2 {
            assert_eq!(finish, "length");
        } else {
            assert!(finish.is_null());
        }
    }
    let usage = &chunks[4];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test]
async fn completion_stream_without_usage() {
    let sim = start(vllm()).await;
    let r = client()
        .post(format!("{}/v1/completions", sim.url()))
        .json(&json!({"model": "m-a", "prompt": [1, 2, 3, 4], "max_tokens": 2, "stream": true}))
        .send()
        .await
        .expect("sent");
    let events = sse_events(r).await;
    assert_eq!(events.len(), 3, "two tokens then [DONE]: {events:?}");
    let first: Value = serde_json::from_str(&events[0]).expect("json");
    assert_eq!(first["object"], "text_completion");
    assert!(first["choices"][0]["text"].is_string());
    assert!(first.get("usage").is_none());
    let last: Value = serde_json::from_str(&events[1]).expect("json");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(events[2], "[DONE]");
}

#[tokio::test]
async fn errors_are_formatted_like_vllm() {
    let mut cfg = vllm();
    cfg.context_length = 100;
    let sim = start(cfg).await;
    let c = client();
    let chat = format!("{}/v1/chat/completions", sim.url());
    let compl = format!("{}/v1/completions", sim.url());

    let r = c
        .post(&chat)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["object"], "error");
    assert_eq!(v["type"], "BadRequestError");
    assert_eq!(v["code"], 400);
    assert!(v["param"].is_null());

    let (s, v) = post_json(&c, &compl, &json!({"model": "nope", "prompt": "x"})).await;
    assert_eq!(s, 404);
    assert_eq!(v["message"], "The model `nope` does not exist.");
    assert_eq!(v["code"], 404);

    let (s, v) = post_json(
        &c,
        &compl,
        &json!({"model": "m-a", "prompt": "x", "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("stream=True"))
    );

    let (s, _) = post_json(
        &c,
        &compl,
        &json!({"model": "m-a", "prompt": "x", "stream": true, "prompt_logprobs": 1}),
    )
    .await;
    assert_eq!(s, 400);

    let (s, v) = post_json(
        &c,
        &compl,
        &json!({"model": "m-a", "prompt": "x".repeat(800)}),
    )
    .await;
    assert_eq!(s, 400, "200 tokens exceed a 100-token context");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("context length"))
    );

    let (s, _) = post_json(
        &c,
        &compl,
        &json!({"model": "m-a", "prompt": "x", "max_tokens": 500}),
    )
    .await;
    assert_eq!(s, 400);

    let (s, _) = post_json(&c, &chat, &json!({"model": "m-a"})).await;
    assert_eq!(s, 400, "messages are required");

    let (s, _) = post_json(
        &c,
        &compl,
        &json!({"model": "m-a", "prompt": "x", "max_tokens": 0}),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn models_health_and_reset() {
    let sim = start(vllm()).await;
    let c = client();
    let v: Value = c
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["m-a", "m-b"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "vllm");

    let r = c
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.expect("body").is_empty());

    let r = c
        .post(format!("{}/reset_prefix_cache", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .post(format!("{}/generate", sim.url()))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 404, "vLLM has no /generate");
}

#[tokio::test]
async fn health_delay_is_applied() {
    let mut cfg = vllm();
    cfg.health_delay_ms = 150;
    let sim = start(cfg).await;
    let t0 = std::time::Instant::now();
    let r = client()
        .get(format!("{}/health", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(150));
}
