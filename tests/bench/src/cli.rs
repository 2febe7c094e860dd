//! Command-line interface: arguments and the `run` command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::Api;
use crate::engines::first_model;
use crate::oracle::oracle;
use crate::plot::svg;
use crate::progress::Progress;
use crate::report::{Report, WorkloadInfo, summary_table, target_report};
use crate::runner::{Mode, RunOptions, Target, run};
use crate::workload::{ShapeOverrides, Workload, WorkloadKind};

/// Benchmark LLM gateways with shared-prefix traffic.
#[derive(Debug, Parser)]
#[command(name = "kvroute-bench", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a workload through one or more targets and report TTFT, latency and cache hits.
    Run(RunArgs),
    /// Measure the latency and throughput a gateway adds over a baseline (interleaved).
    Overhead(crate::overhead::OverheadArgs),
    /// Render the shipped Envoy config for local ports, optionally with a plain listener.
    EnvoyConfig(crate::envoy_config::EnvoyConfigArgs),
}

/// Arguments of `run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Target as NAME=URL (OpenAI base URL, e.g. http://127.0.0.1:10000); repeatable.
    #[arg(long = "target", value_name = "NAME=URL", required = true)]
    pub targets: Vec<String>,
    /// Engines behind a target, as NAME=URL,URL,... (for /metrics and cache flushes); repeatable.
    #[arg(long = "engines", value_name = "NAME=URLS")]
    pub engines: Vec<String>,
    /// Workload family.
    #[arg(long, value_enum, default_value_t = WorkloadKind::SharedPrefix)]
    pub workload: WorkloadKind,
    /// Number of groups (distinct system prompts).
    #[arg(long)]
    pub groups: Option<usize>,
    /// Prompts per group (multi-turn: conversations per group).
    #[arg(long)]
    pub prompts_per_group: Option<usize>,
    /// Tokens of each system prompt.
    #[arg(long)]
    pub system_tokens: Option<usize>,
    /// Tokens of each question.
    #[arg(long)]
    pub question_tokens: Option<usize>,
    /// Output tokens per request.
    #[arg(long)]
    pub output_tokens: Option<usize>,
    /// Turns per conversation (multi-turn).
    #[arg(long)]
    pub turns: Option<usize>,
    /// Zipf exponent of group popularity (skewed groups).
    #[arg(long, value_name = "S")]
    pub zipf: Option<f64>,
    /// Multiply the number of groups by F, for quick runs.
    #[arg(long, value_name = "F")]
    pub scale: Option<f64>,
    /// Sessions in flight (closed loop; default 16); with --rate, a cap on them.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Poisson arrivals of R sessions per second (open loop).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = Api::Chat)]
    pub api: Api,
    /// Model name (default: the first model the first target lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Seed of the workload and the arrival times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Characters per token of the synthetic text.
    #[arg(long, default_value_t = 4)]
    pub chars_per_token: usize,
    /// Block size (tokens) of the oracle hit rate.
    #[arg(long, default_value_t = 16)]
    pub block_tokens: usize,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Write an SVG plot here (TTFT CDF and per-engine share).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Flush the engines' caches before each target's run (implies --sequential).
    #[arg(long)]
    pub flush: bool,
    /// Run targets one after another instead of interleaving chunks.
    #[arg(long)]
    pub sequential: bool,
    /// Sessions per interleaved chunk (default: the number of groups, one group-round).
    #[arg(long, value_name = "N")]
    pub chunk: Option<usize>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// After the summary, explain the results in a few sentences (hit rates, TTFT ratio).
    #[arg(long)]
    pub explain: bool,
    /// Print the workload and its oracle hit rate, send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn split_named(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => bail!("{what} must look like NAME=VALUE, got {s:?}"),
    }
}

/// Builds the targets from `--target` and `--engines`.
pub fn parse_targets(targets: &[String], engines: &[String]) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for t in targets {
        let (name, url) = split_named(t, "--target")?;
        if out.iter().any(|x| x.name == name) {
            bail!("target {name:?} given twice");
        }
        out.push(Target {
            name,
            url,
            engines: Vec::new(),
        });
    }
    for e in engines {
        let (name, urls) = split_named(e, "--engines")?;
        let Some(target) = out.iter_mut().find(|t| t.name == name) else {
            bail!("--engines names {name:?}, which is not a --target");
        };
        target.engines.extend(
            urls.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(out)
}

/// The workload described by the arguments.
pub fn build_workload(args: &RunArgs) -> Workload {
    let overrides = ShapeOverrides {
        groups: args.groups,
        prompts_per_group: args.prompts_per_group,
        system_tokens: args.system_tokens,
        question_tokens: args.question_tokens,
        output_tokens: args.output_tokens,
        turns: args.turns,
        zipf: args.zipf,
        scale: args.scale,
    };
    let shape = args.workload.shape(&overrides);
    Workload::generate(args.workload, shape, args.seed, args.chars_per_token)
}

/// Executes `run`: sends the workload, prints the summary, writes the report and plot.
pub async fn run_command(args: &RunArgs) -> Result<Report> {
    let targets = parse_targets(&args.targets, &args.engines)?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let workload = Arc::new(build_workload(args));
    let prompts: Vec<String> = workload
        .requests_in_order()
        .iter()
        .map(|r| r.prompt())
        .collect();
    let oracle = oracle(
        prompts.iter().map(String::as_str),
        args.chars_per_token,
        args.block_tokens,
    );
    let info = WorkloadInfo {
        kind: workload.kind,
        shape: workload.shape.clone(),
        requests: workload.len(),
        seed: args.seed,
        chars_per_token: args.chars_per_token,
        block_tokens: args.block_tokens,
        oracle_hit_rate: oracle.rate(),
    };
    let mode = if args.sequential || args.flush || targets.len() == 1 {
        Mode::Sequential
    } else {
        Mode::Interleaved
    };
    if mode == Mode::Interleaved {
        warn_shared_engines(&targets);
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .context("building the HTTP client")?;
    let model = match (&args.model, args.dry_run) {
        (Some(m), _) => m.clone(),
        (None, true) => String::new(),
        (None, false) => first_model(&client, &targets[0].url).await?,
    };
    let mut report = Report {
        workload: info,
        mode,
        api: args.api,
        model: model.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        targets: Vec::new(),
    };
    if !args.dry_run {
        let opts = RunOptions {
            api: args.api,
            model,
            concurrency: args.concurrency,
            rate: args.rate,
            seed: args.seed,
            mode,
            flush: args.flush,
            chunk_sessions: args.chunk.unwrap_or(workload.shape.groups),
        };
        let total = (workload.len() * targets.len()) as u64;
        let progress = Arc::new(Progress::new(total, args.quiet));
        let runs = run(&client, &targets, workload.clone(), &opts, progress.clone()).await;
        progress.finish();
        let runs = runs?;
        report.targets = targets
            .iter()
            .zip(&runs)
            .map(|(t, r)| target_report(t, r))
            .collect();
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn warn_shared_engines(targets: &[Target]) {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.engines.iter().any(|e| b.engines.contains(e)) {
                eprintln!(
                    "warning: targets {} and {} share engines; interleaved runs mix their caches (use --sequential --flush)",
                    a.name, b.name
                );
            }
        }
    }
}

/// Prints the report's summary table to stdout.
pub fn print_summary(report: &Report) {
    print!("{}", summary_table(report));
}
