//! `kvroute-bench overhead`: the latency and throughput a gateway adds, measured against a
//! baseline in one interleaved run. Small batches alternate between the targets (the starting
//! target rotating each round) so the noise of a shared machine hits them alike.
//!
//! The targets should sit in front of the same engines, with near-zero simulated costs, so
//! what differs is the gateway path alone.

pub mod load;
pub mod procfs;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cli::parse_targets;
use crate::client::endpoint_url;
use crate::engines::first_model;
use crate::prom::parse;
use crate::stats::summarize;
use load::{BatchResult, Bodies, batch};
use procfs::{PeakSampler, cpu_seconds, rss_kib};
use report::{Cell, CellTarget, Decisions, Memory, OverheadReport, max_throughput, size_label};

/// Arguments of `overhead`.
#[derive(Clone, Debug, Args)]
pub struct OverheadArgs {
    /// Target as NAME=URL; the first is the baseline. Repeatable.
    #[arg(long = "target", value_name = "NAME=URL", required = true)]
    pub targets: Vec<String>,
    /// Prompt sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    pub prompt_bytes: Vec<usize>,
    /// Requests in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,150")]
    pub concurrency: Vec<usize>,
    /// Measured requests per target and cell.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests per batch, as a multiple of the concurrency (at least 32 requests).
    #[arg(long, default_value_t = 4)]
    pub batch_factor: usize,
    /// Unmeasured warm-up batches per target and cell.
    #[arg(long, default_value_t = 1)]
    pub warmup_batches: usize,
    /// Stream the responses (one output token either way).
    #[arg(long)]
    pub stream: bool,
    /// Model name (default: the first model the first target lists).
    #[arg(long)]
    pub model: Option<String>,
    /// A kvroute metrics URL as NAME=URL, for the decision time per cell; repeatable.
    #[arg(long = "metrics", value_name = "NAME=URL")]
    pub metrics: Vec<String>,
    /// A local process to watch the memory of, as NAME=PID; repeatable.
    #[arg(long = "watch-pid", value_name = "NAME=PID")]
    pub watch: Vec<String>,
    /// Seed of the prompts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `overhead` and writes the report file; returns the report.
pub async fn overhead_command(args: &OverheadArgs) -> Result<OverheadReport> {
    let targets = parse_targets(&args.targets, &[])?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    if args.requests == 0 || args.prompt_bytes.is_empty() || args.concurrency.contains(&0) {
        bail!("--requests, --prompt-bytes and --concurrency must be non-empty and positive");
    }
    let metrics = named_values(&args.metrics, "--metrics")?;
    let watched: Vec<(String, u32)> = named_values(&args.watch, "--watch-pid")?
        .into_iter()
        .map(|(n, p)| Ok((n, p.parse().context("--watch-pid wants NAME=PID")?)))
        .collect::<Result<_>>()?;
    let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(max_conc)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .context("building the HTTP client")?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client, &targets[0].url).await?,
    };
    let urls: Vec<String> = targets
        .iter()
        .map(|t| endpoint_url(&t.url, "completions"))
        .collect();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();

    let mut memory: Vec<Memory> = watched
        .iter()
        .map(|(name, pid)| Memory {
            name: name.clone(),
            rest_kib: rss_kib(*pid),
            ..Memory::default()
        })
        .collect();
    let samplers: Vec<PeakSampler> = watched
        .iter()
        .map(|(_, pid)| PeakSampler::start(*pid, Duration::from_millis(20)))
        .collect();

    let mut cells = Vec::new();
    for &size in &args.prompt_bytes {
        let bodies = Arc::new(Bodies::new(&model, size, args.stream, args.seed));
        for &conc in &args.concurrency {
            let before = scrape_all(&client, &metrics).await;
            for s in &samplers {
                s.take_peak();
            }
            let mut cell = run_cell(
                &client,
                &names,
                &urls,
                &bodies,
                (size, conc),
                &watched,
                args,
            )
            .await;
            let after = scrape_all(&client, &metrics).await;
            cell.decisions = decisions(&metrics, &before, &after);
            for ((name, _), (s, m)) in watched.iter().zip(samplers.iter().zip(&mut memory)) {
                if let Some(peak) = s.take_peak() {
                    cell.peak_rss_kib.insert(name.clone(), peak);
                    m.peak_kib = Some(m.peak_kib.unwrap_or(0).max(peak));
                }
            }
            cell.compute_deltas();
            cells.push(cell);
        }
    }
    drop(samplers);
    for ((_, pid), m) in watched.iter().zip(&mut memory) {
        m.end_kib = rss_kib(*pid);
    }
    let report = OverheadReport {
        max_throughput: max_throughput(&cells, &names),
        targets: names,
        stream: args.stream,
        requests_per_cell: args.requests,
        cells,
        memory,
    };
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// One prompt size at one concurrency: warm-up, then batches alternating over the targets.
async fn run_cell(
    client: &reqwest::Client,
    names: &[String],
    urls: &[String],
    bodies: &Arc<Bodies>,
    (size, conc): (usize, usize),
    watched: &[(String, u32)],
    args: &OverheadArgs,
) -> Cell {
    let per_batch = (conc * args.batch_factor.max(1)).max(32).min(args.requests);
    for _ in 0..args.warmup_batches {
        for url in urls {
            batch(client, url, bodies, per_batch, conc).await;
        }
    }
    let mut runs: Vec<BatchResult> = urls.iter().map(|_| BatchResult::default()).collect();
    // CPU seconds of each watched process during each target's batches.
    let mut cpu = vec![vec![0.0f64; watched.len()]; urls.len()];
    let mut remaining = args.requests;
    let mut round = 0;
    while remaining > 0 {
        let n = per_batch.min(remaining);
        for k in 0..urls.len() {
            let i = (round + k) % urls.len();
            let cpu0: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(w.1)).collect();
            let r = batch(client, &urls[i], bodies, n, conc).await;
            for (j, w) in watched.iter().enumerate() {
                if let (Some(a), Some(b)) = (cpu0[j], cpu_seconds(w.1)) {
                    cpu[i][j] += b - a;
                }
            }
            runs[i].latencies_ms.extend(r.latencies_ms);
            runs[i].errors.extend(r.errors);
            runs[i].elapsed += r.elapsed;
        }
        remaining -= n;
        round += 1;
    }
    let targets: Vec<CellTarget> = names
        .iter()
        .zip(runs.iter().zip(&cpu))
        .map(|(name, (r, cpu))| {
            let mut errors = BTreeMap::new();
            for e in &r.errors {
                *errors.entry(e.to_string()).or_insert(0) += 1;
            }
            let secs = r.elapsed.as_secs_f64();
            let done = r.latencies_ms.len() + r.errors.len();
            let cpu_us_per_request = watched
                .iter()
                .zip(cpu)
                .filter(|_| done > 0)
                .map(|((name, _), s)| (name.clone(), s * 1e6 / done as f64))
                .collect();
            CellTarget {
                cpu_us_per_request,
                name: name.clone(),
                latency_ms: summarize(&r.latencies_ms),
                errors,
                requests_per_sec: if secs > 0.0 {
                    r.latencies_ms.len() as f64 / secs
                } else {
                    0.0
                },
            }
        })
        .collect();
    if !args.quiet {
        let line: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{} p50 {:.3} ms p99 {:.3} ms",
                    t.name, t.latency_ms.p50, t.latency_ms.p99
                )
            })
            .collect();
        eprintln!(
            "overhead: {} x {conc}: {}",
            size_label(size),
            line.join(", ")
        );
    }
    Cell {
        prompt_bytes: size,
        concurrency: conc,
        targets,
        ..Cell::default()
    }
}

