//! A few plain sentences on what a run showed: each target's hit rate against the oracle and
//! its time to first token against the first target's.

use std::fmt::Write as _;

use crate::report::{Report, TargetReport};

fn pct_of(part: Option<f64>, whole: f64) -> String {
    match part {
        Some(p) if whole > 0.0 => format!("{:.0}% of the oracle", 100.0 * p / whole),
        _ => "unknown share of the oracle".to_owned(),
    }
}

fn hit(t: &TargetReport) -> String {
    t.engine_hit_rate
        .or(t.client_hit_rate)
        .map_or_else(|| "unknown".to_owned(), |h| format!("{h:.3}"))
}

/// The explanation of `report`, one paragraph per target after the first (the baseline).
pub fn explanation(report: &Report) -> String {
    let mut out = String::new();
    let oracle = report.workload.oracle_hit_rate;
    let Some((base, rest)) = report.targets.split_first() else {
        return out;
    };
    let _ = writeln!(
        out,
        "What happened: perfect routing with unbounded caches would serve {:.1}% of the prompt \
         tokens from cache (oracle {oracle:.3}).",
        100.0 * oracle
    );
    for t in rest {
        let (th, bh) = (
            t.engine_hit_rate.or(t.client_hit_rate),
            base.engine_hit_rate.or(base.client_hit_rate),
        );
        let _ = writeln!(
            out,
            "- hit rate: {} {} ({}), {} {} ({}).",
            t.name,
            hit(t),
            pct_of(th, oracle),
            base.name,
            hit(base),
            pct_of(bh, oracle),
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let _ = writeln!(
            out,
            "- every cache hit skips that part of the prefill: TTFT mean {:.1} ms vs {:.1} ms \
             (x{:.2}), p50 {:.1} vs {:.1} ms, p90 {:.1} vs {:.1} ms.",
            t.ttft_ms.mean,
            base.ttft_ms.mean,
            ratio(t.ttft_ms.mean, base.ttft_ms.mean),
            t.ttft_ms.p50,
            base.ttft_ms.p50,
            t.ttft_ms.p90,
            base.ttft_ms.p90,
        );
        if let (Some(ts), Some(bs)) = (t.share_max_over_mean, base.share_max_over_mean) {
            let _ = writeln!(
                out,
                "- load spread (busiest engine's requests over the mean): {} {ts:.2}, {} {bs:.2}.",
                t.name, base.name
            );
        }
        let failed = |t: &TargetReport| t.requests - t.succeeded;
        if failed(t) + failed(base) > 0 {
            let _ = writeln!(
                out,
                "- failed requests: {} {}, {} {}.",
                t.name,
                failed(t),
                base.name,
                failed(base)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::client::Api;
    use crate::report::WorkloadInfo;
    use crate::runner::Mode;
    use crate::stats::summarize;
    use crate::workload::WorkloadKind;

    fn target(name: &str, hit: f64, ttft: &[f64], share: f64) -> TargetReport {
        TargetReport {
            name: name.into(),
            url: "http://gw".into(),
            requests: ttft.len(),
            succeeded: ttft.len(),
            errors: BTreeMap::new(),
            duration_s: 1.0,
            requests_per_s: 1.0,
            output_tokens_per_s: 1.0,
            ttft_ms: summarize(ttft),
            e2e_ms: summarize(ttft),
            engine_hit_rate: Some(hit),
            client_hit_rate: None,
            share_max_over_mean: Some(share),
            workers: Vec::new(),
            ttft_samples_ms: Vec::new(),
        }
    }

    #[test]
    fn explains_hit_rates_against_the_oracle_and_ttft_ratio() {
        let report = Report {
            workload: WorkloadInfo {
                kind: WorkloadKind::SharedPrefix,
                shape: WorkloadKind::SharedPrefix.default_shape(),
                requests: 2,
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
                target("round-robin", 0.4, &[40.0, 40.0], 1.0),
                target("kvroute", 0.76, &[10.0, 10.0], 1.25),
            ],
        };
        let text = explanation(&report);
        assert!(text.contains("80.0% of the prompt"), "{text}");
        assert!(text.contains("kvroute 0.760 (95% of the oracle)"), "{text}");
        assert!(
            text.contains("round-robin 0.400 (50% of the oracle)"),
            "{text}"
        );
        assert!(
            text.contains("TTFT mean 10.0 ms vs 40.0 ms (x0.25)"),
            "{text}"
        );
        assert!(text.contains("kvroute 1.25, round-robin 1.00"), "{text}");
        assert!(!text.contains("failed"), "{text}");
    }
}
