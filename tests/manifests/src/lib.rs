//! Typed validation of the Kubernetes manifests under `manifests/`.
//!
//! Every YAML document is parsed into its real type (k8s-openapi for core kinds, the structs in
//! [`crds`] for custom resources), serialized back and compared with the input, so a field the
//! type does not know shows up as a difference instead of being silently dropped.

pub mod crds;
pub mod docs;
pub mod envoy;
pub mod kustomize;
pub mod objects;
pub mod roundtrip;

use std::path::PathBuf;

/// The `manifests/` directory of the workspace (canonical when it exists).
pub fn manifests_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    dir.canonicalize().unwrap_or(dir)
}
