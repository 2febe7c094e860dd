//! Istio `networking.istio.io/v1alpha3` EnvoyFilter and `networking.istio.io/v1` DestinationRule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::custom_resource;

custom_resource!(
    /// Patches to the Envoy config Istio generates.
    EnvoyFilter,
    EnvoyFilterSpec
);
custom_resource!(
    /// Traffic policy for a destination host.
    DestinationRule,
    DestinationRuleSpec
);

/// `EnvoyFilter.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// Proxies the filter applies to.
    pub workload_selector: Option<WorkloadSelector>,
    /// The patches.
    pub config_patches: Vec<ConfigPatch>,
    /// Order among EnvoyFilters.
    pub priority: Option<i32>,
}

/// `spec.workloadSelector`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// `spec.configPatches[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatch {
    /// `HTTP_FILTER`, `CLUSTER`, `LISTENER`, ...
    pub apply_to: String,
    /// What the patch applies to.
    #[serde(rename = "match")]
    pub matcher: Option<PatchMatch>,
    /// The patch.
    pub patch: Patch,
}

/// `configPatches[].match`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchMatch {
    /// `GATEWAY`, `SIDECAR_INBOUND`, `SIDECAR_OUTBOUND` or `ANY`.
    pub context: Option<String>,
    /// Listener match.
    pub listener: Option<ListenerMatch>,
    /// Cluster match.
    pub cluster: Option<ClusterMatch>,
}

/// `match.listener`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    /// Listener port.
    pub port_number: Option<u32>,
    /// Filter chain match.
    pub filter_chain: Option<FilterChainMatch>,
}

/// `listener.filterChain`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// Network filter match.
    pub filter: Option<FilterMatch>,
}

/// `filterChain.filter`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    /// Network filter name.
    pub name: String,
    /// HTTP filter inside it.
    pub sub_filter: Option<SubFilterMatch>,
}

/// `filter.subFilter`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubFilterMatch {
    /// HTTP filter name.
    pub name: String,
}

/// `match.cluster`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    /// Service FQDN.
    pub service: Option<String>,
    /// Service port.
    pub port_number: Option<u32>,
    /// Exact cluster name.
    pub name: Option<String>,
}

/// `configPatches[].patch`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// `MERGE`, `ADD`, `INSERT_BEFORE`, ...
    pub operation: String,
    /// Envoy config fragment (checked by Envoy itself when applied).
    pub value: Option<Value>,
}

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// Destination host (Service FQDN).
    pub host: String,
    /// Policy.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Namespaces the rule is visible to.
    pub export_to: Option<Vec<String>>,
}

/// `spec.trafficPolicy`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// TLS origination.
    pub tls: Option<ClientTls>,
    /// Connection pool.
    pub connection_pool: Option<ConnectionPool>,
}

/// `trafficPolicy.tls`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: String,
    /// SNI sent.
    pub sni: Option<String>,
    /// Names accepted in the server certificate.
    pub subject_alt_names: Option<Vec<String>>,
}

/// `trafficPolicy.connectionPool`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// HTTP settings.
    pub http: Option<HttpPool>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE`.
    pub h2_upgrade_policy: Option<String>,
    /// Idle timeout of upstream connections.
    pub idle_timeout: Option<String>,
}
