//! Admission limits applied before routing (the `limits` config section).

use serde::{Deserialize, Serialize};

/// What to do with a request whose routing decision could not be made within
/// [`LimitsConfig::decision_timeout_ms`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlinePolicy {
    /// Let the request through without a destination: the proxy's fallback policy picks.
    #[default]
    FailOpen,
    /// Answer 503 with an OpenAI-style error body.
    Reject,
}

/// Global admission limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests routed and not yet completed, across every worker, above which new requests
    /// are shed with 429. `None`: no global limit (the per-worker cap is
    /// `router.max_in_flight_per_worker`).
    pub max_in_flight: Option<u64>,
    /// `retry-after` seconds sent with a 429.
    pub retry_after_secs: u32,
    /// Longest time one routing decision may take (waiting for the router included), in
    /// milliseconds. `None`: no deadline.
    pub decision_timeout_ms: Option<u64>,
    /// What a request gets when its decision misses the deadline.
    pub on_decision_timeout: DeadlinePolicy,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_in_flight: None,
            retry_after_secs: 1,
            decision_timeout_ms: None,
            on_decision_timeout: DeadlinePolicy::FailOpen,
        }
    }
}

impl LimitsConfig {
    /// Whether a new request must be shed with `outstanding` requests already in flight.
    pub fn sheds(&self, outstanding: u64) -> bool {
        self.max_in_flight.is_some_and(|max| outstanding >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_only_at_the_limit() {
        let none = LimitsConfig::default();
        assert!(!none.sheds(u64::MAX));
        let two = LimitsConfig {
            max_in_flight: Some(2),
            ..LimitsConfig::default()
        };
        assert!(!two.sheds(1));
        assert!(two.sheds(2));
    }
}
