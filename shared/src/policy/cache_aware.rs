//! `cache_aware` (placeholder being replaced: ranks by load only).

use serde::{Deserialize, Serialize};

use super::{Pick, Policy, PolicyEnv, rank_with_first};
use crate::request::RouteRequest;
use crate::worker::Worker;

/// Parameters of `cache_aware`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheAwareConfig {}

/// The `cache_aware` policy.
#[derive(Debug)]
pub struct CacheAwarePolicy {
    #[allow(dead_code)]
    config: CacheAwareConfig,
}

impl CacheAwarePolicy {
    /// Builds the policy.
    pub fn new(config: CacheAwareConfig) -> CacheAwarePolicy {
        CacheAwarePolicy { config }
    }
}

impl Policy for CacheAwarePolicy {
    fn name(&self) -> &'static str {
        "cache_aware"
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
