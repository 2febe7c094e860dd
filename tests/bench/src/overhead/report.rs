//! The overhead report: per cell (prompt size x concurrency) latency percentiles and throughput
//! of every target, the differences against the first target, and memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OverheadReport {
    /// Target names, the baseline first.
    pub targets: Vec<String>,
    /// Whether responses were streamed.
    pub stream: bool,
    /// Measured requests per target and cell (warm-up excluded).
    pub requests_per_cell: usize,
    /// One entry per prompt size and concurrency.
    pub cells: Vec<Cell>,
    /// Largest requests/s of each target over the concurrencies, per prompt size.
    pub max_throughput: Vec<MaxThroughput>,
    /// Memory of the watched processes.
    pub memory: Vec<Memory>,
}

/// One prompt size at one concurrency.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cell {
    /// Prompt bytes.
    pub prompt_bytes: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Per target, in target order.
    pub targets: Vec<CellTarget>,
    /// Every other target against the first.
    pub deltas: Vec<Delta>,
    /// Routing decisions made during the cell, per metrics endpoint.
    pub decisions: Vec<Decisions>,
    /// Largest RSS seen during the cell, per watched process.
    pub peak_rss_kib: BTreeMap<String, u64>,
}

/// One target in one cell.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CellTarget {
    /// Target name.
    pub name: String,
    /// Latency of the successful requests, milliseconds.
    pub latency_ms: Summary,
    /// Failures by kind.
    pub errors: BTreeMap<String, usize>,
    /// Requests completed per second of the target's own batches.
    pub requests_per_sec: f64,
    /// CPU time per request of each watched process during this target's batches, in
    /// microseconds (`/proc` ticks of 10 ms, summed over the cell).
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A target against the baseline in one cell.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Delta {
    /// The target.
    pub name: String,
    /// The baseline.
    pub baseline: String,
    /// Added median latency, milliseconds.
    pub p50_ms: f64,
    /// Added 99th-percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Requests/s as a share of the baseline's.
    pub throughput_share: f64,
}

/// Routing decisions read from a `kvroute_decision_duration_seconds` histogram.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decisions {
    /// Name of the metrics endpoint.
    pub name: String,
    /// Decisions taken.
    pub count: f64,
    /// Mean time per decision (lock wait included), microseconds.
    pub mean_us: f64,
}

/// Highest throughput over the concurrencies of one prompt size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MaxThroughput {
    /// Prompt bytes.
    pub prompt_bytes: usize,
    /// Per target: (name, requests/s).
    pub requests_per_sec: Vec<(String, f64)>,
    /// Every target's maximum as a share of the first target's.
    pub share: Vec<(String, f64)>,
}

/// Memory of one watched process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Its name.
    pub name: String,
    /// RSS before the first cell, KiB.
    pub rest_kib: Option<u64>,
    /// Largest RSS seen during the run, KiB.
    pub peak_kib: Option<u64>,
    /// RSS after the last cell, KiB.
    pub end_kib: Option<u64>,
}

