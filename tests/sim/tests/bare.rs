//! `--no-health-metrics`: an engine that, like the llama.cpp server, serves neither `/health`
//! nor `/metrics` but answers the OpenAI routes.

mod common;

use common::{client, fast_config, post_json, start};
use kvroute_sim::EngineKind;
use serde_json::json;

#[tokio::test]
async fn bare_engine_has_no_health_or_metrics() {
    let mut cfg = fast_config(EngineKind::Vllm);
    cfg.no_health_metrics = true;
    let sim = start(cfg).await;
    let c = client();
    for path in ["/health", "/metrics"] {
        let r = c.get(format!("{}{path}", sim.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    let r = c
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = json!({"model": "sim-model", "prompt": "hello", "max_tokens": 2});
    let (status, v) = post_json(&c, &format!("{}/v1/completions", sim.url()), &body).await;
    assert_eq!(status, 200, "{v}");
}
