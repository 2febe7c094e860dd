//! Measures the proxy-wasm filter with the real Envoy and simulated engines:
//! 1. prefix hit rate of a shared-prefix workload at Envoy concurrency 1, 2 and 4, with and
//!    without cross-VM sharing;
//! 2. latency added over plain Envoy at concurrency 1 (1 KiB prompts, interleaved requests).
//!
//! Needs the built module, `kvroute-sim` and Envoy (see the e2e tests). Prints Markdown.
//! Usage: `kvroute-wasm-measure [hit-rate|latency|all] [latency pairs] [no-sharing]`.

use std::time::{Duration, Instant};

use kvroute_wasm_e2e::paths::log_dir;
use kvroute_wasm_e2e::workload::{hit_rate, oracle, touch_every_worker_thread};
use kvroute_wasm_e2e::{Envoy, EnvoyOptions, MODEL, Sim, completion_body, post};
use serde_json::json;

const GROUPS: usize = 16;
const PER_GROUP: usize = 8;
const DEFAULT_PAIRS: usize = 400;
const WARMUP: usize = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(f64::NAN)
}

async fn hit_rates(sims: &[Sim], dir: &std::path::Path) -> anyhow::Result<()> {
    let workers: Vec<String> = sims.iter().map(|s| s.address.clone()).collect();
    println!(
        "## Hit rate ({GROUPS} groups x {PER_GROUP} prompts, 4 KiB system prompt, {} engines)\n",
        sims.len()
    );
    println!("oracle: {:.3}\n", oracle(PER_GROUP));
    println!("| Envoy concurrency | sharing | hit rate | events published | events applied |");
    println!("|---|---|---|---|---|");
    for concurrency in [1, 2, 4] {
        for sharing in [true, false] {
            let mut opts = EnvoyOptions::new(workers.clone());
            opts.concurrency = concurrency;
            opts.sharing = Some(json!({"enabled": sharing}));
            let envoy = Envoy::start(&opts, dir).await?;
            touch_every_worker_thread(&envoy.url, 48).await?;
            let rate = hit_rate(&envoy.url, MODEL, GROUPS, PER_GROUP).await?;
            let published = envoy.stat("kvroute_events_published_total").await?;
            let applied = envoy.stat("kvroute_events_applied_total").await?;
            println!(
                "| {concurrency} | {} | {rate:.3} | {published} | {applied} |",
                if sharing { "on" } else { "off" }
            );
        }
    }
    println!();
    Ok(())
}

async fn latency(
    sim: &Sim,
    dir: &std::path::Path,
    pairs: usize,
    sharing: bool,
) -> anyhow::Result<()> {
    let mut with_opts = EnvoyOptions::new(vec![sim.address.clone()]);
    with_opts.sharing = Some(json!({"enabled": sharing}));
    let with = Envoy::start(&with_opts, dir).await?;
    let mut plain_opts = EnvoyOptions::new(vec![sim.address.clone()]);
    plain_opts.without_filter = true;
    let plain = Envoy::start(&plain_opts, dir).await?;
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
                let url = if which == 0 { &with.url } else { &plain.url };
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
    let dir = log_dir("measure")?;
    let sims: Vec<Sim> = (0..4)
        .map(|i| Sim::start(&format!("engine-{i}"), MODEL, &dir))
        .collect::<anyhow::Result<_>>()?;
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".to_owned());
    let pairs = match args.next() {
        Some(n) => n.parse()?,
        None => DEFAULT_PAIRS,
    };
    let sharing = args.next().is_none_or(|s| s != "no-sharing");
    if what == "all" || what == "hit-rate" {
        hit_rates(&sims, &dir).await?;
    }
    if what == "all" || what == "latency" {
        latency(&sims[0], &dir, pairs, sharing).await?;
    }
    Ok(())
}