fn named_values(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n.to_owned(), v.to_owned())),
            _ => bail!("{what} must look like NAME=VALUE, got {s:?}"),
        })
        .collect()
}

/// `(count, sum)` of the decision-time histogram at each metrics URL (`None` if unreadable).
async fn scrape_all(
    client: &reqwest::Client,
    metrics: &[(String, String)],
) -> Vec<Option<(f64, f64)>> {
    let mut out = Vec::with_capacity(metrics.len());
    for (_, url) in metrics {
        let text = match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => resp.text().await.ok(),
            _ => None,
        };
        out.push(text.and_then(|t| {
            let s = parse(&t);
            Some((
                s.get("kvroute_decision_duration_seconds_count")?,
                s.get("kvroute_decision_duration_seconds_sum")?,
            ))
        }));
    }
    out
}

fn decisions(
    metrics: &[(String, String)],
    before: &[Option<(f64, f64)>],
    after: &[Option<(f64, f64)>],
) -> Vec<Decisions> {
    metrics
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|((name, _), (b, a))| {
            let ((c0, s0), (c1, s1)) = ((*b)?, (*a)?);
            let count = c1 - c0;
            Some(Decisions {
                name: name.clone(),
                count,
                mean_us: if count > 0.0 {
                    (s1 - s0) / count * 1e6
                } else {
                    0.0
                },
            })
        })
        .collect()
}
