//! The shared-prefix workload used to measure cache locality through Envoy.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;

use crate::client::{chat_body, post};

/// A system prompt of about `len` bytes unique to `group`.
pub fn system_prompt(group: usize, len: usize) -> String {
    let mut s = format!("You are assistant number {group}. ");
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!(
            "Rule {group}.{i}: answer precisely and cite sources. "
        ));
        i += 1;
    }
    s
}

/// The best reachable hit rate of [`hit_rate`]: every request after a group's first.
pub fn oracle(per_group: usize) -> f64 {
    per_group.saturating_sub(1) as f64 / per_group.max(1) as f64
}

/// Sends `n` `GET /health` requests, each on a new connection, so every Envoy worker thread
/// has served a request (a VM joins the cross-VM state on its first request).
pub async fn touch_every_worker_thread(url: &str, n: usize) -> anyhow::Result<()> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    for _ in 0..n {
        let r = c.get(format!("{url}/health")).send().await?;
        anyhow::ensure!(r.status().is_success(), "GET /health: {}", r.status());
        r.bytes().await?;
    }
    Ok(())
}

/// Sends `per_group` rounds over `groups` groups (interleaved, one at a time, a new connection
/// per request so Envoy spreads them over its worker threads) and returns the share of
/// requests served by an engine that had already served their group's 4 KiB system prompt.
pub async fn hit_rate(
    url: &str,
    model: &str,
    groups: usize,
    per_group: usize,
) -> anyhow::Result<f64> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    let systems: Vec<String> = (0..groups).map(|g| system_prompt(g, 4096)).collect();
    let mut seen: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut hits = 0u32;
    for round in 0..per_group {
        for (g, system) in systems.iter().enumerate() {
            let body = chat_body(model, system, &format!("question {round}"), false).to_string();
            let r = post(&c, &format!("{url}/v1/chat/completions"), body, &[]).await?;
            anyhow::ensure!(r.status == 200, "status {}: {}", r.status, r.body);
            let engine = r.engine.context("no engine header")?;
            let served = seen.entry(g).or_default();
            if served.contains(&engine) {
                hits += 1;
            }
            served.insert(engine);
        }
    }
    Ok(f64::from(hits) / (groups * per_group) as f64)
}
