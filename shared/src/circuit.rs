//! Per-worker circuit breaker: passive outlier detection from request results.
//!
//! Fed by the shells with the result of every forwarded request (a 5xx status or a stream
//! reset is a failure, anything else a success). `consecutive_failures` failures in a row
//! open the circuit: the worker gets no new requests for `cooldown_ms`. After the cooldown
//! the circuit is half-open: exactly one request is let through; its success closes the
//! circuit, its failure opens it again for another cooldown.

use serde::{Deserialize, Serialize};

/// Circuit-breaker settings (the `router.circuit` config section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures that open a worker's circuit; 0 disables the breaker.
    pub consecutive_failures: u32,
    /// How long an open circuit keeps the worker out, in milliseconds.
    pub cooldown_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> CircuitConfig {
        CircuitConfig {
            consecutive_failures: 5,
            cooldown_ms: 5_000,
        }
    }
}

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

/// One worker's breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Circuit {
    state: CircuitState,
    failures: u32,
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit {
            state: CircuitState::Closed,
            failures: 0,
        }
    }
}

impl Circuit {
    /// The current state as of `now_ms` (an open circuit past its cooldown is half-open).
    pub fn state(&self, now_ms: u64) -> CircuitState {
        match self.state {
            CircuitState::Open { until_ms } if now_ms >= until_ms => CircuitState::HalfOpen {
                trial_in_flight: false,
            },
            s => s,
        }
    }

    /// Whether a new request may be sent now.
    pub fn allows(&self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            CircuitState::Closed => true,
            CircuitState::Open { .. } => false,
            CircuitState::HalfOpen { trial_in_flight } => !trial_in_flight,
        }
    }

    /// A request was sent: in half-open state it is the trial.
    pub fn on_sent(&mut self, now_ms: u64) {
        if let CircuitState::HalfOpen { .. } = self.state(now_ms) {
            self.state = CircuitState::HalfOpen {
                trial_in_flight: true,
            };
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
        let state = self.state(now_ms);
        if success {
            self.failures = 0;
            if state == CircuitState::Closed {
                return None;
            }
            // A success while open comes from a request sent before the circuit opened;
            // it shows the worker answers again, like a trial would.
            self.state = CircuitState::Closed;
            return Some(Transition::Closed);
        }
        self.failures = self.failures.saturating_add(1);
        let open = match state {
            CircuitState::Closed => self.failures >= config.consecutive_failures,
            CircuitState::HalfOpen { .. } => true,
            // Already open: late failures of older requests do not extend the cooldown.
            CircuitState::Open { .. } => false,
        };
        if !open {
            return None;
        }
        self.state = CircuitState::Open {
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
        assert!(c.allows(0));
        assert_eq!(c.record(false, 5, &cfg()), Some(Transition::Opened));
        assert!(!c.allows(5));
        assert!(!c.allows(104));
        assert_eq!(c.state(50).as_str(), "open");
    }

    #[test]
    fn half_open_lets_one_trial_through_then_closes_or_reopens() {
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.record(false, 0, &cfg());
        }
        assert!(c.allows(100));
        c.on_sent(100);
        assert!(!c.allows(101), "only one trial at a time");
        assert_eq!(c.record(false, 110, &cfg()), Some(Transition::Opened));
        assert!(!c.allows(150));
        assert!(c.allows(210));
        c.on_sent(210);
        assert_eq!(c.record(true, 220, &cfg()), Some(Transition::Closed));
        assert!(c.allows(220));
        assert_eq!(c.state(220), CircuitState::Closed);
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let off = CircuitConfig {
            consecutive_failures: 0,
            cooldown_ms: 100,
        };
        let mut c = Circuit::default();
        for _ in 0..100 {
            assert_eq!(c.record(false, 0, &off), None);
        }
        assert!(c.allows(0));
    }
}
