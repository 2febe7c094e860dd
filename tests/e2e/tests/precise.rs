//! `precise_prefix` through the real Envoy: engines publish their KV-cache events over ZMQ,
//! kvroute subscribes, tokenizes prompts with the same tokenizer and chat template, and routes
//! to the engine that really holds the prompt's blocks, following them when that engine
//! drops its cache and another one takes them.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use kvroute_e2e::openai::{cached_tokens, chat_with_system, sim_id};
use kvroute_e2e::{MODEL, Sim, Stack, paths};
use serde_json::{Value, json};

const APPLIED: &str = "kvroute_kv_event_batches_total";
/// Generous: debug binaries on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// A long system prompt (~500 tokens).
fn document() -> String {
    (0..40)
        .map(|i| format!("Clause {i}: the tenant keeps the premises clean and quiet. "))
        .collect()
}

/// Batches kvroute applied from `sim`'s events.
async fn applied(stack: &Stack, sim: &Sim) -> anyhow::Result<f64> {
    let worker = sim.addr.to_string();
    stack
        .kvroute_metric(APPLIED, &[("worker", &worker), ("outcome", "applied")])
        .await
}

/// Sends `body` straight to `sim` (bypassing the gateway).
async fn direct(stack: &Stack, sim: &Sim, path: &str, body: &Value) -> anyhow::Result<()> {
    let resp = stack
        .client()
        .post(format!("{}{path}", sim.url()))
        .json(body)
        .send()
        .await?;
    ensure!(resp.status().is_success(), "{path}: {}", resp.status());
    Ok(())
}

/// Waits until kvroute applied more than `before` batches of `sim`'s events.
async fn wait_applied(stack: &Stack, sim: &Sim, before: f64) -> anyhow::Result<()> {
    let start = Instant::now();
    while applied(stack, sim).await? <= before {
        ensure!(start.elapsed() < WAIT, "no kv events of {} applied", sim.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Routes `n` questions over the document through the gateway; returns the engines.
async fn ask(
    stack: &Stack,
    doc: &str,
    round: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for i in 0..n {
        let body = chat_with_system(MODEL, doc, &format!("{round} question {i}?"), false, 4);
        let resp = stack.post("/v1/chat/completions", &body).await?;
        ensure!(resp.status() == 200, "status {}", resp.status());
        let engine = sim_id(&resp);
        let json: Value = resp.json().await?;
        out.push((engine, cached_tokens(&json)));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precise_prefix_follows_the_engine_that_holds_the_blocks() -> anyhow::Result<()> {
    let tokenizer = paths::tokenizer_dir()?;
    let tok = tokenizer.display().to_string();
    let stack = Stack::builder("precise_prefix_follows_the_engine_that_holds_the_blocks")
        .engines(3)
        .policy("precise_prefix")
        .all_sim_args(&[
            "--kv-events-endpoint",
            "tcp://127.0.0.1:0",
            "--kv-events-replay-endpoint",
            "tcp://127.0.0.1:0",
            "--tokenizer",
            &tok,
        ])
        .kvroute_config(&format!(
            "kv_events:\n  enabled: true\n  endpoint: ''\ntokenizer:\n  path: {tok}\n"
        ))
        .start()
        .await?;

    // Tell kvroute where each engine publishes (per-worker labels, through the admin API).
    for sim in stack.sims() {
        let body = json!({
            "address": sim.addr.to_string(),
            "labels": {
                "kv_events_endpoint": sim.kv_events.clone().context("no kv_events endpoint")?,
                "kv_events_replay_endpoint": sim.kv_replay.clone().context("no replay endpoint")?,
            },
        });
        let resp = stack
            .client()
            .post(stack.kvroute_admin_url("/workers"))
            .json(&body)
            .send()
            .await?;
        ensure!(resp.status().is_success(), "admin: {}", resp.status());
    }
    // Each subscription is live once an event published after it reached kvroute.
    for (i, sim) in stack.sims().iter().enumerate() {
        let start = Instant::now();
        let mut n = 0;
        while applied(&stack, sim).await? == 0.0 {
            ensure!(
                start.elapsed() < WAIT,
                "{} events never reached kvroute",
                sim.id
            );
            let probe = format!("Probe {i}.{n}: ").repeat(20);
            direct(
                &stack,
                sim,
                "/v1/chat/completions",
                &chat_with_system(MODEL, &probe, "hi", false, 1),
            )
            .await?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    let doc = document();
    let [_, first, second] = stack.sims() else {
        anyhow::bail!("expected three engines");
    };
    // Only `first` holds the document: every question goes there and hits its cache.
    let before = applied(&stack, first).await?;
    direct(
        &stack,
        first,
        "/v1/chat/completions",
        &chat_with_system(MODEL, &doc, "warm-up", false, 1),
    )
    .await?;
    wait_applied(&stack, first, before).await?;
    for (engine, cached) in ask(&stack, &doc, "first", 5).await? {
        ensure!(
            engine == first.id,
            "routed to {engine}, the blocks are on {}",
            first.id
        );
        ensure!(cached > 0, "no cache hit on {engine}");
    }

    // `first` drops its cache and `second` computes the document: the questions follow.
    let before = applied(&stack, first).await?;
    direct(&stack, first, "/reset_prefix_cache", &json!({})).await?;
    wait_applied(&stack, first, before).await?;
    let before = applied(&stack, second).await?;
    direct(
        &stack,
        second,
        "/v1/chat/completions",
        &chat_with_system(MODEL, &doc, "warm-up", false, 1),
    )
    .await?;
    wait_applied(&stack, second, before).await?;
    for (engine, cached) in ask(&stack, &doc, "second", 5).await? {
        ensure!(
            engine == second.id,
            "routed to {engine}, the blocks are on {}",
            second.id
        );
        ensure!(cached > 0, "no cache hit on {engine}");
    }
    Ok(())
}
