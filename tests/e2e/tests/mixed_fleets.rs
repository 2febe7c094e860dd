//! Mixed fleets through the real Envoy: vLLM and SGLang engines behind one gateway, with
//! kvroute rewriting each body into the chosen engine's dialect, and a server without
//! `/health` or `/metrics` (engine kind `other`) routed on kvroute's own knowledge.

use std::collections::{BTreeMap, BTreeSet};

use kvroute_e2e::openai::{chat_body, chat_with_system, completion_body, sim_id};
use kvroute_e2e::{BodyMode, EngineSpec, MODEL, Stack};
use serde_json::Value;

fn mixed() -> Vec<EngineSpec> {
    vec![
        EngineSpec::engine("vllm"),
        EngineSpec::engine("vllm"),
        EngineSpec::engine("sglang"),
        EngineSpec::engine("sglang"),
    ]
}

/// A completion vLLM rejects as sent (`stream_options` without streaming).
fn vllm_rejects() -> Value {
    let mut b = completion_body(MODEL, "Tell me about mixed fleets.", false, 4);
    b["stream_options"] = serde_json::json!({"include_usage": true});
    b
}

/// A chat request SGLang rejects as sent (a request-supplied `chat_template`).
fn sglang_rejects() -> Value {
    let mut b = chat_body(MODEL, "Tell me about chat templates.", false, 4);
    b["chat_template"] = Value::from("{% for m in messages %}{{ m.content }}{% endfor %}");
    b
}

/// Every request of both kinds succeeds, and each kind reaches every engine.
async fn check_every_engine_serves_both(stack: &Stack) -> anyhow::Result<()> {
    // The bodies really are rejected by the engine they are not normalized for.
    let direct = stack.client();
    let vllm = &stack.sims()[0];
    let sglang = &stack.sims()[2];
    let r = direct
        .post(format!("{}/v1/completions", vllm.url()))
        .json(&vllm_rejects())
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 400,
        "vLLM sim accepted stream_options: {}",
        r.status()
    );
    let r = direct
        .post(format!("{}/v1/chat/completions", sglang.url()))
        .json(&sglang_rejects())
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 400,
        "SGLang sim accepted chat_template: {}",
        r.status()
    );

    for (path, body) in [
        ("/v1/completions", vllm_rejects()),
        ("/v1/chat/completions", sglang_rejects()),
    ] {
        let mut engines = BTreeSet::new();
        for i in 0..12 {
            let resp = stack.post(path, &body).await?;
            let status = resp.status();
            let engine = sim_id(&resp);
            let text = resp.text().await?;
            anyhow::ensure!(
                status == 200,
                "{path} request {i} on {engine}: {status} {text}"
            );
            engines.insert(engine);
        }
        anyhow::ensure!(
            engines.len() == 4,
            "{path}: served by {engines:?}, expected all four engines"
        );
    }
    Ok(())
}

#[tokio::test]
async fn mixed_fleet_normalizes_bodies_full_duplex() -> anyhow::Result<()> {
    let stack = Stack::builder("mixed_fleet_normalizes_bodies_full_duplex")
        .engine_specs(mixed())
        .policy("round_robin")
        .start()
        .await?;
    check_every_engine_serves_both(&stack).await
}

#[tokio::test]
async fn mixed_fleet_normalizes_bodies_buffered() -> anyhow::Result<()> {
    let stack = Stack::builder("mixed_fleet_normalizes_bodies_buffered")
        .engine_specs(mixed())
        .policy("round_robin")
        .body_mode(BodyMode::Buffered)
        .start()
        .await?;
    check_every_engine_serves_both(&stack).await
}

/// A long system prompt unique to `group`.
fn system_prompt(group: usize) -> String {
    (0..30)
        .map(|i| format!("Group {group} rule {i}: keep answers short and kind. "))
        .collect()
}

#[tokio::test]
async fn engines_without_health_or_metrics_are_routed_as_other() -> anyhow::Result<()> {
    let stack = Stack::builder("engines_without_health_or_metrics_are_routed_as_other")
        .engine_specs(vec![EngineSpec::bare_other(), EngineSpec::bare_other()])
        .policy("cache_aware")
        .start()
        .await?;
    // Health-checked on /v1/models: both are healthy although /health is a 404.
    let workers = stack.workers().await?;
    anyhow::ensure!(
        workers
            .iter()
            .all(|w| w["healthy"] == true && w["engine"] == "other"),
        "{workers:?}"
    );
    let direct = stack
        .client()
        .get(format!("{}/health", stack.sims()[0].url()))
        .send()
        .await?;
    anyhow::ensure!(direct.status() == 404, "the sim serves /health");

    let mut by_group: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for round in 0..4 {
        for group in 0..2 {
            let body = chat_with_system(
                MODEL,
                &system_prompt(group),
                &format!("Question {round}?"),
                false,
                2,
            );
            let resp = stack.post("/v1/chat/completions", &body).await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            by_group.entry(group).or_default().insert(sim_id(&resp));
        }
    }
    // kvroute's own prefix knowledge keeps each shared prefix on one server.
    for (group, engines) in &by_group {
        anyhow::ensure!(engines.len() == 1, "group {group} spread over {engines:?}");
    }
    Ok(())
}
