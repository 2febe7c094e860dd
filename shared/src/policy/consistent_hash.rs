//! `consistent_hash` (placeholder being replaced: ranks by load only).

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Parameters of `consistent_hash`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistentHashConfig {}

/// The `consistent_hash` policy.
#[derive(Debug)]
pub struct ConsistentHashPolicy {
    #[allow(dead_code)]
    config: ConsistentHashConfig,
}

impl ConsistentHashPolicy {
    /// Builds the policy.
    pub fn new(config: ConsistentHashConfig) -> ConsistentHashPolicy {
        ConsistentHashPolicy { config }
    }
}

impl Policy for ConsistentHashPolicy {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(
        &mut self,
        _req: &RouteRequest<'_>,
        candidates: &[&Worker],
        _env: &mut PolicyEnv<'_>,
    ) -> Pick {
        Pick {
            ranked: rank_with_first(None, candidates),
            prefix_match: None,
        }
    }
}
