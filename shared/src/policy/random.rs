//! `random`: a uniformly random candidate, the rest by load.

use rand::Rng;

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Picks uniformly at random.
#[derive(Debug, Default)]
pub struct RandomPolicy;

impl Policy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(
        &mut self,
        _req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let first = candidates[env.rng.random_range(0..candidates.len())].id;
        Pick {
            ranked: rank_with_first(Some(first), candidates),
            prefix_match: None,
        }
    }
}
