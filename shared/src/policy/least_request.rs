//! `least_request`: the candidate with the fewest requests in flight, random tie-break.

use rand::Rng;

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Fewest in flight (plus engine queue, when scraped) wins; ties broken at random so idle
/// fleets spread instead of piling on the first worker.
#[derive(Debug, Default)]
pub struct LeastRequestPolicy;

impl Policy for LeastRequestPolicy {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn pick(
        &mut self,
        _req: &RouteRequest<'_>,
        candidates: &[&Worker],
        env: &mut PolicyEnv<'_>,
    ) -> Pick {
        let min = candidates.iter().map(|w| w.load()).min().unwrap_or(0);
        let tied: Vec<&&Worker> = candidates.iter().filter(|w| w.load() == min).collect();
        let first = tied[env.rng.random_range(0..tied.len())].id;
        Pick {
            ranked: rank_with_first(Some(first), candidates),
            prefix_match: None,
        }
    }
}
