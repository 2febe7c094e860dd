//! Envoy Gateway `gateway.envoyproxy.io/v1alpha1`: EnvoyExtensionPolicy and EnvoyPatchPolicy.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{BackendObjectRef, LocalPolicyTargetRef, custom_resource};

custom_resource!(
    /// Extensions (ext_proc, wasm) attached to a Gateway or route.
    EnvoyExtensionPolicy,
    EnvoyExtensionPolicySpec
);
custom_resource!(
    /// JSON patches applied to the generated xDS resources.
    EnvoyPatchPolicy,
    EnvoyPatchPolicySpec
);

/// `EnvoyExtensionPolicy.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyExtensionPolicySpec {
    /// Gateways or routes the policy attaches to.
    pub target_refs: Vec<LocalPolicyTargetRef>,
    /// External processors.
    pub ext_proc: Option<Vec<ExtProc>>,
    /// Wasm filters.
    pub wasm: Option<Vec<Wasm>>,
}

/// `spec.extProc[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtProc {
    /// The processor's Service.
    pub backend_refs: Vec<BackendObjectRef>,
    /// Per-message timeout (Envoy default 200ms).
    pub message_timeout: Option<String>,
    /// Pass requests through when the processor is unreachable.
    pub fail_open: Option<bool>,
    /// What is sent to the processor.
    pub processing_mode: Option<ProcessingMode>,
    /// Dynamic-metadata namespaces read and written by the processor.
    pub metadata: Option<ExtProcMetadata>,
}

/// `extProc[].processingMode`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessingMode {
    /// Request: headers are sent; body per `body`.
    pub request: Option<ProcessingModeOptions>,
    /// Response: headers are sent; body per `body`.
    pub response: Option<ProcessingModeOptions>,
    /// Let the processor change the mode per request.
    pub allow_mode_override: Option<bool>,
}

/// `processingMode.request` / `.response`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessingModeOptions {
    /// Body mode.
    pub body: Option<BodyMode>,
    /// Envoy attributes sent along.
    pub attributes: Option<Vec<String>>,
}

/// Body modes Envoy Gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum BodyMode {
    /// Chunks as they arrive; the processor cannot hold them.
    Streamed,
    /// Whole body in one message (buffer limit applies).
    Buffered,
    /// Up to the buffer limit.
    BufferedPartial,
    /// Bidirectional body stream (trailers sent; fail-open not allowed).
    FullDuplexStreamed,
}

/// `extProc[].metadata`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtProcMetadata {
    /// Namespaces sent to the processor.
    pub accessible_namespaces: Option<Vec<String>>,
    /// Namespaces the processor may write (Envoy's `receiving_namespaces`).
    pub writable_namespaces: Option<Vec<String>>,
}

/// `spec.wasm[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wasm {
    /// Extension name.
    pub name: Option<String>,
    /// Root context id inside the module.
    #[serde(rename = "rootID")]
    pub root_id: Option<String>,
    /// Where the module comes from.
    pub code: WasmCode,
    /// Plugin configuration, handed to the module as JSON.
    pub config: Option<Value>,
    /// Let traffic through when the module fails.
    pub fail_open: Option<bool>,
}

/// `wasm[].code`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmCode {
    /// `HTTP` or `Image`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Module fetched over HTTP.
    pub http: Option<WasmSource>,
    /// Module packaged as an OCI image.
    pub image: Option<WasmSource>,
    /// `IfNotPresent` or `Always`.
    pub pull_policy: Option<String>,
}

/// `code.http` / `code.image`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmSource {
    /// URL of the module or image.
    pub url: String,
    /// Expected SHA-256 of the module.
    pub sha256: Option<String>,
}

/// `EnvoyPatchPolicy.spec`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyPatchPolicySpec {
    /// The Gateway (or GatewayClass) whose xDS is patched.
    pub target_ref: LocalPolicyTargetRef,
    /// `JSONPatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The patches.
    pub json_patches: Vec<JsonPatch>,
    /// Order among policies on the same target.
    pub priority: Option<i32>,
}

/// `jsonPatches[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPatch {
    /// xDS type URL.
    #[serde(rename = "type")]
    pub kind: String,
    /// xDS resource name.
    pub name: String,
    /// RFC 6902 operation.
    pub operation: JsonPatchOperation,
}

/// `jsonPatches[].operation`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPatchOperation {
    /// `add`, `remove`, `replace`, `move`, `copy` or `test`.
    pub op: String,
    /// JSON pointer.
    pub path: Option<String>,
    /// JSONPath selecting the location (alternative to `path`).
    pub json_path: Option<String>,
    /// Source for `move`/`copy`.
    pub from: Option<String>,
    /// Value for `add`/`replace`.
    pub value: Option<Value>,
}
