//! Measures the proxy-wasm filter with the real Envoy and simulated engines:
//! 1. prefix hit rate of a shared-prefix workload through Envoy + the kvroute ext_proc service
//!    (`cache_aware`) and through the filter at Envoy concurrency 1, 2 and 4, with and without
//!    cross-VM sharing; fresh engines for every run;
//! 2. latency added over plain Envoy at concurrency 1 (1 KiB prompts, interleaved requests).
//!
//! Needs the built module, `kvroute`, `kvroute-sim` and Envoy (see the e2e tests). Prints
//! Markdown. Usage: `kvroute-wasm-measure [hit-rate|latency|all] [latency pairs] [no-sharing]`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvroute_e2e::Stack;
use kvroute_wasm_e2e::workload::{hit_rate, oracle, touch_every_worker_thread};
use kvroute_wasm_e2e::{
    DEFAULT_TIME_SCALE, EnvoyOptions, MODEL, Sim, addresses, completion_body, log_dir, post,
    start_envoy,
};
use serde_json::json;

const ENGINES: usize = 4;
const GROUPS: usize = 16;
const PER_GROUP: usize = 8;
const DEFAULT_PAIRS: usize = 400;
const WARMUP: usize = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(f64::NAN)
}

/// Hit rate through Envoy + kvroute (ext_proc, `cache_aware`) on fresh engines.
async fn ext_proc_hit_rate() -> anyhow::Result<f64> {
    let stack = Stack::builder("wasm/measure/ext-proc")
        .engines(ENGINES)
        .policy("cache_aware")
        .time_scale(DEFAULT_TIME_SCALE)
        .start()
        .await?;
    hit_rate(&stack.gateway_url(""), MODEL, GROUPS, PER_GROUP).await
}

/// Hit rate through the filter at `concurrency` on fresh engines, with the events published and
/// applied across VMs.
async fn wasm_hit_rate(concurrency: u32, sharing: bool) -> anyhow::Result<(f64, i64, i64)> {
    let on = if sharing { "on" } else { "off" };
    let dir = log_dir(&format!("measure/wasm-c{concurrency}-sharing-{on}"))?;
    let sims = Sim::start_many("engine", ENGINES, DEFAULT_TIME_SCALE, &dir).await?;
    let mut opts = EnvoyOptions::new(addresses(&sims));
    opts.concurrency = concurrency;
    opts.sharing = Some(json!({"enabled": sharing}));
    let envoy = start_envoy(&opts, &dir).await?;
    touch_every_worker_thread(&envoy.url(), 48).await?;
    let rate = hit_rate(&envoy.url(), MODEL, GROUPS, PER_GROUP).await?;
    let published = envoy.stat("kvroute_events_published_total").await?;
    let applied = envoy.stat("kvroute_events_applied_total").await?;
    Ok((rate, published, applied))
}

async fn hit_rates() -> anyhow::Result<()> {
    let oracle = oracle(PER_GROUP);
    // First, so that the stack's own output comes before the table.
    let ext_proc = ext_proc_hit_rate().await?;
    println!(
        "## Hit rate ({GROUPS} groups x {PER_GROUP} prompts, 4 KiB system prompt, \
         {ENGINES} fresh engines per run)\n"
    );
    println!(
        "| path | Envoy concurrency | sharing | hit rate | oracle | events published | events applied |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| ext_proc (kvroute, cache_aware) | 1 | n/a | {ext_proc:.3} | {oracle:.3} | n/a | n/a |"
    );
    for concurrency in [1, 2, 4] {
        for sharing in [true, false] {
            let (rate, published, applied) = wasm_hit_rate(concurrency, sharing).await?;
            println!(
                "| wasm filter (cache_aware) | {concurrency} | {} | {rate:.3} | {oracle:.3} | {published} | {applied} |",
                if sharing { "on" } else { "off" }
            );
        }
    }
    println!();
    Ok(())
}

async fn latency(sim: &Sim, dir: &Path, pairs: usize, sharing: bool) -> anyhow::Result<()> {
    let mut with_opts = EnvoyOptions::new(addresses(std::slice::from_ref(sim)));
    with_opts.sharing = Some(json!({"enabled": sharing}));
    let with = start_envoy(&with_opts, dir).await?;
    let mut plain_opts = with_opts.clone();
    plain_opts.name = "envoy-plain".to_owned();
    plain_opts.without_filter = true;
    let plain = start_envoy(&plain_opts, dir).await?;
    let (with_url, plain_url) = (with.url(), plain.url());
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let filler = "lorem ipsum dolor sit amet ".repeat(40);
    // [proxy][kind]: proxy 0 = with the filter, 1 = plain; kind 0 = completion, 1 = GET /health.
    let mut samples: [[Vec<f64>; 2]; 2] = Default::default();
    for i in 0..WARMUP + pairs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for kind in [0usize, 1] {
            for which in order {
                let url = if which == 0 { &with_url } else { &plain_url };
                let start = Instant::now();
                let status = if kind == 0 {
                    let prompt = format!("{i}/{which} {filler}");
                    let prompt = &prompt[..prompt.len().min(1024)];
                    let body = completion_body(MODEL, prompt, false).to_string();
                    post(&client, &format!("{url}/v1/completions"), body, &[])
                        .await?
                        .status
                } else {
                    let r = client.get(format!("{url}/health")).send().await?;
                    let status = r.status().as_u16();
                    r.bytes().await?;
                    status
                };
                let ms = start.elapsed().as_secs_f64() * 1e3;
                anyhow::ensure!(status == 200, "status {status}");
                if i >= WARMUP {
                    samples[which][kind].push(ms);
                }
            }
        }
    }
    for s in samples.iter_mut().flatten() {
        s.sort_by(f64::total_cmp);
    }
    println!(
        "## Added latency over plain Envoy (concurrency 1, {pairs} interleaved pairs, sharing {})\n",
        if sharing { "on" } else { "off" }
    );
    println!(
        "| request | plain p50 ms | wasm p50 ms | added p50 | plain p99 ms | wasm p99 ms | added p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (kind, name) in ["completion, 1 KiB prompt", "GET /health (body not read)"]
        .iter()
        .enumerate()
    {
        let (w, p) = (&samples[0][kind], &samples[1][kind]);
        let (p50w, p50p) = (percentile(w, 0.5), percentile(p, 0.5));
        let (p99w, p99p) = (percentile(w, 0.99), percentile(p, 0.99));
        println!(
            "| {name} | {p50p:.3} | {p50w:.3} | {:+.3} | {p99p:.3} | {p99w:.3} | {:+.3} |",
            p50w - p50p,
            p99w - p99p
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".to_owned());
    let pairs = match args.next() {
        Some(n) => n.parse()?,
        None => DEFAULT_PAIRS,
    };
    let sharing = args.next().is_none_or(|s| s != "no-sharing");
    anyhow::ensure!(
        matches!(what.as_str(), "all" | "hit-rate" | "latency"),
        "unknown mode {what:?}: expected hit-rate, latency or all"
    );
    if what == "all" || what == "hit-rate" {
        hit_rates().await?;
    }
    if what == "all" || what == "latency" {
        let dir = log_dir("measure/latency")?;
        let sims = Sim::start_many("engine", 1, DEFAULT_TIME_SCALE, &dir).await?;
        let sim = sims.first().context("no engine started")?;
        latency(sim, &dir, pairs, sharing).await?;
    }
    Ok(())
}
