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
    /// Deepest JSON nesting accepted in a request body (400 above): a nesting bomb is
    /// refused here instead of reaching an engine's parser.
    pub max_json_depth: usize,
    /// Request-body bytes all streams together may hold in memory (ext_proc: the buffered
    /// body, and while it is routed its parsed and re-streamed copy). A request that would go
    /// over it gets 429 with `retry-after`. Must be at least twice `gateway.max_body_bytes`.
    pub max_buffered_bytes: u64,
}

/// Default of [`LimitsConfig::max_buffered_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 << 20;

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_in_flight: None,
            retry_after_secs: 1,
            decision_timeout_ms: None,
            on_decision_timeout: DeadlinePolicy::FailOpen,
            max_json_depth: 128,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

impl LimitsConfig {
    /// Whether a new request must be shed with `outstanding` requests already in flight.
    pub fn sheds(&self, outstanding: u64) -> bool {
        self.max_in_flight.is_some_and(|max| outstanding >= max)
    }
}

/// Whether the JSON text `body` nests arrays and objects deeper than `limit`. A linear scan
/// that skips strings (and escapes in them); it does not validate the JSON.
pub fn json_too_deep(body: &[u8], limit: usize) -> bool {
    if body.len() <= limit {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Jump from quote or backslash to the next one: prompts are mostly string
                // bytes, scanned here at memchr speed.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[i..]) {
                        None => return false,
                        Some(at) if body[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                    }
                    if i >= body.len() {
                        return false;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_skips_strings() {
        assert!(!json_too_deep(br#"{"a":[[1]]}"#, 3));
        assert!(json_too_deep(br#"{"a":[[[1]]]}"#, 3));
        assert!(!json_too_deep(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        let bomb = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(json_too_deep(bomb.as_bytes(), 128));
    }

    /// The byte-at-a-time scan the fast one must agree with.
    fn reference_depth_scan(body: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn depth_scan_matches_the_byte_scan(
            body in proptest::collection::vec(
                proptest::sample::select(b"[]{}\"\\a ".to_vec()), 0..64),
            limit in 0usize..6,
        ) {
            proptest::prop_assert_eq!(
                json_too_deep(&body, limit),
                reference_depth_scan(&body, limit)
            );
        }
    }

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
