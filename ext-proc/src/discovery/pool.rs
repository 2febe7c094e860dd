//! The Gateway API Inference Extension `InferencePool` (inference.networking.k8s.io/v1, and the
//! earlier inference.networking.x-k8s.io/v1alpha2): the parts discovery reads, and how they
//! become a pod selector and ports.

use std::collections::BTreeMap;

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;

/// The InferencePool API resource of `group` (v1 for inference.networking.k8s.io, v1alpha2
/// for inference.networking.x-k8s.io).
pub fn api_resource(group: &str) -> ApiResource {
    let version = if group == crate::discovery::POOL_GROUP_ALPHA {
        "v1alpha2"
    } else {
        "v1"
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, "InferencePool"),
        "inferencepools",
    )
}

/// `spec` of an InferencePool, as far as discovery needs it: v1 (`selector.matchLabels`,
/// `targetPorts`) or v1alpha2 (`selector` as a label map, `targetPortNumber`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Chooses the pool's pods.
    pub selector: PoolSelector,
    /// Engine ports on every selected pod (1 to 8; v1).
    #[serde(default)]
    pub target_ports: Vec<TargetPort>,
    /// The one engine port (v1alpha2).
    pub target_port_number: Option<u16>,
}

/// `spec.selector`: `{matchLabels: {...}}` in v1, the label map itself in v1alpha2.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PoolSelector {
    /// v1.
    #[serde(rename_all = "camelCase")]
    Match {
        /// Labels every pod of the pool carries.
        match_labels: BTreeMap<String, String>,
    },
    /// v1alpha2.
    Labels(BTreeMap<String, String>),
}

impl PoolSelector {
    fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            PoolSelector::Match { match_labels } => match_labels,
            PoolSelector::Labels(labels) => labels,
        }
    }
}

/// One `spec.targetPorts` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TargetPort {
    /// The port number.
    pub number: u16,
}

/// What the pool says about its pods: a label selector and the ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTarget {
    /// `key=value,...` from `matchLabels`.
    pub label_selector: String,
    /// Ports, one worker per pod and port.
    pub ports: Vec<u16>,
}

/// Reads a pool object. `Err` explains why it cannot be used (no spec, empty selector, no
/// or invalid ports).
pub fn target(pool: &DynamicObject) -> Result<PoolTarget, String> {
    let spec = pool
        .data
        .get("spec")
        .ok_or_else(|| "the InferencePool has no spec".to_owned())?;
    let spec: PoolSpec =
        PoolSpec::deserialize(spec).map_err(|e| format!("InferencePool spec: {e}"))?;
    let labels = spec.selector.labels();
    if labels.is_empty() {
        return Err("spec.selector.matchLabels is empty (it would select every pod)".to_owned());
    }
    let mut ports: Vec<u16> = spec.target_ports.iter().map(|p| p.number).collect();
    ports.extend(spec.target_port_number);
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() || ports.contains(&0) {
        return Err("spec.targetPorts must list ports between 1 and 65535".to_owned());
    }
    let label_selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(PoolTarget {
        label_selector,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../tests/e2e/fixtures/inference-pool.json");

    fn pool() -> DynamicObject {
        serde_json::from_str(FIXTURE).expect("fixture is an object")
    }

    #[test]
    fn reads_selector_and_every_target_port() {
        let t = target(&pool()).unwrap();
        assert_eq!(t.label_selector, "kvroute.io/pool=llm");
        assert_eq!(t.ports, vec![8000, 8001]);
    }

    #[test]
    fn rejects_pools_that_would_select_everything_or_nothing() {
        let mut p = pool();
        p.data["spec"]["selector"]["matchLabels"] = serde_json::json!({});
        assert!(target(&p).unwrap_err().contains("matchLabels"));
        let mut p = pool();
        p.data["spec"]["targetPorts"] = serde_json::json!([]);
        assert!(target(&p).is_err());
        let mut p = pool();
        p.data["spec"]["targetPorts"] = serde_json::json!([{"number": 70000}]);
        assert!(target(&p).is_err());
        let mut p = pool();
        p.data.as_object_mut().unwrap().remove("spec");
        assert!(target(&p).is_err());
    }

    #[test]
    fn reads_the_v1alpha2_shape() {
        let mut p = pool();
        p.data["spec"] = serde_json::json!({
            "selector": {"app": "vllm"},
            "targetPortNumber": 8000,
            "extensionRef": {"name": "epp"}
        });
        let t = target(&p).unwrap();
        assert_eq!(t.label_selector, "app=vllm");
        assert_eq!(t.ports, vec![8000]);
        assert_eq!(
            api_resource(crate::discovery::POOL_GROUP_ALPHA).api_version,
            "inference.networking.x-k8s.io/v1alpha2"
        );
    }
}