impl Cell {
    /// Fills `deltas` from `targets` (the first is the baseline).
    pub fn compute_deltas(&mut self) {
        let Some((base, rest)) = self.targets.split_first() else {
            return;
        };
        self.deltas = rest
            .iter()
            .map(|t| Delta {
                name: t.name.clone(),
                baseline: base.name.clone(),
                p50_ms: t.latency_ms.p50 - base.latency_ms.p50,
                p99_ms: t.latency_ms.p99 - base.latency_ms.p99,
                throughput_share: ratio(t.requests_per_sec, base.requests_per_sec),
            })
            .collect();
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Per prompt size, each target's highest requests/s and its share of the first target's.
pub fn max_throughput(cells: &[Cell], targets: &[String]) -> Vec<MaxThroughput> {
    let mut sizes: Vec<usize> = cells.iter().map(|c| c.prompt_bytes).collect();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|size| {
            let best: Vec<(String, f64)> = targets
                .iter()
                .map(|name| {
                    let rps = cells
                        .iter()
                        .filter(|c| c.prompt_bytes == size)
                        .flat_map(|c| c.targets.iter().filter(|t| &t.name == name))
                        .map(|t| t.requests_per_sec)
                        .fold(0.0, f64::max);
                    (name.clone(), rps)
                })
                .collect();
            let base = best.first().map_or(0.0, |b| b.1);
            let share = best
                .iter()
                .skip(1)
                .map(|(n, r)| (n.clone(), ratio(*r, base)))
                .collect();
            MaxThroughput {
                prompt_bytes: size,
                requests_per_sec: best,
                share,
            }
        })
        .collect()
}

/// `1 KiB`, `220 KiB`, or plain bytes.
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The human-readable summary.
pub fn table(report: &OverheadReport) -> String {
    let mut out = String::new();
    let w = report
        .targets
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        out,
        "{:<8} {:>5}  {:<w$} {:>8} {:>8} {:>9} {:>6}   {:>9} {:>9} {:>6}",
        "prompt",
        "conc",
        "target",
        "p50 ms",
        "p99 ms",
        "req/s",
        "errors",
        "+p50 ms",
        "+p99 ms",
        "req/s"
    );
    for cell in &report.cells {
        for (i, t) in cell.targets.iter().enumerate() {
            let (size, conc) = if i == 0 {
                (size_label(cell.prompt_bytes), cell.concurrency.to_string())
            } else {
                (String::new(), String::new())
            };
            let errors: usize = t.errors.values().sum();
            let _ = write!(
                out,
                "{size:<8} {conc:>5}  {:<w$} {:>8.3} {:>8.3} {:>9.0} {errors:>6}",
                t.name, t.latency_ms.p50, t.latency_ms.p99, t.requests_per_sec
            );
            if let Some(d) = i.checked_sub(1).and_then(|j| cell.deltas.get(j)) {
                let _ = write!(
                    out,
                    "   {:>+9.3} {:>+9.3} {:>5.0}%",
                    d.p50_ms,
                    d.p99_ms,
                    d.throughput_share * 100.0
                );
            }
            out.push('\n');
        }
        for t in cell
            .targets
            .iter()
            .filter(|t| !t.cpu_us_per_request.is_empty())
        {
            let cpu: Vec<String> = t
                .cpu_us_per_request
                .iter()
                .map(|(n, us)| format!("{n} {us:.0} us"))
                .collect();
            let _ = writeln!(
                out,
                "{:>16}CPU per {} request: {}",
                "",
                t.name,
                cpu.join(", ")
            );
        }
        for d in &cell.decisions {
            let _ = writeln!(
                out,
                "{:>16}{} decisions: {:.0}, mean {:.1} us (lock wait included)",
                "", d.name, d.count, d.mean_us
            );
        }
    }
    for m in &report.max_throughput {
        for (name, share) in &m.share {
            let _ = writeln!(
                out,
                "max req/s, {} prompts: {name} {:.0} = {:.0}% of {} {:.0}",
                size_label(m.prompt_bytes),
                m.requests_per_sec
                    .iter()
                    .find(|r| &r.0 == name)
                    .map_or(0.0, |r| r.1),
                share * 100.0,
                m.requests_per_sec.first().map_or("", |r| r.0.as_str()),
                m.requests_per_sec.first().map_or(0.0, |r| r.1),
            );
        }
    }
    for m in &report.memory {
        let mib = |k: Option<u64>| {
            k.map_or("n/a".to_owned(), |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            })
        };
        let _ = writeln!(
            out,
            "{} RSS: at rest {}, peak under load {}, after {}",
            m.name,
            mib(m.rest_kib),
            mib(m.peak_kib),
            mib(m.end_kib)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summarize;

    fn target(name: &str, samples: &[f64], rps: f64) -> CellTarget {
        CellTarget {
            name: name.to_owned(),
            latency_ms: summarize(samples),
            errors: BTreeMap::new(),
            requests_per_sec: rps,
            cpu_us_per_request: BTreeMap::new(),
        }
    }

    #[test]
    fn deltas_and_max_throughput() {
        let mut a = Cell {
            prompt_bytes: 1024,
            concurrency: 1,
            targets: vec![
                target("envoy", &[1.0, 2.0, 3.0], 1000.0),
                target("kv", &[1.5, 2.5, 3.5], 800.0),
            ],
            ..Cell::default()
        };
        a.compute_deltas();
        assert_eq!(a.deltas.len(), 1);
        assert!((a.deltas[0].p50_ms - 0.5).abs() < 1e-9);
        assert!((a.deltas[0].throughput_share - 0.8).abs() < 1e-9);
        let mut b = Cell {
            concurrency: 64,
            targets: vec![
                target("envoy", &[5.0], 4000.0),
                target("kv", &[6.0], 3000.0),
            ],
            ..a.clone()
        };
        b.compute_deltas();
        let names = vec!["envoy".to_owned(), "kv".to_owned()];
        let max = max_throughput(&[a, b], &names);
        assert_eq!(max.len(), 1);
        assert_eq!(
            max[0].requests_per_sec,
            [("envoy".into(), 4000.0), ("kv".into(), 3000.0)]
        );
        assert!((max[0].share[0].1 - 0.75).abs() < 1e-9);
        let report = OverheadReport {
            targets: names,
            cells: Vec::new(),
            max_throughput: max,
            ..OverheadReport::default()
        };
        assert!(table(&report).contains("kv 3000 = 75% of envoy 4000"));
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(225_280), "220 KiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
