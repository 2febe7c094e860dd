//! `bucket` (placeholder being replaced: ranks by load only).

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Parameters of `bucket`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketConfig {}

/// The `bucket` policy.
#[derive(Debug)]
pub struct BucketPolicy {
    #[allow(dead_code)]
    config: BucketConfig,
}

impl BucketPolicy {
    /// Builds the policy.
    pub fn new(config: BucketConfig) -> BucketPolicy {
        BucketPolicy { config }
    }
}

impl Policy for BucketPolicy {
    fn name(&self) -> &'static str {
        "bucket"
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
