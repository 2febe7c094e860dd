//! `prefix_hash` (placeholder being replaced: ranks by load only).

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Parameters of `prefix_hash`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixHashConfig {}

/// The `prefix_hash` policy.
#[derive(Debug)]
pub struct PrefixHashPolicy {
    #[allow(dead_code)]
    config: PrefixHashConfig,
}

impl PrefixHashPolicy {
    /// Builds the policy.
    pub fn new(config: PrefixHashConfig) -> PrefixHashPolicy {
        PrefixHashPolicy { config }
    }
}

impl Policy for PrefixHashPolicy {
    fn name(&self) -> &'static str {
        "prefix_hash"
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
