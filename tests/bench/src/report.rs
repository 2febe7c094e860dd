//! The run report: per-target figures (JSON via serde) and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Api;
use crate::prom::{EngineCounters, EngineKind};
use crate::runner::{Mode, Target, TargetRun};
use crate::stats::{Summary, max_over_mean, summarize};
use crate::workload::{Shape, WorkloadKind};

/// The whole report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The workload that was sent.
    pub workload: WorkloadInfo,
    /// How targets shared the run.
    pub mode: Mode,
    /// Endpoint called.
    pub api: Api,
    /// Model name sent.
    pub model: String,
    /// Sessions in flight (closed loop) or cap (with a rate).
    pub concurrency: Option<usize>,
    /// Poisson arrival rate, sessions per second.
    pub rate: Option<f64>,
    /// One entry per target, in command-line order.
    pub targets: Vec<TargetReport>,
}

/// Description of the workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    /// Family.
    pub kind: WorkloadKind,
    /// Shape after overrides and scaling.
    pub shape: Shape,
    /// Number of requests.
    pub requests: usize,
    /// Seed.
    pub seed: u64,
    /// Characters per token of the synthetic text.
    pub chars_per_token: usize,
    /// Block size of the oracle, tokens.
    pub block_tokens: usize,
    /// Hit rate of perfect routing with unbounded caches.
    pub oracle_hit_rate: f64,
}

/// Figures of one engine behind a target.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    /// Engine base URL.
    pub url: String,
    /// Detected engine family.
    pub kind: Option<EngineKind>,
    /// Requests it finished during the run (counter delta).
    pub requests: Option<f64>,
    /// Its prefix-cache hit rate during the run.
    pub hit_rate: Option<f64>,
}

/// Figures of one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// Target name.
    pub name: String,
    /// Target base URL.
    pub url: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that completed without error.
    pub succeeded: usize,
    /// Failures by kind (`http_503`, `connect`, `timeout`, `bad_stream`, `other`).
    pub errors: BTreeMap<String, usize>,
    /// Wall time spent on this target, seconds.
    pub duration_s: f64,
    /// Successful requests per second of that time.
    pub requests_per_s: f64,
    /// Output tokens per second of that time.
    pub output_tokens_per_s: f64,
    /// Time to first token of successful requests, milliseconds.
    pub ttft_ms: Summary,
    /// End-to-end latency of successful requests, milliseconds.
    pub e2e_ms: Summary,
    /// Prefix-cache hit rate from the engines' counters (hits / queried tokens).
    pub engine_hit_rate: Option<f64>,
    /// Hit rate from the responses' `usage.prompt_tokens_details.cached_tokens`.
    pub client_hit_rate: Option<f64>,
    /// Largest per-engine request count over the mean (1.0 = even).
    pub share_max_over_mean: Option<f64>,
    /// Per-engine figures.
    pub workers: Vec<WorkerReport>,
    /// TTFT samples in milliseconds, ascending (for plots).
    #[serde(skip)]
    pub ttft_samples_ms: Vec<f64>,
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

