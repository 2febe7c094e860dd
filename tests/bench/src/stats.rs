//! Summary statistics: percentiles of latency samples and load share across workers.

use serde::Serialize;

/// Percentile summary of a sample (milliseconds in reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// Percentile `p` (0..=100) of an ascending sample, linear between closest ranks; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Sorts a copy of `samples` (non-finite values dropped) and summarises it.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return Summary::default();
    }
    Summary {
        count: sorted.len(),
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        min: sorted[0],
        p50: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        p99: percentile(&sorted, 99.0),
        max: sorted[sorted.len() - 1],
    }
}

/// Largest share over the mean share: 1.0 is a perfectly even spread, `n` is all on one of `n`.
/// `None` when there are no workers or no requests.
pub fn max_over_mean(counts: &[f64]) -> Option<f64> {
    if counts.is_empty() {
        return None;
    }
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    let max = counts.iter().copied().fold(f64::MIN, f64::max);
    (mean > 0.0).then(|| max / mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_of_one_to_hundred() {
        let sample: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&sample);
        assert_eq!(s.count, 100);
        assert!(close(s.mean, 50.5));
        assert!(close(s.p50, 50.5));
        assert!(close(s.p90, 90.1));
        assert!(close(s.p99, 99.01));
        assert!(close(s.min, 1.0));
        assert!(close(s.max, 100.0));
    }

    #[test]
    fn small_and_degenerate_samples() {
        assert_eq!(summarize(&[]), Summary::default());
        let one = summarize(&[4.0]);
        assert!(close(one.p50, 4.0) && close(one.p99, 4.0));
        let s = summarize(&[10.0, f64::NAN, 20.0]);
        assert_eq!(s.count, 2);
        assert!(close(s.p50, 15.0));
        assert!(close(percentile(&[1.0, 2.0, 3.0, 4.0], 25.0), 1.75));
    }

    #[test]
    fn share_max_over_mean() {
        assert!(close(
            max_over_mean(&[5.0, 5.0, 5.0, 5.0]).unwrap_or(0.0),
            1.0
        ));
        assert!(close(
            max_over_mean(&[8.0, 0.0, 0.0, 0.0]).unwrap_or(0.0),
            4.0
        ));
        assert!(close(
            max_over_mean(&[6.0, 2.0, 2.0, 2.0]).unwrap_or(0.0),
            2.0
        ));
        assert_eq!(max_over_mean(&[]), None);
        assert_eq!(max_over_mean(&[0.0, 0.0]), None);
    }
}
