//! Choosing a worker from scores.

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// Scores closer than this are ties.
const TIE: f64 = 1e-9;

/// How the worker is chosen from the scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PickerConfig {
    /// The highest score; ties broken at random.
    #[default]
    MaxScore,
    /// A random draw with probability proportional to `exp(score / temperature)`: low
    /// temperatures approach `max_score`, high ones approach uniform.
    Softmax {
        /// Softmax temperature, in score units (positive).
        temperature: f64,
    },
}

impl PickerConfig {
    /// Positions of `scores` ranked: the choice first, then by descending score (ties in
    /// random order). Empty only when `scores` is.
    pub fn rank(&self, scores: &[f64], rng: &mut dyn RngCore) -> Vec<usize> {
        // Random keys break ties without favouring list positions.
        let jitter: Vec<u32> = scores.iter().map(|_| rng.random()).collect();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (scores[a], scores[b]);
            if (sa - sb).abs() <= TIE {
                jitter[a].cmp(&jitter[b])
            } else {
                sb.total_cmp(&sa)
            }
        });
        if let PickerConfig::Softmax { temperature } = *self
            && let Some(pos) = softmax_draw(scores, temperature, rng)
        {
            let at = order.iter().position(|&i| i == pos).unwrap_or(0);
            let chosen = order.remove(at);
            order.insert(0, chosen);
        }
        order
    }
}

/// A position drawn with probability `exp((s - max) / t)`; `None` when there is nothing to
/// draw or the temperature is not positive and finite.
fn softmax_draw(scores: &[f64], t: f64, rng: &mut dyn RngCore) -> Option<usize> {
    if scores.is_empty() || !(t.is_finite() && t > 0.0) {
        return None;
    }
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| ((s - max) / t).exp()).collect();
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(i);
        }
        x -= w;
    }
    Some(scores.len() - 1)
}
