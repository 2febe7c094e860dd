//! Gateway API Inference Extension `inference.networking.k8s.io/v1`.

use serde::{Deserialize, Serialize};

use super::{MatchLabels, custom_resource};

custom_resource!(
    /// A pool of model-server pods fronted by an endpoint picker.
    InferencePool,
    InferencePoolSpec
);

/// `InferencePool.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferencePoolSpec {
    /// Pods of the pool (same namespace).
    pub selector: MatchLabels,
    /// Ports of the model servers (exactly one today).
    pub target_ports: Vec<PortNumber>,
    /// The endpoint picker.
    pub endpoint_picker_ref: EndpointPickerRef,
    /// Protocol of the model servers (`http` or `kubernetes.io/h2c`).
    pub app_protocol: Option<String>,
}

/// `{number: N}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortNumber {
    /// Port number.
    pub number: u16,
}

/// `spec.endpointPickerRef`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerRef {
    /// API group of the picker object (`""`: core).
    pub group: Option<String>,
    /// Kind (`Service`).
    pub kind: Option<String>,
    /// Name of the picker's Service.
    pub name: String,
    /// gRPC port of the picker.
    pub port: Option<PortNumber>,
    /// `FailOpen` or `FailClose`.
    pub failure_mode: Option<FailureMode>,
}

/// What the gateway does when the picker does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum FailureMode {
    /// Forward to an endpoint of the gateway's choosing.
    FailOpen,
    /// Reject the request.
    FailClose,
}
