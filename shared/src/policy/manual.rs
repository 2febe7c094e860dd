//! `manual` (placeholder being replaced: ranks by load only).

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Parameters of `manual`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManualConfig {}

/// The `manual` policy.
#[derive(Debug)]
pub struct ManualPolicy {
    #[allow(dead_code)]
    config: ManualConfig,
}

impl ManualPolicy {
    /// Builds the policy.
    pub fn new(config: ManualConfig) -> ManualPolicy {
        ManualPolicy { config }
    }
}

impl Policy for ManualPolicy {
    fn name(&self) -> &'static str {
        "manual"
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
