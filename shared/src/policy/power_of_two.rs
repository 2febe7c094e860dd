//! `power_of_two`: two random candidates, the less loaded wins.

use rand::Rng;

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Power of two choices on [`Worker::load`].
#[derive(Debug, Default)]
pub struct PowerOfTwoPolicy;

impl Policy for PowerOfTwoPolicy {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn pick(
        &mut self,
        _req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let n = candidates.len();
        let a = env.rng.random_range(0..n);
        let b = if n > 1 {
            (a + 1 + env.rng.random_range(0..n - 1)) % n
        } else {
            a
        };
        let first = if candidates[b].load() < candidates[a].load() {
            candidates[b]
        } else {
            candidates[a]
        };
        Pick {
            ranked: rank_with_first(Some(first.id), candidates),
            prefix_match: None,
        }
    }
}
