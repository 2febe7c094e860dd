//! kvroute's admin API changes routing through the whole gateway.

use std::collections::BTreeSet;
use std::time::Duration;

use kvroute_e2e::openai::{chat_body, sim_id};
use kvroute_e2e::{MODEL, Stack};
use serde_json::{Value, json};

/// Sends `n` chats; returns the engines that answered. Every request must succeed.
async fn serve(stack: &Stack, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let mut engines = BTreeSet::new();
    for i in 0..n {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("admin test {i}"), false, 2),
            )
            .await?;
        anyhow::ensure!(resp.status() == 200, "request {i}: {}", resp.status());
        engines.insert(sim_id(&resp));
        let _ = resp.bytes().await?;
    }
    Ok(engines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_remove_and_add_workers_through_the_gateway() -> anyhow::Result<()> {
    let stack = Stack::builder("drain_remove_and_add_workers_through_the_gateway")
        .with_outsider()
        .start()
        .await?;
    let client = stack.client();
    let [s0, s1, ..] = stack.sims() else {
        anyhow::bail!("need at least two engines");
    };

    let resp = client
        .post(stack.kvroute_admin_url(&format!("/workers/{}/drain", s0.addr)))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await?["draining"], true);
    let engines = serve(&stack, 12).await?;
    assert!(
        !engines.contains(&s0.id),
        "a draining engine got new requests: {engines:?}"
    );

    let resp = client
        .delete(stack.kvroute_admin_url(&format!("/workers/{}", s1.addr)))
        .send()
        .await?;
    assert!(resp.status().is_success(), "DELETE: {}", resp.status());
    let workers = stack.workers().await?;
    assert!(
        Stack::worker_entry(&workers, s1).is_none(),
        "removed worker still listed"
    );
    let engines = serve(&stack, 12).await?;
    assert!(
        !engines.contains(&s0.id) && !engines.contains(&s1.id),
        "{engines:?}"
    );
    assert_eq!(engines.len(), stack.sims().len() - 2);

    // A worker kvroute knows but Envoy's engines cluster does not: never dialled.
    let outsider = stack
        .outsider()
        .ok_or_else(|| anyhow::anyhow!("no outsider"))?;
    let resp = client
        .post(stack.kvroute_admin_url("/workers"))
        .json(&json!({ "address": outsider.addr.to_string() }))
        .send()
        .await?;
    assert!(
        resp.status().is_success(),
        "POST /workers: {}",
        resp.status()
    );
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            Stack::worker_entry(ws, outsider).is_some_and(|w| w["healthy"] == true)
        })
        .await?;
    let engines = serve(&stack, 12).await?;
    assert!(!engines.contains(&outsider.id), "{engines:?}");
    assert_eq!(
        stack
            .sim_metric(outsider, "vllm:prompt_tokens_total")
            .await?,
        0.0
    );
    Ok(())
}
