//! Per-worker circuit breaker: passive outlier detection from request results.
//!
//! Fed by the shells with the result of every forwarded request that reached the worker (a 5xx
//! answered by the worker is a failure, anything else a success; see [`ResponseOrigin`]: an
//! error the proxy produced itself says nothing about the worker). `consecutive_failures`
//! failures in a row open the circuit: the worker gets no new requests for `cooldown_ms`.
//! After the cooldown the circuit is half-open: one trial request is let through; its success
//! closes the circuit, its failure opens it again for another cooldown. A trial that ends
//! without a result (the client left before the response headers) frees the slot for the next
//! trial, and so does a trial still unanswered after `trial_timeout_ms`.
//!
//! Circuits never exclude the whole fleet: when fewer than `panic_threshold` of the candidates
//! would remain, the router ignores circuits (as Envoy's load balancer panic threshold does),
//! and health checks stay the authority on which workers are up.

use serde::{Deserialize, Serialize};

/// Circuit-breaker settings (the `router.circuit` config section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures that open a worker's circuit; 0 disables the breaker.
    pub consecutive_failures: u32,
    /// How long an open circuit keeps the worker out, in milliseconds.
    pub cooldown_ms: u64,
    /// How long a half-open circuit waits for its trial's response headers before it lets
    /// another trial through, in milliseconds.
    pub trial_timeout_ms: u64,
    /// Share of the candidates (0.0..=1.0) that must have a usable circuit for circuits to
    /// be obeyed; below it every candidate is tried (panic mode). 0 never panics (but still
    /// routes when every circuit is open).
    pub panic_threshold: f64,
}

impl Default for CircuitConfig {
    fn default() -> CircuitConfig {
        CircuitConfig {
            consecutive_failures: 5,
            cooldown_ms: 5_000,
            trial_timeout_ms: 30_000,
            panic_threshold: 0.5,
        }
    }
}

impl CircuitConfig {
    /// Checks the ranges; the error names the field under `router.circuit.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("router.circuit.{f}");
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return Err((field("panic_threshold"), "must be within 0.0..=1.0".into()));
        }
        if self.consecutive_failures > 0 && self.cooldown_ms == 0 {
            return Err((field("cooldown_ms"), "must be positive".into()));
        }
        if self.consecutive_failures > 0 && self.trial_timeout_ms == 0 {
            return Err((field("trial_timeout_ms"), "must be positive".into()));
        }
        Ok(())
    }
}

/// Where the response that ended a request came from, as far as the proxy tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseOrigin {
    /// The worker answered (Envoy's `response.code_details` is `via_upstream`, or the response
    /// carries the router's `x-envoy-upstream-service-time`).
    Upstream,
    /// The proxy answered itself without a worker's response: no host, no original
    /// destination, connection refused, reset before the headers, timeout, its own filters.
    Proxy,
    /// Nothing says: counted only when it is a success.
    Unknown,
}

impl ResponseOrigin {
    /// Classifies a response from what the proxy exposes: Envoy's `response.code_details`
    /// attribute when sent, else whether the response carries the header Envoy's router adds
    /// to upstream responses (`x-envoy-upstream-service-time`). A proxy configured to
    /// suppress that header and to send no attributes gives `Unknown`.
    pub fn classify(code_details: Option<&str>, upstream_timing_header: bool) -> ResponseOrigin {
        match code_details.map(str::trim).filter(|d| !d.is_empty()) {
            Some("via_upstream") => ResponseOrigin::Upstream,
            Some(_) => ResponseOrigin::Proxy,
            None if upstream_timing_header => ResponseOrigin::Upstream,
            None => ResponseOrigin::Unknown,
        }
    }
}

/// Header Envoy's router filter adds to every response that came from an upstream.
pub const UPSTREAM_TIMING_HEADER: &str = "x-envoy-upstream-service-time";