/// Computes a target's figures from its run.
pub fn target_report(target: &Target, run: &TargetRun) -> TargetReport {
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut ttft, mut e2e) = (Vec::new(), Vec::new());
    let (mut out_tokens, mut prompt, mut cached, mut with_cached) = (0u64, 0u64, 0u64, false);
    for (_, o) in &run.outcomes {
        if let Some(kind) = o.error {
            *errors.entry(kind.to_string()).or_default() += 1;
            continue;
        }
        ttft.extend(o.ttft.map(|d| d.as_secs_f64() * 1e3));
        e2e.push(o.e2e.as_secs_f64() * 1e3);
        out_tokens += o.output_tokens();
        if let Some(u) = o.usage {
            prompt += u.prompt_tokens;
            cached += u.cached_tokens.unwrap_or(0);
            with_cached |= u.cached_tokens.is_some();
        }
    }
    let succeeded = run.outcomes.len() - errors.values().sum::<usize>();
    let duration_s = run.busy.as_secs_f64();
    let workers: Vec<WorkerReport> = target
        .engines
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let delta = match (run.engines_before.get(i), run.engines_after.get(i)) {
                (Some(Some(b)), Some(Some(a))) => Some(a.delta_since(b)),
                _ => None,
            };
            WorkerReport {
                url: url.clone(),
                kind: delta.and_then(|d| d.kind),
                requests: delta.filter(|d| d.kind.is_some()).map(|d| d.requests),
                hit_rate: delta.and_then(|d| ratio(d.cache_hit_tokens, d.cache_query_tokens)),
            }
        })
        .collect();
    let deltas: Vec<EngineCounters> = (0..target.engines.len())
        .filter_map(
            |i| match (run.engines_before.get(i), run.engines_after.get(i)) {
                (Some(Some(b)), Some(Some(a))) if a.kind.is_some() => Some(a.delta_since(b)),
                _ => None,
            },
        )
        .collect();
    let complete = !deltas.is_empty() && deltas.len() == target.engines.len();
    let hits: f64 = deltas.iter().map(|d| d.cache_hit_tokens).sum();
    let queries: f64 = deltas.iter().map(|d| d.cache_query_tokens).sum();
    let shares: Vec<f64> = deltas.iter().map(|d| d.requests).collect();
    let mut ttft_samples_ms = ttft.clone();
    ttft_samples_ms.sort_by(f64::total_cmp);
    TargetReport {
        name: target.name.clone(),
        url: target.url.clone(),
        requests: run.outcomes.len(),
        succeeded,
        errors,
        duration_s,
        requests_per_s: ratio(succeeded as f64, duration_s).unwrap_or(0.0),
        output_tokens_per_s: ratio(out_tokens as f64, duration_s).unwrap_or(0.0),
        ttft_ms: summarize(&ttft),
        e2e_ms: summarize(&e2e),
        engine_hit_rate: if complete { ratio(hits, queries) } else { None },
        client_hit_rate: if with_cached {
            ratio(cached as f64, prompt as f64)
        } else {
            None
        },
        share_max_over_mean: if complete {
            max_over_mean(&shares)
        } else {
            None
        },
        workers,
        ttft_samples_ms,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The summary table printed at the end of a run.
pub fn summary_table(report: &Report) -> String {
    let mut out = String::new();
    let w = &report.workload;
    let _ = writeln!(
        out,
        "workload {}: {} requests ({} groups x {} x {} turns, system {} / question {} / output {} tokens), oracle hit rate {:.3}",
        w.kind,
        w.requests,
        w.shape.groups,
        w.shape.prompts_per_group,
        w.shape.turns,
        w.shape.system_tokens,
        w.shape.question_tokens,
        w.shape.output_tokens,
        w.oracle_hit_rate
    );
    let nw = report
        .targets
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        out,
        "{:<nw$} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}",
        "target",
        "reqs",
        "errs",
        "ttft p50",
        "ttft p90",
        "ttft p99",
        "e2e p50",
        "e2e p99",
        "out tok/s",
        "req/s",
        "hit",
        "hit(cl)",
        "share"
    );
    for t in &report.targets {
        let _ = writeln!(
            out,
            "{:<nw$} {:>5} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.0} {:>7.2} {:>7} {:>7} {:>7}",
            t.name,
            t.requests,
            t.requests - t.succeeded,
            t.ttft_ms.p50,
            t.ttft_ms.p90,
            t.ttft_ms.p99,
            t.e2e_ms.p50,
            t.e2e_ms.p99,
            t.output_tokens_per_s,
            t.requests_per_s,
            opt(t.engine_hit_rate, 3),
            opt(t.client_hit_rate, 3),
            opt(t.share_max_over_mean, 2),
        );
    }
    let _ = writeln!(
        out,
        "(latencies in ms; hit = engines' /metrics, hit(cl) = usage.cached_tokens; share = max/mean requests per engine)"
    );
    if let Some((base, rest)) = report.targets.split_first() {
        for t in rest {
            let _ = writeln!(
                out,
                "{} vs {}: TTFT p50 x{} ({:.1} vs {:.1} ms), hit rate {} vs {} (oracle {:.3})",
                t.name,
                base.name,
                opt(ratio(t.ttft_ms.p50, base.ttft_ms.p50), 2),
                t.ttft_ms.p50,
                base.ttft_ms.p50,
                opt(t.engine_hit_rate.or(t.client_hit_rate), 3),
                opt(base.engine_hit_rate.or(base.client_hit_rate), 3),
                w.oracle_hit_rate
            );
        }
    }
    for t in &report.targets {
        for (kind, n) in &t.errors {
            let _ = writeln!(out, "{}: {n} x {kind}", t.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::{ErrorKind, Outcome};
    use crate::sse::Usage;

    fn ok(ttft_ms: u64, prompt: u64, cached: u64) -> Outcome {
        Outcome {
            ttft: Some(Duration::from_millis(ttft_ms)),
            e2e: Duration::from_millis(ttft_ms + 100),
            usage: Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: 10,
                cached_tokens: Some(cached),
            }),
            content_chunks: 10,
            error: None,
        }
    }

    fn counters(hits: f64, queries: f64, requests: f64) -> Option<EngineCounters> {
        Some(EngineCounters {
            kind: Some(EngineKind::Vllm),
            cache_hit_tokens: hits,
            cache_query_tokens: queries,
            requests,
        })
    }

    #[test]
    fn figures_from_outcomes_and_counter_deltas() {
        let target = Target {
            name: "rr".into(),
            url: "http://gw".into(),
            engines: vec!["http://e1".into(), "http://e2".into()],
        };
        let failed = Outcome {
            ttft: None,
            e2e: Duration::from_millis(5),
            usage: None,
            content_chunks: 0,
            error: Some(ErrorKind::Http(503)),
        };
        let run = TargetRun {
            outcomes: vec![
                (0, ok(10, 100, 0)),
                (1, ok(30, 100, 80)),
                (2, ok(20, 200, 120)),
                (3, failed),
            ],
            busy: Duration::from_secs(2),
            engines_before: vec![counters(100.0, 1000.0, 5.0), counters(0.0, 0.0, 0.0)],
            engines_after: vec![counters(200.0, 1200.0, 7.0), counters(100.0, 200.0, 1.0)],
        };
        let r = target_report(&target, &run);
        assert_eq!((r.requests, r.succeeded), (4, 3));
        assert_eq!(r.errors.get("http_503"), Some(&1));
        assert!((r.ttft_ms.p50 - 20.0).abs() < 1e-6);
        assert!((r.requests_per_s - 1.5).abs() < 1e-9);
        assert!((r.output_tokens_per_s - 15.0).abs() < 1e-9);
        assert_eq!(r.client_hit_rate, Some(0.5));
        assert_eq!(r.engine_hit_rate, Some(0.5));
        assert_eq!(r.share_max_over_mean, Some(2.0 / 1.5));
        assert_eq!(r.workers[1].hit_rate, Some(0.5));
        assert_eq!(r.ttft_samples_ms, vec![10.0, 20.0, 30.0]);

        let report = Report {
            workload: WorkloadInfo {
                kind: WorkloadKind::SharedPrefix,
                shape: WorkloadKind::SharedPrefix.default_shape(),
                requests: 4,
                seed: 1,
                chars_per_token: 4,
                block_tokens: 16,
                oracle_hit_rate: 0.8,
            },
            mode: Mode::Interleaved,
            api: Api::Chat,
            model: "m".into(),
            concurrency: Some(2),
            rate: None,
            targets: vec![
                r.clone(),
                TargetReport {
                    name: "kv".into(),
                    ..r
                },
            ],
        };
        let table = summary_table(&report);
        assert!(table.contains("oracle hit rate 0.800"), "{table}");
        assert!(table.contains("kv vs rr: TTFT p50 x1.00"), "{table}");
        assert!(table.contains("rr: 1 x http_503"), "{table}");
        let svg = crate::plot::svg(&report);
        assert_eq!(svg.matches("<rect x=").count(), 2 + 4);
    }

    #[test]
    fn missing_metrics_give_no_engine_figures() {
        let target = Target {
            name: "t".into(),
            url: "http://gw".into(),
            engines: vec!["http://e1".into()],
        };
        let run = TargetRun {
            outcomes: vec![(0, ok(10, 100, 50))],
            busy: Duration::from_secs(1),
            engines_before: vec![None],
            engines_after: vec![counters(1.0, 2.0, 1.0)],
        };
        let r = target_report(&target, &run);
        assert_eq!(r.engine_hit_rate, None);
        assert_eq!(r.share_max_over_mean, None);
        assert_eq!(r.workers[0].requests, None);
        assert_eq!(r.client_hit_rate, Some(0.5));
    }
}
