//! Where the workspace, the binaries under test and the per-test log directories are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Root of the cargo workspace (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Qwen3 tokenizer directory installed by `scripts/fetch-tokenizers.sh`
/// (`KVROUTE_TOKENIZER_DIR` overrides), installing it first when missing.
pub fn tokenizer_dir() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("scripts/fetch-tokenizers.sh");
    let out = std::process::Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join("tokenizer.json").is_file() {
        bail!("no tokenizer.json in {}", dir.display());
    }
    Ok(dir)
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

/// A binary under test: `env_var` if set, else `default`; fails clearly when missing.
fn find_binary(env_var: &str, default: PathBuf, what: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env_var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default,
    };
    if !path.is_file() {
        bail!(
            "{what} not found at {} (set {env_var} to override): run `make test`, \
             which builds the binaries and installs Envoy first",
            path.display()
        );
    }
    Ok(path)
}

/// The `kvroute` binary (`KVROUTE_BIN`, default `<target>/debug/kvroute`).
pub fn kvroute_bin() -> anyhow::Result<PathBuf> {
    find_binary(
        "KVROUTE_BIN",
        target_dir().join("debug").join("kvroute"),
        "kvroute binary",
    )
}

/// The `kvroute-sim` binary (`KVROUTE_SIM_BIN`, default `<target>/debug/kvroute-sim`).
pub fn sim_bin() -> anyhow::Result<PathBuf> {
    find_binary(
        "KVROUTE_SIM_BIN",
        target_dir().join("debug").join("kvroute-sim"),
        "kvroute-sim binary",
    )
}

/// The Envoy binary (`KVROUTE_ENVOY`, default `<workspace>/.venv/bin/envoy`).
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    find_binary(
        "KVROUTE_ENVOY",
        workspace_root().join(".venv").join("bin").join("envoy"),
        "Envoy",
    )
}

/// A shipped Envoy config, `<workspace>/envoy/<name>`, or for `gateways/<shape>` a
/// gateway-generated one under `tests/e2e/gateways/`.
pub fn envoy_config(name: &str) -> PathBuf {
    match name.strip_prefix("gateways/") {
        Some(shape) => workspace_root().join("tests/e2e/gateways").join(shape),
        None => workspace_root().join("envoy").join(name),
    }
}

/// A fresh, empty `<target>/e2e-logs/<test>/` directory for one test's process logs.
pub fn log_dir(test: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("e2e-logs").join(test);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot clear log directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    Ok(dir)
}

/// The kvroute proxy-wasm module (`KVROUTE_WASM`, default the release build that
/// `scripts/build-wasm-filter.sh` writes to `<target>/wasm/wasm32-unknown-unknown/release/`).
pub fn wasm_module() -> anyhow::Result<PathBuf> {
    find_binary(
        "KVROUTE_WASM",
        target_dir()
            .join("wasm")
            .join("wasm32-unknown-unknown")
            .join("release")
            .join("kvroute_wasm.wasm"),
        "kvroute proxy-wasm module",
    )
}

/// A port on 127.0.0.1 that was free a moment ago (for an address nothing listens on).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?.port())
}