/// Where a circuit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// No requests until `until_ms`.
    Open {
        /// End of the cooldown, on the shell's clock.
        until_ms: u64,
    },
    /// Cooldown over: one trial request at a time.
    HalfOpen {
        /// The trial request is out.
        trial_in_flight: bool,
    },
}

impl CircuitState {
    /// Lower-case name for metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen { .. } => "half_open",
        }
    }
}

/// A change of state worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The circuit opened (or re-opened after a failed trial).
    Opened,
    /// A trial succeeded: the circuit closed.
    Closed,
}

/// The trial request of a half-open circuit: which request it is (the router's request
/// sequence number) and when it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trial {
    request: u64,
    sent_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { trial: Option<Trial> },
}

/// One worker's breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    phase: Phase,
    failures: u32,
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit {
            phase: Phase::Closed,
            failures: 0,
        }
    }
}

impl Circuit {
    /// The phase as of `now_ms`: an open circuit past its cooldown is half-open, a trial out
    /// for longer than the trial timeout no longer holds the slot.
    fn phase(&self, now_ms: u64, config: &CircuitConfig) -> Phase {
        match self.phase {
            Phase::Open { until_ms } if now_ms >= until_ms => Phase::HalfOpen { trial: None },
            Phase::HalfOpen { trial: Some(t) }
                if now_ms.saturating_sub(t.sent_ms) >= config.trial_timeout_ms =>
            {
                Phase::HalfOpen { trial: None }
            }
            p => p,
        }
    }

