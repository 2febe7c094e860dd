//! `/metrics`: exact names and types per engine, and counters moving with traffic.

mod common;

use common::{client, fast_config, post_json, scrape, start};
use kvroute_sim::EngineKind;
use serde_json::json;

const VLLM_FAMILIES: &[(&str, &str)] = &[
    ("vllm:num_requests_running", "gauge"),
    ("vllm:num_requests_waiting", "gauge"),
    ("vllm:kv_cache_usage_perc", "gauge"),
    ("vllm:prefix_cache_queries_total", "counter"),
    ("vllm:prefix_cache_hits_total", "counter"),
    ("vllm:prompt_tokens_total", "counter"),
    ("vllm:generation_tokens_total", "counter"),
    ("vllm:request_success_total", "counter"),
    ("vllm:time_to_first_token_seconds", "histogram"),
    ("vllm:cache_config_info", "gauge"),
];

const SGLANG_FAMILIES: &[(&str, &str)] = &[
    ("sglang:num_running_reqs", "gauge"),
    ("sglang:num_queue_reqs", "gauge"),
    ("sglang:token_usage", "gauge"),
    ("sglang:cache_hit_rate", "gauge"),
    ("sglang:prompt_tokens_total", "counter"),
    ("sglang:generation_tokens_total", "counter"),
    ("sglang:cached_tokens_total", "counter"),
    ("sglang:num_requests_total", "counter"),
    ("sglang:time_to_first_token_seconds", "histogram"),
    ("sglang:cache_config_info", "gauge"),
];

#[tokio::test]
async fn vllm_metrics_names_types_and_counters() {
    let mut cfg = fast_config(EngineKind::Vllm);
    cfg.kv_blocks = 1000;
    let sim = start(cfg).await;
    let c = client();
    let before = scrape(&c, &sim.url()).await;
    for (name, kind) in VLLM_FAMILIES {
        assert_eq!(
            before.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    assert!(before.types.keys().all(|k| k.starts_with("vllm:")));
    let model = [("model_name", "sim-model")];
    assert_eq!(before.value("vllm:prompt_tokens_total", &model), Some(0.0));
    let info = before
        .samples
        .iter()
        .find(|s| s.name == "vllm:cache_config_info")
        .expect("cache config info");
    assert_eq!(info.labels["block_size"], "16");
    assert_eq!(info.labels["num_gpu_blocks"], "1000");
    assert_eq!(info.value, 1.0);

    let url = format!("{}/v1/completions", sim.url());
    let body = json!({"prompt": "z".repeat(640), "max_tokens": 3}); // 160 tokens, 10 blocks
    post_json(&c, &url, &body).await;
    post_json(&c, &url, &body).await;
    let after = scrape(&c, &sim.url()).await;
    assert_eq!(after.value("vllm:prompt_tokens_total", &model), Some(320.0));
    assert_eq!(
        after.value("vllm:generation_tokens_total", &model),
        Some(6.0)
    );
    assert_eq!(
        after.value("vllm:prefix_cache_queries_total", &model),
        Some(320.0)
    );
    assert_eq!(
        after.value("vllm:prefix_cache_hits_total", &model),
        Some(159.0),
        "second request hits all but the last token"
    );
    assert_eq!(
        after.value(
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        ),
        Some(2.0)
    );
    assert_eq!(
        after.value("vllm:time_to_first_token_seconds_count", &model),
        Some(2.0)
    );
    assert_eq!(
        after.value("vllm:time_to_first_token_seconds_bucket", &[("le", "+Inf")]),
        Some(2.0)
    );
    assert_eq!(after.value("vllm:num_requests_running", &model), Some(0.0));
    assert_eq!(after.value("vllm:kv_cache_usage_perc", &model), Some(0.0));
}

#[tokio::test]
async fn sglang_metrics_names_types_and_counters() {
    let sim = start(fast_config(EngineKind::Sglang)).await;
    let c = client();
    let before = scrape(&c, &sim.url()).await;
    for (name, kind) in SGLANG_FAMILIES {
        assert_eq!(
            before.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
    }
    let info = before
        .samples
        .iter()
        .find(|s| s.name == "sglang:cache_config_info")
        .expect("cache config info");
    assert_eq!(info.labels["page_size"], "16");
    assert_eq!(info.labels["num_pages"], "4096");

    let url = format!("{}/generate", sim.url());
    let body = json!({"text": "q".repeat(640), "sampling_params": {"max_new_tokens": 2}});
    post_json(&c, &url, &body).await;
    post_json(&c, &url, &body).await;
    let after = scrape(&c, &sim.url()).await;
    let model = [("model_name", "sim-model")];
    assert_eq!(
        after.value("sglang:prompt_tokens_total", &model),
        Some(320.0)
    );
    assert_eq!(
        after.value("sglang:cached_tokens_total", &model),
        Some(159.0)
    );
    assert_eq!(
        after.value("sglang:generation_tokens_total", &model),
        Some(4.0)
    );
    assert_eq!(after.value("sglang:num_requests_total", &model), Some(2.0));
    let rate = after.value("sglang:cache_hit_rate", &model).expect("rate");
    assert!((rate - 159.0 / 320.0).abs() < 1e-9);
    assert_eq!(
        after.value("sglang:time_to_first_token_seconds_count", &model),
        Some(2.0)
    );
}
