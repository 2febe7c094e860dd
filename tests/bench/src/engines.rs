//! Talking to the engines behind a target: metrics scraping, cache flushes, model discovery.

use anyhow::{Context, Result, bail};

use crate::client::endpoint_url;
use crate::prom::{EngineCounters, EngineKind, parse};

/// Scrapes `{engine}/metrics` and reads its cumulative counters.
pub async fn scrape(client: &reqwest::Client, engine: &str) -> Result<EngineCounters> {
    let url = format!("{}/metrics", engine.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    let text = resp
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(EngineCounters::from_samples(&parse(&text)))
}

/// Flushes the engine's prefix cache (vLLM `/reset_prefix_cache`, SGLang `/flush_cache`).
///
/// The family is detected from its metrics; when unknown, both endpoints are tried.
pub async fn flush(client: &reqwest::Client, engine: &str) -> Result<()> {
    let kinds = match scrape(client, engine).await.ok().and_then(|c| c.kind) {
        Some(kind) => vec![kind],
        None => vec![EngineKind::Vllm, EngineKind::Sglang],
    };
    let mut last = String::new();
    for kind in kinds {
        let url = format!("{}{}", engine.trim_end_matches('/'), kind.flush_path());
        match client.post(&url).send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => last = format!("POST {url}: HTTP {}", resp.status()),
            Err(e) => last = format!("POST {url}: {e}"),
        }
    }
    bail!("cannot flush the prefix cache of {engine}: {last}")
}

/// The first model id listed by `{base}/v1/models`.
pub async fn first_model(client: &reqwest::Client, base: &str) -> Result<String> {
    let url = endpoint_url(base, "models");
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    let json: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    json["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{url} lists no model; pass --model"))
}
