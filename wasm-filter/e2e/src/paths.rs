//! Where the workspace, the binaries and the module under test are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Root of the cargo workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            Path::to_path_buf,
        )
}

/// The cargo target directory: `CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

fn find(env_var: &str, default: PathBuf, what: &str, how: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env_var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default,
    };
    if !path.is_file() {
        bail!(
            "{what} not found at {} (set {env_var} to override): {how}",
            path.display()
        );
    }
    Ok(path)
}

/// The Envoy binary (`KVROUTE_ENVOY`, default `<workspace>/.venv/bin/envoy`).
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    find(
        "KVROUTE_ENVOY",
        workspace_root().join(".venv/bin/envoy"),
        "Envoy",
        "run scripts/setup-envoy.sh",
    )
}

/// The filter module (`KVROUTE_WASM`, default the release build of `kvroute-wasm`).
pub fn wasm_module() -> anyhow::Result<PathBuf> {
    find(
        "KVROUTE_WASM",
        target_dir().join("wasm/wasm32-unknown-unknown/release/kvroute_wasm.wasm"),
        "the kvroute proxy-wasm module",
        "run scripts/build-wasm-filter.sh",
    )
}

/// The engine simulator (`KVROUTE_SIM_BIN`, default `<target>/debug/kvroute-sim`).
pub fn sim_bin() -> anyhow::Result<PathBuf> {
    find(
        "KVROUTE_SIM_BIN",
        target_dir().join("debug/kvroute-sim"),
        "kvroute-sim",
        "run `cargo build -p kvroute-sim`",
    )
}

/// The shipped Envoy configuration of the filter.
pub fn shipped_config() -> PathBuf {
    workspace_root().join("envoy/envoy-wasm.yaml")
}

/// A fresh `<target>/e2e-logs/wasm/<test>/` directory.
pub fn log_dir(test: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("e2e-logs/wasm").join(test);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}
