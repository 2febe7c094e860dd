//! SGLang dialect: `/generate`, OpenAI routes, errors and auxiliary routes.

mod common;

use common::{client, fast_config, post_json, sse_events, start};
use kvroute_sim::EngineKind;
use serde_json::{Value, json};

fn sglang() -> kvroute_sim::SimConfig {
    let mut cfg = fast_config(EngineKind::Sglang);
    cfg.models = vec!["qwen".into()];
    cfg.context_length = 1000;
    cfg
}

#[tokio::test]
async fn generate_non_streamed_and_cached_tokens() {
    let sim = start(sglang()).await;
    let c = client();
    let url = format!("{}/generate", sim.url());
    let text = "abcd".repeat(40); // 160 bytes = 40 tokens, 2 full blocks of 64 bytes
    let body = json!({"text": text, "sampling_params": {"max_new_tokens": 4, "temperature": 0}});
    let (s, v) = post_json(&c, &url, &body).await;
    assert_eq!(s, 200);
    assert!(v["text"].is_string());
    let meta = &v["meta_info"];
    assert_eq!(meta["prompt_tokens"], 40);
    assert_eq!(meta["completion_tokens"], 4);
    assert_eq!(meta["cached_tokens"], 0);
    assert_eq!(meta["finish_reason"]["type"], "length");
    assert!(meta["id"].is_string());

    let (_, v) = post_json(&c, &url, &body).await;
    assert_eq!(
        v["meta_info"]["cached_tokens"], 32,
        "two 16-token blocks hit"
    );

    let (s, v) = post_json(
        &c,
        &url,
        &json!({"input_ids": (0..40).collect::<Vec<u32>>(), "sampling_params": {"max_new_tokens": 1}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["meta_info"]["prompt_tokens"], 40);
}

#[tokio::test]
async fn generate_stream_is_cumulative_sse() {
    let sim = start(sglang()).await;
    let r = client()
        .post(format!("{}/generate", sim.url()))
        .json(&json!({"text": "hello", "sampling_params": {"max_new_tokens": 3}, "stream": true}))
        .send()
        .await
        .expect("sent");
    let events = sse_events(r).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3], "[DONE]");
    let chunks: Vec<Value> = events[..3]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json"))
        .collect();
    let texts: Vec<&str> = chunks.iter().filter_map(|c| c["text"].as_str()).collect();
    assert!(texts[1].starts_with(texts[0]) && texts[2].starts_with(texts[1]));
    assert!(chunks[0]["meta_info"]["finish_reason"].is_null());
    assert_eq!(chunks[2]["meta_info"]["finish_reason"]["type"], "length");
    assert_eq!(chunks[2]["meta_info"]["completion_tokens"], 3);
}

#[tokio::test]
async fn openai_routes_and_errors() {
    let sim = start(sglang()).await;
    let c = client();
    let chat = format!("{}/v1/chat/completions", sim.url());
    let (s, v) = post_json(
        &c,
        &chat,
        &json!({"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                "regex": "a+", "rid": "ignored"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // SGLang accepts stream_options without stream (vLLM does not).
    let (s, _) = post_json(
        &c,
        &chat,
        &json!({"model": "qwen", "messages": [], "max_tokens": 1,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, 200);

    let (s, v) = post_json(
        &c,
        &chat,
        &json!({"model": "qwen", "messages": [], "chat_template": "{{x}}"}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["object"], "error");
    assert_eq!(v["code"], 400);

    let (s, _) = post_json(
        &c,
        &chat,
        &json!({"model": "qwen", "messages": [], "max_completion_tokens": 5000}),
    )
    .await;
    assert_eq!(s, 400, "beyond the 1000-token context");

    let (s, _) = post_json(&c, &chat, &json!({"model": "other", "messages": []})).await;
    assert_eq!(s, 404);

    let (s, v) = post_json(
        &c,
        &format!("{}/generate", sim.url()),
        &json!({"stream": false}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].is_string(), "{v}");

    let (s, _) = post_json(
        &c,
        &format!("{}/generate", sim.url()),
        &json!({"text": "x".repeat(5000)}),
    )
    .await;
    assert_eq!(s, 400, "prompt longer than the context");
}

#[tokio::test]
async fn info_health_and_flush() {
    let sim = start(sglang()).await;
    let c = client();
    for path in ["/health", "/health_generate"] {
        let r = c
            .get(format!("{}{path}", sim.url()))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let v: Value = c
        .get(format!("{}/model_info", sim.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["model_path"], "qwen");
    assert_eq!(v["is_generation"], true);
    let v: Value = c
        .get(format!("{}/server_info", sim.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["page_size"], 16);
    assert_eq!(v["context_length"], 1000);
    let v: Value = c
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(v["data"][0]["id"], "qwen");

    // Warm the cache, flush it, and check the prefix is gone.
    let url = format!("{}/generate", sim.url());
    let body = json!({"text": "y".repeat(200), "sampling_params": {"max_new_tokens": 1}});
    post_json(&c, &url, &body).await;
    let (_, v) = post_json(&c, &url, &body).await;
    assert!(
        v["meta_info"]["cached_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    let r = c
        .post(format!("{}/flush_cache", sim.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    let (_, v) = post_json(&c, &url, &body).await;
    assert_eq!(v["meta_info"]["cached_tokens"], 0);
}