    /// The current state as of `now_ms`.
    pub fn state(&self, now_ms: u64, config: &CircuitConfig) -> CircuitState {
        match self.phase(now_ms, config) {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until_ms } => CircuitState::Open { until_ms },
            Phase::HalfOpen { trial } => CircuitState::HalfOpen {
                trial_in_flight: trial.is_some(),
            },
        }
    }

    /// Whether a new request may be sent now.
    pub fn allows(&self, now_ms: u64, config: &CircuitConfig) -> bool {
        match self.phase(now_ms, config) {
            Phase::Closed => true,
            Phase::Open { .. } => false,
            Phase::HalfOpen { trial } => trial.is_none(),
        }
    }

    /// Request number `request` was sent: in half-open state it becomes the trial. Returns
    /// whether it did.
    pub fn on_sent(&mut self, request: u64, now_ms: u64, config: &CircuitConfig) -> bool {
        if let Phase::HalfOpen { trial: None } = self.phase(now_ms, config) {
            self.phase = Phase::HalfOpen {
                trial: Some(Trial {
                    request,
                    sent_ms: now_ms,
                }),
            };
            return true;
        }
        false
    }

    /// Request number `request` ended without a result: if it was the trial, the next
    /// request may be the trial.
    pub fn on_abandoned(&mut self, request: u64) {
        if let Phase::HalfOpen { trial: Some(t) } = self.phase
            && t.request == request
        {
            self.phase = Phase::HalfOpen { trial: None };
        }
    }

    /// Records a request's result; returns the transition it caused, if any.
    pub fn record(
        &mut self,
        success: bool,
        now_ms: u64,
        config: &CircuitConfig,
    ) -> Option<Transition> {
        if config.consecutive_failures == 0 {
            return None;
        }
        let phase = self.phase(now_ms, config);
        if success {
            self.failures = 0;
            if phase == Phase::Closed {
                return None;
            }
            // A success while open comes from a request sent before the circuit opened;
            // it shows the worker answers again, like a trial would.
            self.phase = Phase::Closed;
            return Some(Transition::Closed);
        }
        self.failures = self.failures.saturating_add(1);
        let open = match phase {
            Phase::Closed => self.failures >= config.consecutive_failures,
            Phase::HalfOpen { .. } => true,
            // Already open: late failures of older requests do not extend the cooldown.
            Phase::Open { .. } => false,
        };
        if !open {
            return None;
        }
        self.phase = Phase::Open {
            until_ms: now_ms.saturating_add(config.cooldown_ms),
        };
        Some(Transition::Opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CircuitConfig {
        CircuitConfig {
            consecutive_failures: 3,
            cooldown_ms: 100,
            trial_timeout_ms: 1_000,
            panic_threshold: 0.5,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut c = Circuit::default();
        assert_eq!(c.record(false, 0, &cfg()), None);
        assert_eq!(c.record(false, 0, &cfg()), None);
        assert_eq!(c.record(true, 0, &cfg()), None);
        assert_eq!(c.record(false, 0, &cfg()), None);
        assert_eq!(c.record(false, 0, &cfg()), None);
        assert!(c.allows(0, &cfg()));
        assert_eq!(c.record(false, 5, &cfg()), Some(Transition::Opened));
        assert!(!c.allows(5, &cfg()));
        assert!(!c.allows(104, &cfg()));
        assert_eq!(c.state(50, &cfg()).as_str(), "open");
    }

    #[test]
    fn half_open_lets_one_trial_through_then_closes_or_reopens() {
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.record(false, 0, &cfg());
        }
        assert!(c.allows(100, &cfg()));
        assert!(c.on_sent(1, 100, &cfg()));
        assert!(!c.allows(101, &cfg()), "only one trial at a time");
        assert!(!c.on_sent(2, 101, &cfg()));
        assert_eq!(c.record(false, 110, &cfg()), Some(Transition::Opened));
        assert!(!c.allows(150, &cfg()));
        assert!(c.allows(210, &cfg()));
        c.on_sent(3, 210, &cfg());
        assert_eq!(c.record(true, 220, &cfg()), Some(Transition::Closed));
        assert!(c.allows(220, &cfg()));
        assert_eq!(c.state(220, &cfg()), CircuitState::Closed);
    }

    #[test]
    fn an_abandoned_trial_frees_the_slot_and_a_stale_one_expires() {
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.record(false, 0, &cfg());
        }
        assert!(c.on_sent(7, 100, &cfg()));
        // Another request's end does not free the trial's slot.
        c.on_abandoned(8);
        assert!(!c.allows(100, &cfg()));
        c.on_abandoned(7);
        assert!(
            c.allows(100, &cfg()),
            "the client left: the next request is the trial"
        );
        assert!(c.on_sent(9, 200, &cfg()));
        assert!(!c.allows(1_199, &cfg()));
        assert!(c.allows(1_200, &cfg()), "an unanswered trial expires");
        assert_eq!(
            c.state(1_200, &cfg()),
            CircuitState::HalfOpen {
                trial_in_flight: false
            }
        );
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let off = CircuitConfig {
            consecutive_failures: 0,
            ..cfg()
        };
        let mut c = Circuit::default();
        for _ in 0..100 {
            assert_eq!(c.record(false, 0, &off), None);
        }
        assert!(c.allows(0, &off));
    }

    #[test]
    fn origin_is_classified_from_what_the_proxy_exposes() {
        use ResponseOrigin::*;
        assert_eq!(
            ResponseOrigin::classify(Some("via_upstream"), false),
            Upstream
        );
        assert_eq!(
            ResponseOrigin::classify(Some("no_healthy_upstream"), true),
            Proxy
        );
        assert_eq!(
            ResponseOrigin::classify(
                Some("upstream_reset_before_response_started{connection_failure}"),
                false
            ),
            Proxy
        );
        assert_eq!(ResponseOrigin::classify(None, true), Upstream);
        assert_eq!(ResponseOrigin::classify(Some(""), false), Unknown);
        assert_eq!(ResponseOrigin::classify(None, false), Unknown);
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(cfg().validate().is_ok());
        let bad = CircuitConfig {
            panic_threshold: 1.5,
            ..cfg()
        };
        assert_eq!(
            bad.validate().unwrap_err().0,
            "router.circuit.panic_threshold"
        );
    }
}
