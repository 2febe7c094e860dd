//! High availability with replicas that agree: two kvroute replicas (each with its own Envoy)
//! running `prefix_hash` over the same engines send every prompt to the same engine.

use std::collections::BTreeSet;
use std::time::Duration;

use kvroute_e2e::openai::{chat_with_system, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefix_hash_replicas_choose_the_same_engine_for_each_prompt() -> anyhow::Result<()> {
    let stack = Stack::builder("two_prefix_hash_replicas_choose_the_same_engine_for_each_prompt")
        .policy("prefix_hash")
        .start()
        .await?;
    let replica = stack.start_replica("b").await?;
    let engines = stack.sims().len();
    replica
        .wait_workers(Duration::from_secs(30), |ws| {
            ws.iter().filter(|w| w["healthy"] == true).count() == engines
        })
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !replica.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "replica never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut chosen = BTreeSet::new();
    for group in 0..16 {
        let system = format!(
            "You are assistant number {group}. {}",
            "Be brief. ".repeat(40)
        );
        for turn in 0..2 {
            let body: Value =
                chat_with_system(MODEL, &system, &format!("question {turn}"), false, 2);
            let a = stack.post("/v1/chat/completions", &body).await?;
            let b = replica.post("/v1/chat/completions", &body).await?;
            assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
            let (ea, eb) = (sim_id(&a), sim_id(&b));
            assert_eq!(ea, eb, "group {group} turn {turn}: replicas disagree");
            chosen.insert(ea);
            let _ = (a.bytes().await?, b.bytes().await?);
        }
    }
    // The prompts spread over the engines, so agreement is not a single-engine accident.
    assert!(chosen.len() >= 2, "{chosen:?}");
    Ok(())
}
