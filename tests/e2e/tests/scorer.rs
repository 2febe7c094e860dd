//! The `scorer` policy through the real Envoy: engine load scraped from the simulators' real
//! `/metrics`, and prefix groups kept on one engine each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kvroute_e2e::openai::{cached_tokens, chat_with_system, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::Value;

const GROUPS: usize = 4;
const PER_GROUP: usize = 5;

fn system_prompt(group: usize) -> String {
    (0..40)
        .map(|i| format!("Group {group} rule {i}: answer as librarian {group}. "))
        .collect()
}

/// Waits until kvroute lists a scraped load report for every engine.
async fn wait_for_load(stack: &Stack) -> anyhow::Result<Vec<Value>> {
    for _ in 0..100 {
        let workers = stack.workers().await?;
        if !workers.is_empty() && workers.iter().all(|w| w["load"].is_object()) {
            return Ok(workers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no scraped load after 10 s: {:?}", stack.workers().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_sees_engine_load_and_keeps_prefix_groups_together() -> anyhow::Result<()> {
    let stack = Stack::builder("scorer_sees_engine_load_and_keeps_prefix_groups_together")
        .policy("scorer")
        .start()
        .await?;
    let workers = wait_for_load(&stack).await?;
    for w in &workers {
        let usage = w["load"]["kv_cache_usage"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&usage), "{w}");
        assert!(w["load"]["waiting"].is_u64(), "{w}");
    }

    let mut engines: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut repeats_without_hit = Vec::new();
    for round in 0..PER_GROUP {
        for slot in 0..GROUPS {
            let group = (slot + round) % GROUPS;
            let body = chat_with_system(
                MODEL,
                &system_prompt(group),
                &format!("Question {round} of group {group}?"),
                false,
                4,
            );
            let resp = stack.post("/v1/chat/completions", &body).await?;
            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
            let engine = sim_id(&resp);
            let json: Value = resp.json().await?;
            if round > 0 && cached_tokens(&json) == 0 {
                repeats_without_hit.push((group, round, engine.clone()));
            }
            engines.entry(group).or_default().push(engine);
        }
    }
    for (group, list) in &engines {
        let distinct: BTreeSet<&String> = list.iter().collect();
        assert_eq!(distinct.len(), 1, "group {group} moved: {list:?}");
    }
    assert!(
        repeats_without_hit.is_empty(),
        "repeats without a cache hit: {repeats_without_hit:?}"
    );
    let ok = stack
        .kvroute_metric("kvroute_scrapes_total", &[("outcome", "ok")])
        .await?;
    assert!(ok >= 1.0, "no successful scrape counted");
    Ok(())
}
