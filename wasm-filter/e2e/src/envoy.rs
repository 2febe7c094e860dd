//! The real Envoy running the shipped `envoy/envoy-wasm.yaml`, re-addressed for a test.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use kvroute_e2e::{Envoy, EnvoyConfig, EnvoyRun, paths};
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;

/// The shipped config of the filter, under `envoy/`.
const SHIPPED: &str = "envoy-wasm.yaml";
/// Its inference listener.
const LISTENER: &str = "inference";
/// Its HTTP filter running the module.
const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// The cluster added for [`EnvoyOptions::admin`].
const ADMIN_CLUSTER: &str = "kvroute_admin";

/// What to change in the shipped configuration.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Process name (log `<log_dir>/<name>.log`); distinct for Envoys running side by side.
    pub name: String,
    /// Workers listed in the plugin configuration (`ip:port`, serving [`crate::MODEL`]).
    pub workers: Vec<String>,
    /// Envoy worker threads (one Wasm VM each).
    pub concurrency: u32,
    /// Replaces the plugin configuration's `router` object when set.
    pub router: Option<Json>,
    /// Replaces the plugin configuration's `gateway` object when set.
    pub gateway: Option<Json>,
    /// Replaces the plugin configuration's `sharing` object when set.
    pub sharing: Option<Json>,
    /// Replaces the whole plugin configuration string (for invalid-config tests).
    pub raw_plugin_config: Option<String>,
    /// Cluster endpoints that are not workers of the filter.
    pub extra_endpoints: Vec<String>,
    /// Removes the wasm filter: plain Envoy with the same listener and cluster (a baseline).
    pub without_filter: bool,
    /// Adds a `kvroute_admin` cluster to this `ip:port` and points the plugin's `discovery`
    /// at it, refreshing every `interval_ms`.
    pub admin: Option<(String, u64)>,
}

impl EnvoyOptions {
    /// The shipped settings over `workers`, one worker thread, process name `envoy`.
    pub fn new(workers: Vec<String>) -> EnvoyOptions {
        EnvoyOptions {
            name: "envoy".to_owned(),
            workers,
            concurrency: 1,
            router: None,
            gateway: None,
            sharing: None,
            raw_plugin_config: None,
            extra_endpoints: Vec::new(),
            without_filter: false,
            admin: None,
        }
    }
}

/// Parses `ip:port`.
fn socket(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .parse()
        .with_context(|| format!("{address:?} is not ip:port"))
}

/// The plugin configuration string for `opts`, starting from the shipped one.
fn plugin_config(opts: &EnvoyOptions, shipped: &str) -> anyhow::Result<String> {
    if let Some(raw) = &opts.raw_plugin_config {
        return Ok(raw.clone());
    }
    let mut plugin: Json =
        serde_json::from_str(shipped).context("shipped plugin configuration is not JSON")?;
    plugin["workers"] = opts
        .workers
        .iter()
        .map(|a| json!({"address": a, "engine": "vllm", "models": [crate::MODEL]}))
        .collect();
    if let Some((_, interval_ms)) = &opts.admin {
        plugin["discovery"] = json!({"cluster": ADMIN_CLUSTER, "interval_ms": interval_ms});
    }
    for (key, v) in [
        ("router", &opts.router),
        ("gateway", &opts.gateway),
        ("sharing", &opts.sharing),
    ] {
        if let Some(v) = v {
            plugin[key] = v.clone();
        }
    }
    Ok(plugin.to_string())
}

/// Renders the shipped configuration: ephemeral admin and listener ports, the module at `wasm`,
/// the cluster endpoints and the plugin configuration of `opts`.
pub fn render(opts: &EnvoyOptions, wasm: &Path) -> anyhow::Result<String> {
    let mut config = EnvoyConfig::shipped(SHIPPED)?;
    config.admin_on_ephemeral_port()?;
    config.listen(LISTENER, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let filter = config.http_filter(LISTENER, WASM_FILTER)?;
    let plugin = filter
        .get_mut("typed_config")
        .and_then(|c| c.get_mut("config"))
        .context("the wasm filter has no typed_config.config")?;
    let filename = plugin
        .get_mut("vm_config")
        .and_then(|v| v.get_mut("code"))
        .and_then(|v| v.get_mut("local"))
        .and_then(|v| v.get_mut("filename"))
        .context("the wasm filter has no vm_config.code.local.filename")?;
    *filename = Yaml::from(wasm.display().to_string());
    let value = plugin
        .get_mut("configuration")
        .and_then(|v| v.get_mut("value"))
        .context("the wasm filter has no configuration.value")?;
    let shipped = value
        .as_str()
        .context("plugin configuration is not a string")?;
    *value = Yaml::from(plugin_config(opts, shipped)?);
    if opts.without_filter {
        config.remove_http_filter(LISTENER, WASM_FILTER)?;
    }
    let endpoints = opts
        .workers
        .iter()
        .chain(&opts.extra_endpoints)
        .map(|a| socket(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    config.cluster_endpoints("engines", &endpoints)?;
    if let Some((address, _)) = &opts.admin {
        config.add_static_cluster(ADMIN_CLUSTER, &[socket(address)?])?;
    }
    config.render()
}

/// Renders the configuration of `opts`, starts Envoy and waits until it is ready; fails (with
/// the log's path) if it exits.
pub async fn start_envoy(opts: &EnvoyOptions, log_dir: &Path) -> anyhow::Result<Envoy> {
    let rendered = render(opts, &paths::wasm_module()?)?;
    let config = log_dir.join(format!("{}.yaml", opts.name));
    std::fs::write(&config, rendered)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let run = EnvoyRun {
        concurrency: opts.concurrency,
        component_log_level: Some("wasm:info".to_owned()),
        timeout: std::time::Duration::from_secs(60),
        ..EnvoyRun::new(&opts.name, LISTENER)
    };
    Envoy::launch(&paths::envoy_bin()?, &config, &run, log_dir).await
}

/// Starts Envoy expecting it to refuse the configuration; returns its log.
pub async fn start_envoy_expecting_failure(
    opts: &EnvoyOptions,
    log_dir: &Path,
) -> anyhow::Result<String> {
    match start_envoy(opts, log_dir).await {
        Ok(envoy) => bail!(
            "envoy started although it should not have; see {}",
            envoy.log_path().display()
        ),
        Err(err) => {
            let log = log_dir.join(format!("{}.log", opts.name));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(format!("{err:#}\n{text}"))
        }
    }
}
