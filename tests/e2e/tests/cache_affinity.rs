//! Shared prompt prefixes converge on one engine with `cache_aware`; round robin spreads them.

use std::collections::{BTreeMap, BTreeSet};

use kvroute_e2e::openai::{cached_tokens, chat_with_system, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::Value;

const GROUPS: usize = 4;
const PER_GROUP: usize = 6;

/// What one request of the workload saw.
struct Served {
    group: usize,
    engine: String,
    cached: u64,
}

/// A long system prompt unique to `group` (~1,600 characters, ~400 tokens).
fn system_prompt(group: usize) -> String {
    (0..40)
        .map(|i| format!("Group {group} rule {i}: answer in the voice of tutor {group}. "))
        .collect()
}

/// 4 groups x 6 requests, non-streamed, interleaved with the group order rotated each
/// round (so a plain rotation cannot pin a group to one engine by accident).
async fn run_workload(stack: &Stack) -> anyhow::Result<Vec<Served>> {
    let mut served = Vec::new();
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
            served.push(Served {
                group,
                engine,
                cached: cached_tokens(&json),
            });
        }
    }
    Ok(served)
}

fn engines_by_group(served: &[Served]) -> BTreeMap<usize, Vec<&str>> {
    let mut map: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for s in served {
        map.entry(s.group).or_default().push(&s.engine);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aware_keeps_each_prefix_group_on_one_engine() -> anyhow::Result<()> {
    let stack = Stack::builder("cache_aware_keeps_each_prefix_group_on_one_engine")
        .policy("cache_aware")
        .start()
        .await?;
    let served = run_workload(&stack).await?;
    for (group, engines) in engines_by_group(&served) {
        let first = engines[0];
        assert!(
            engines.iter().all(|e| *e == first),
            "group {group} moved between engines: {engines:?}"
        );
    }
    let mut seen = BTreeSet::new();
    for s in &served {
        if !seen.insert(s.group) {
            assert!(
                s.cached > 0,
                "repeat of group {} on {} had no cache hit",
                s.group,
                s.engine
            );
        }
    }
    let used: BTreeSet<&str> = served.iter().map(|s| s.engine.as_str()).collect();
    println!(
        "cache_aware: {} engines used by {GROUPS} groups",
        used.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_prefix_groups() -> anyhow::Result<()> {
    let stack = Stack::builder("round_robin_spreads_prefix_groups")
        .policy("round_robin")
        .start()
        .await?;
    let served = run_workload(&stack).await?;
    for (group, engines) in engines_by_group(&served) {
        let distinct: BTreeSet<&str> = engines.iter().copied().collect();
        assert!(
            distinct.len() >= 2,
            "round robin kept group {group} on {distinct:?}"
        );
    }
    let used: BTreeSet<&str> = served.iter().map(|s| s.engine.as_str()).collect();
    assert_eq!(used.len(), stack.sims().len(), "every engine gets work");
    let repeats_hit = served.iter().filter(|s| s.cached > 0).count();
    println!(
        "round_robin: {repeats_hit} of {} requests hit a cache",
        served.len()
    );
    Ok(())
}
