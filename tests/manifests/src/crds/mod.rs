//! Hand-written types for the custom resources the manifests use, following the published CRD
//! schemas. Only the fields the manifests use are covered; every struct denies unknown fields.
//! Optional fields serialize as `null` when absent, which the round-trip comparison ignores.

pub mod envoy_gateway;
pub mod gateway_api;
pub mod inference;
pub mod istio;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label selector with `matchLabels` only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabels {
    /// Required labels.
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to an object in a policy's namespace (Gateway API policy attachment).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPolicyTargetRef {
    /// API group of the target.
    pub group: String,
    /// Kind of the target.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Listener or rule name inside the target.
    pub section_name: Option<String>,
}

/// A Service (or other backend) reference with a port.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectRef {
    /// API group (`""` for core).
    pub group: Option<String>,
    /// Kind (`Service` by default).
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (the referrer's by default).
    pub namespace: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Traffic weight.
    pub weight: Option<i32>,
}

/// Declares a custom resource type: `apiVersion`, `kind`, `metadata` and `spec`.
macro_rules! custom_resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// `group/version`.
            pub api_version: String,
            /// The kind.
            pub kind: String,
            /// Standard object metadata.
            pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            /// The desired state.
            pub spec: $spec,
        }
    };
}
pub(crate) use custom_resource;
