//! A small hand-written SVG: TTFT CDF per target and per-worker request share.

use std::fmt::Write as _;

use crate::report::Report;

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 960.0;
const H: f64 = 440.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 380.0;
const CDF_X: (f64, f64) = (70.0, 560.0);
const BAR_X: (f64, f64) = (640.0, 930.0);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round tick step giving about `n` ticks over `0..max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Renders the report's plot as an SVG document.
pub fn svg(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{} requests, {}; oracle hit rate {:.3}</text>"#,
        W / 2.0,
        report.workload.requests,
        report.workload.kind,
        report.workload.oracle_hit_rate
    );
    cdf(&mut s, report);
    shares(&mut s, report);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, x: (f64, f64), title: &str, xlabel: &str) {
    let _ = writeln!(
        s,
        r#"<path d="M{} {TOP} V{BOTTOM} H{}" stroke="black" fill="none"/>"#,
        x.0, x.1
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x.0 + x.1) / 2.0,
        TOP - 8.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x.0 + x.1) / 2.0,
        BOTTOM + 34.0,
        esc(xlabel)
    );
}

fn cdf(s: &mut String, report: &Report) {
    axes(s, CDF_X, "TTFT CDF", "time to first token (ms)");
    let max = report
        .targets
        .iter()
        .filter_map(|t| t.ttft_samples_ms.last().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = tick_step(max, 6.0);
    let xmax = (max / step).ceil() * step;
    let px = |v: f64| CDF_X.0 + (CDF_X.1 - CDF_X.0) * v / xmax;
    let py = |p: f64| BOTTOM - (BOTTOM - TOP) * p;
    let mut v = 0.0;
    while v <= xmax + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{BOTTOM}" x2="{0:.1}" y2="{TOP}" stroke="#ddd"/><text x="{0:.1}" y="{1}" text-anchor="middle">{2}</text>"##,
            px(v),
            BOTTOM + 16.0,
            v
        );
        v += step;
    }
    for p in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#ddd"/><text x="{3}" y="{4:.1}" text-anchor="end">{p}</text>"##,
            CDF_X.0,
            py(p),
            CDF_X.1,
            CDF_X.0 - 6.0,
            py(p) + 4.0
        );
    }
    for (i, t) in report.targets.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = t.ttft_samples_ms.len();
        if n > 0 {
            let mut d = format!("M{:.1} {:.1}", px(0.0), py(0.0));
            for (k, v) in t.ttft_samples_ms.iter().enumerate() {
                let _ = write!(d, " H{:.1} V{:.1}", px(*v), py((k + 1) as f64 / n as f64));
            }
            let _ = writeln!(
                s,
                r#"<path d="{d}" stroke="{color}" stroke-width="2" fill="none"/>"#
            );
        }
        let hit = t.engine_hit_rate.or(t.client_hit_rate);
        let label = match hit {
            Some(h) => format!("{} (p50 {:.1} ms, hit {:.3})", t.name, t.ttft_ms.p50, h),
            None => format!("{} (p50 {:.1} ms)", t.name, t.ttft_ms.p50),
        };
        let y = BOTTOM - 20.0 - 18.0 * (report.targets.len() - 1 - i) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            CDF_X.1 - 230.0,
            y - 10.0,
            CDF_X.1 - 214.0,
            y,
            esc(&label)
        );
    }
}

fn shares(s: &mut String, report: &Report) {
    axes(
        s,
        BAR_X,
        "requests per engine / mean",
        "engines, grouped by target",
    );
    let groups: Vec<Vec<f64>> = report
        .targets
        .iter()
        .map(|t| {
            let counts: Vec<f64> = t
                .workers
                .iter()
                .map(|w| w.requests.unwrap_or(0.0))
                .collect();
            let mean = counts.iter().sum::<f64>() / counts.len().max(1) as f64;
            counts
                .iter()
                .map(|c| if mean > 0.0 { c / mean } else { 0.0 })
                .collect()
        })
        .collect();
    let top = groups.iter().flatten().copied().fold(1.5f64, f64::max);
    let step = tick_step(top, 5.0);
    let ymax = (top / step).ceil() * step;
    let py = |v: f64| BOTTOM - (BOTTOM - TOP) * v / ymax;
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#ddd"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
            BAR_X.0,
            py(v),
            BAR_X.1,
            BAR_X.0 - 6.0,
            py(v) + 4.0,
            v
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="black" stroke-dasharray="4 3"/>"#,
        BAR_X.0,
        py(1.0),
        BAR_X.1
    );
    let bars: usize = groups.iter().map(|g| g.len() + 1).sum::<usize>().max(1);
    let width = (BAR_X.1 - BAR_X.0 - 10.0) / bars as f64;
    let mut x = BAR_X.0 + 5.0 + width * 0.1;
    for (i, g) in groups.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for v in g {
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                x,
                py(*v),
                width * 0.8,
                BOTTOM - py(*v)
            );
            x += width;
        }
        x += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_tick_steps() {
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(47.0, 6.0), 10.0);
        assert_eq!(tick_step(1.2, 5.0), 0.25);
        assert_eq!(esc("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
