//! Driving a workload through one or several targets.
//!
//! Interleaved mode (the default with several targets) cuts the workload into chunks of
//! sessions and runs chunk k on every target in turn before chunk k+1, so slow drifts of a noisy
//! machine hit all targets alike; each target needs its own engines (their caches must not be
//! shared). Sequential mode runs the whole workload on each target in turn, optionally flushing
//! the engines' caches first, so targets may share the same engines.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Api, Outcome, send};
use crate::engines::{flush, scrape};
use crate::progress::Progress;
use crate::prom::EngineCounters;
use crate::text::derive_seed;
use crate::workload::Workload;

/// A gateway (or engine) under test and the engines behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Short name used in reports.
    pub name: String,
    /// OpenAI base URL, e.g. `http://127.0.0.1:10000`.
    pub url: String,
    /// Base URLs of the engines behind it (for `/metrics` and cache flushes).
    pub engines: Vec<String>,
}

/// How several targets share the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Chunk k on every target, then chunk k+1 (targets need their own engines).
    Interleaved,
    /// The whole workload on each target in turn.
    Sequential,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Endpoint to call.
    pub api: Api,
    /// Model name sent in requests.
    pub model: String,
    /// Sessions in flight (closed loop), or the cap on them with `rate`.
    pub concurrency: Option<usize>,
    /// Poisson arrival rate of sessions per second (open loop).
    pub rate: Option<f64>,
    /// Seed of the arrival times.
    pub seed: u64,
    /// Interleaved or sequential.
    pub mode: Mode,
    /// Flush the engines' caches before each target's run (sequential mode).
    pub flush: bool,
    /// Sessions per chunk in interleaved mode.
    pub chunk_sessions: usize,
}

/// Sessions in flight when neither a concurrency nor a rate is given.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// What one target's run produced.
#[derive(Clone, Debug, Default)]
pub struct TargetRun {
    /// (request id, outcome) of every request sent.
    pub outcomes: Vec<(usize, Outcome)>,
    /// Wall time spent running this target's requests.
    pub busy: Duration,
    /// Engine counters before the run (`None` where the scrape failed).
    pub engines_before: Vec<Option<EngineCounters>>,
    /// Engine counters after the run.
    pub engines_after: Vec<Option<EngineCounters>>,
}

/// Runs `workload` through every target and returns one [`TargetRun`] per target.
pub async fn run(
    client: &reqwest::Client,
    targets: &[Target],
    workload: Arc<Workload>,
    opts: &RunOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<Vec<TargetRun>> {
    let mut runs = vec![TargetRun::default(); targets.len()];
    match opts.mode {
        Mode::Sequential => {
            for (target, run) in targets.iter().zip(&mut runs) {
                if opts.flush {
                    for engine in &target.engines {
                        flush(client, engine).await?;
                    }
                }
                run.engines_before = scrape_all(client, &target.engines).await;
                let all = 0..workload.sessions.len();
                let started = Instant::now();
                run.outcomes =
                    run_sessions(client, target, &workload, all, opts, 0, &progress).await;
                run.busy = started.elapsed();
                run.engines_after = scrape_all(client, &target.engines).await;
            }
        }
        Mode::Interleaved => {
            for (target, run) in targets.iter().zip(&mut runs) {
                run.engines_before = scrape_all(client, &target.engines).await;
            }
            for (k, chunk) in workload.chunks(opts.chunk_sessions).into_iter().enumerate() {
                for (target, run) in targets.iter().zip(&mut runs) {
                    let started = Instant::now();
                    let outcomes =
                        run_sessions(client, target, &workload, chunk.clone(), opts, k, &progress)
                            .await;
                    run.busy += started.elapsed();
                    run.outcomes.extend(outcomes);
                }
            }
            for (target, run) in targets.iter().zip(&mut runs) {
                run.engines_after = scrape_all(client, &target.engines).await;
            }
        }
    }
    Ok(runs)
}

async fn scrape_all(client: &reqwest::Client, engines: &[String]) -> Vec<Option<EngineCounters>> {
    let mut out = Vec::with_capacity(engines.len());
    for engine in engines {
        match scrape(client, engine).await {
            Ok(c) => out.push(Some(c)),
            Err(e) => {
                eprintln!("warning: metrics of {engine} unavailable: {e:#}");
                out.push(None);
            }
        }
    }
    out
}

/// Shared state of the tasks running one chunk.
struct Chunk {
    client: reqwest::Client,
    url: String,
    api: Api,
    model: String,
    workload: Arc<Workload>,
    progress: Arc<Progress>,
    outcomes: Mutex<Vec<(usize, Outcome)>>,
}

impl Chunk {
    /// Sends the requests of session `s` one after another.
    async fn run_session(&self, s: usize) {
        for req in &self.workload.sessions[s].requests {
            let outcome = send(&self.client, &self.url, self.api, &self.model, req).await;
            self.progress.inc(outcome.error.is_some());
            self.outcomes.lock().await.push((req.id, outcome));
        }
    }
}

async fn run_sessions(
    client: &reqwest::Client,
    target: &Target,
    workload: &Arc<Workload>,
    sessions: std::ops::Range<usize>,
    opts: &RunOptions,
    chunk_index: usize,
    progress: &Arc<Progress>,
) -> Vec<(usize, Outcome)> {
    let chunk = Arc::new(Chunk {
        client: client.clone(),
        url: target.url.clone(),
        api: opts.api,
        model: opts.model.clone(),
        workload: workload.clone(),
        progress: progress.clone(),
        outcomes: Mutex::new(Vec::new()),
    });
    let mut tasks = JoinSet::new();
    match opts.rate.filter(|r| r.is_finite() && *r > 0.0) {
        Some(rate) => {
            let cap = opts
                .concurrency
                .unwrap_or(Semaphore::MAX_PERMITS)
                .clamp(1, Semaphore::MAX_PERMITS);
            let slots = Arc::new(Semaphore::new(cap));
            let mut rng =
                SmallRng::seed_from_u64(derive_seed(opts.seed, "arrivals", chunk_index as u64));
            let start = tokio::time::Instant::now();
            let mut at = 0.0f64;
            for s in sessions {
                let u: f64 = rng.random();
                at += -(1.0 - u).ln() / rate;
                let when = start + Duration::from_secs_f64(at);
                let (chunk, slots) = (chunk.clone(), slots.clone());
                tasks.spawn(async move {
                    tokio::time::sleep_until(when).await;
                    if let Ok(_permit) = slots.acquire().await {
                        chunk.run_session(s).await;
                    }
                });
            }
        }
        None => {
            let workers = opts
                .concurrency
                .unwrap_or(DEFAULT_CONCURRENCY)
                .clamp(1, sessions.len().max(1));
            let next = Arc::new(AtomicUsize::new(sessions.start));
            for _ in 0..workers {
                let (chunk, next, end) = (chunk.clone(), next.clone(), sessions.end);
                tasks.spawn(async move {
                    loop {
                        let s = next.fetch_add(1, Ordering::Relaxed);
                        if s >= end {
                            break;
                        }
                        chunk.run_session(s).await;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut outcomes = std::mem::take(&mut *chunk.outcomes.lock().await);
    outcomes.sort_by_key(|(id, _)| *id);
    outcomes
}
