//! What the scorers look at, and how each signal becomes a 0..=1 score.
//!
//! | scorer | signal | score |
//! |---|---|---|
//! | prefix | share of the prompt in the prefix index for the worker | the share |
//! | queue | engine waiting queue, else in-flight | `1 - q / max q` (1 when all are 0) |
//! | running | engine running requests, else in-flight | `1 - r / max r` (1 when all are 0) |
//! | kv_cache | engine KV-cache use (unknown: the mean of the known ones) | `1 - use` |
//! | lora | adapter loaded (no adapter requested: every worker) | 1 or 0 |
//! | session | the worker served this session last | 1 or 0 |
//!
//! The queue is the engine's WAITING queue, as the Gateway API Inference Extension's scorer
//! reads it: requests running in a continuous batch cost a cache hit little, a queue costs it
//! all. Without a fresh report the router's in-flight count stands in (it over-counts, which
//! errs on the side of balance).
//!
//! Load is normalized by the busiest candidate rather than by the min..max range, so a
//! difference of one request among busy workers moves the score a little, not from 1 to 0.

use super::ScorerWeights;
use crate::worker::{Worker, WorkerId};

/// The raw signals of one candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signals {
    /// Share of the prompt likely cached, 0..=1.
    pub prefix: f64,
    /// Queued requests (engine waiting queue, else in-flight).
    pub queue: u32,
    /// Running requests.
    pub running: u32,
    /// KV-cache use 0..=1, when the engine reported it.
    pub kv_cache: Option<f64>,
    /// The requested adapter is loaded (true when none is requested).
    pub lora: bool,
    /// This worker served the session last.
    pub session: bool,
}

/// Whether `w` has LoRA adapter `adapter` loaded.
pub fn has_adapter(w: &Worker, adapter: &str) -> bool {
    w.spec.lora_adapters.iter().any(|a| a == adapter)
}

impl Signals {
    /// The signals of `w` for a request whose prompt `w` holds `prefix` of, naming LoRA
    /// `lora`, whose session was last served by `session`.
    pub fn of(w: &Worker, prefix: f32, lora: Option<&str>, session: Option<WorkerId>) -> Signals {
        Signals {
            prefix: f64::from(prefix).clamp(0.0, 1.0),
            queue: w.load.map_or(w.routed_in_flight(), |l| l.waiting),
            running: w.load.map_or(w.routed_in_flight(), |l| l.running),
            kv_cache: w
                .load
                .map(|l| f64::from(l.kv_cache_usage))
                .filter(|u| u.is_finite())
                .map(|u| u.clamp(0.0, 1.0)),
            lora: lora.is_none_or(|a| has_adapter(w, a)),
            session: session == Some(w.id),
        }
    }
}

/// Per-candidate scores, each scorer's in 0..=1, and the weighted totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Prefix scores.
    pub prefix: Vec<f64>,
    /// Queue scores.
    pub queue: Vec<f64>,
    /// Running scores.
    pub running: Vec<f64>,
    /// KV-cache scores.
    pub kv_cache: Vec<f64>,
    /// LoRA scores.
    pub lora: Vec<f64>,
    /// Session scores.
    pub session: Vec<f64>,
    /// Weighted sums.
    pub total: Vec<f64>,
}

/// `1 - v / max v` per value; 1 for all when every value is 0.
fn fewer_is_better(values: impl Iterator<Item = u32> + Clone) -> Vec<f64> {
    let max = values.clone().max().unwrap_or(0);
    values
        .map(|v| {
            if max == 0 {
                1.0
            } else {
                1.0 - f64::from(v) / f64::from(max)
            }
        })
        .collect()
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Scores {
    /// Scores every candidate and sums with `weights`.
    pub fn compute(signals: &[Signals], weights: &ScorerWeights) -> Scores {
        let known: Vec<f64> = signals.iter().filter_map(|s| s.kv_cache).collect();
        let mean_kv = if known.is_empty() {
            0.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        let mut s = Scores {
            prefix: signals.iter().map(|s| s.prefix).collect(),
            queue: fewer_is_better(signals.iter().map(|s| s.queue)),
            running: fewer_is_better(signals.iter().map(|s| s.running)),
            kv_cache: signals
                .iter()
                .map(|s| 1.0 - s.kv_cache.unwrap_or(mean_kv))
                .collect(),
            lora: signals.iter().map(|s| flag(s.lora)).collect(),
            session: signals.iter().map(|s| flag(s.session)).collect(),
            total: Vec::with_capacity(signals.len()),
        };
        let w = weights;
        s.total = (0..signals.len())
            .map(|i| {
                w.prefix * s.prefix[i]
                    + w.queue * s.queue[i]
                    + w.running * s.running[i]
                    + w.kv_cache * s.kv_cache[i]
                    + w.lora * s.lora[i]
                    + w.session * s.session[i]
            })
            .map(|t| if t.is_finite() { t } else { 0.0 })
            .collect();
        s
    }
}
