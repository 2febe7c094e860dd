//! Checking full Envoy bootstraps shipped in ConfigMaps with `envoy --mode validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::ConfigMap;

/// Label marking a ConfigMap whose `envoy.yaml` key is a complete Envoy bootstrap.
pub const BOOTSTRAP_LABEL: &str = "kvroute.io/envoy-bootstrap";
/// Key of the bootstrap inside such a ConfigMap.
pub const BOOTSTRAP_KEY: &str = "envoy.yaml";
/// Annotation naming the in-pod path of the proxy-wasm module a bootstrap loads.
pub const WASM_MODULE_ANNOTATION: &str = "kvroute.io/wasm-module-path";

/// A complete Envoy bootstrap shipped in a ConfigMap.
#[derive(Clone, Debug)]
pub struct Bootstrap<'a> {
    /// The bootstrap YAML.
    pub text: &'a str,
    /// In-pod path of the wasm module it loads, if any.
    pub wasm_module_path: Option<&'a str>,
}

impl Bootstrap<'_> {
    /// The bootstrap with the in-pod module path replaced by `module` (a local build).
    pub fn with_module(&self, module: &Path) -> String {
        match self.wasm_module_path {
            Some(path) => self.text.replace(path, &module.display().to_string()),
            None => self.text.to_owned(),
        }
    }
}

/// The Envoy binary: `KVROUTE_ENVOY`, default `<workspace>/.venv/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    std::env::var_os("KVROUTE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/envoy"))
}

/// The proxy-wasm module: `KVROUTE_WASM`, default the release build under the target dir.
pub fn wasm_module() -> PathBuf {
    if let Some(path) = std::env::var_os("KVROUTE_WASM") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("wasm/wasm32-unknown-unknown/release/kvroute_wasm.wasm")
}

/// The bootstrap of a ConfigMap labelled as one, if it is.
pub fn bootstrap_of(map: &ConfigMap) -> Option<Bootstrap<'_>> {
    let labelled = map
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(BOOTSTRAP_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled {
        return None;
    }
    let text = map.data.as_ref()?.get(BOOTSTRAP_KEY)?;
    let wasm_module_path = map
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WASM_MODULE_ANNOTATION))
        .map(String::as_str);
    Some(Bootstrap {
        text,
        wasm_module_path,
    })
}

/// Runs `envoy --mode validate` on `bootstrap`, written to `scratch/name.yaml`. A rejected
/// config or a deprecated field (removed in a later Envoy) is an `Err` with Envoy's output.
pub fn validate(envoy: &Path, scratch: &Path, name: &str, bootstrap: &str) -> Result<(), String> {
    let file = scratch.join(format!("{name}.yaml"));
    std::fs::write(&file, bootstrap).map_err(|e| format!("{}: {e}", file.display()))?;
    let output = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&file)
        .output()
        .map_err(|e| format!("{}: {e}", envoy.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && !text.contains("Deprecated field") {
        Ok(())
    } else {
        Err(text)
    }
}
