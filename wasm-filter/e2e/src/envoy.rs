//! The real Envoy running the shipped `envoy/envoy-wasm.yaml`, re-addressed for a test.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::paths::{envoy_bin, free_port, shipped_config, wasm_module};
use crate::process::Proc;

/// What to change in the shipped configuration.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
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
    /// The shipped settings over `workers`, one worker thread.
    pub fn new(workers: Vec<String>) -> EnvoyOptions {
        EnvoyOptions {
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

/// A running Envoy.
pub struct Envoy {
    /// `http://127.0.0.1:port` of the inference listener.
    pub url: String,
    admin: String,
    proc: Proc,
}

fn get_mut<'a>(v: &'a mut Yaml, path: &[&str]) -> anyhow::Result<&'a mut Yaml> {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get_mut(i),
            Err(_) => cur.get_mut(*key),
        }
        .with_context(|| format!("shipped config has no `{}`", path.join(".")))?;
    }
    Ok(cur)
}

fn socket_address(address: &str) -> anyhow::Result<Yaml> {
    let (ip, port) = address.rsplit_once(':').context("address is not ip:port")?;
    let port: u16 = port.parse().context("bad port")?;
    Ok(serde_yaml_ng::from_str(&format!(
        "endpoint: {{address: {{socket_address: {{address: \"{ip}\", port_value: {port}}}}}}}"
    ))?)
}

/// Renders the shipped configuration with real ports, the module path, the cluster endpoints
/// and the plugin configuration of `opts`.
pub fn render(opts: &EnvoyOptions, listen: u16, admin: u16, wasm: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(shipped_config()).context("reading envoy-wasm.yaml")?;
    let mut doc: Yaml = serde_yaml_ng::from_str(&text)?;
    *get_mut(
        &mut doc,
        &["admin", "address", "socket_address", "port_value"],
    )? = admin.into();
    let listener = ["static_resources", "listeners", "0"];
    let mut port_path = listener.to_vec();
    port_path.extend(["address", "socket_address", "port_value"]);
    *get_mut(&mut doc, &port_path)? = listen.into();
    let mut filters_path = listener.to_vec();
    filters_path.extend([
        "filter_chains",
        "0",
        "filters",
        "0",
        "typed_config",
        "http_filters",
    ]);
    let filters = get_mut(&mut doc, &filters_path)?
        .as_sequence_mut()
        .context("http_filters is not a list")?;
    let wasm_filter = filters
        .iter_mut()
        .find(|f| f.get("name").and_then(Yaml::as_str) == Some("envoy.filters.http.wasm"))
        .context("no wasm filter in the shipped config")?;
    let config = get_mut(wasm_filter, &["typed_config", "config"])?;
    *get_mut(config, &["vm_config", "code", "local", "filename"])? =
        wasm.display().to_string().into();
    let value = get_mut(config, &["configuration", "value"])?;
    let plugin = match &opts.raw_plugin_config {
        Some(raw) => raw.clone(),
        None => {
            let shipped = value
                .as_str()
                .context("plugin configuration is not a string")?;
            let mut plugin: Json = serde_json::from_str(shipped)?;
            plugin["workers"] = opts
                .workers
                .iter()
                .map(|a| serde_json::json!({"address": a, "engine": "vllm", "models": [crate::MODEL]}))
                .collect();
            if let Some((_, interval_ms)) = &opts.admin {
                plugin["discovery"] =
                    serde_json::json!({"cluster": "kvroute_admin", "interval_ms": interval_ms});
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
            plugin.to_string()
        }
    };
    *value = plugin.into();
    if opts.without_filter {
        let filters = get_mut(&mut doc, &filters_path)?
            .as_sequence_mut()
            .context("http_filters is not a list")?;
        filters.retain(|f| f.get("name").and_then(Yaml::as_str) != Some("envoy.filters.http.wasm"));
    }
    let endpoints = opts
        .workers
        .iter()
        .chain(&opts.extra_endpoints)
        .map(|a| socket_address(a))
        .collect::<anyhow::Result<Vec<Yaml>>>()?;
    let lb = get_mut(
        &mut doc,
        &[
            "static_resources",
            "clusters",
            "0",
            "load_assignment",
            "endpoints",
            "0",
            "lb_endpoints",
        ],
    )?;
    *lb = Yaml::Sequence(endpoints);
    if let Some((address, _)) = &opts.admin {
        let endpoint = socket_address(address)?;
        let cluster: Yaml = serde_yaml_ng::from_str(
            "{name: kvroute_admin, type: STATIC, connect_timeout: 1s, \
             load_assignment: {cluster_name: kvroute_admin, endpoints: [{lb_endpoints: []}]}}",
        )?;
        let clusters = get_mut(&mut doc, &["static_resources", "clusters"])?
            .as_sequence_mut()
            .context("clusters is not a list")?;
        clusters.push(cluster);
        let last = clusters.len() - 1;
        let lb = get_mut(
            &mut clusters[last],
            &["load_assignment", "endpoints", "0", "lb_endpoints"],
        )?;
        *lb = Yaml::Sequence(vec![endpoint]);
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; fails (with the log's path) if it exits.
    pub async fn start(opts: &EnvoyOptions, log_dir: &Path) -> anyhow::Result<Envoy> {
        let (listen, admin) = (free_port()?, free_port()?);
        let rendered = render(opts, listen, admin, &wasm_module()?)?;
        let config = log_dir.join("envoy.yaml");
        std::fs::write(&config, rendered)?;
        let args: Vec<String> = vec![
            "-c".into(),
            config.display().to_string(),
            "--concurrency".into(),
            opts.concurrency.to_string(),
            "--disable-hot-restart".into(),
            "--log-level".into(),
            "warn".into(),
            "--component-log-level".into(),
            "wasm:info".into(),
        ];
        let mut proc = Proc::spawn("envoy", &envoy_bin()?, &args, log_dir)?;
        let admin = format!("http://127.0.0.1:{admin}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.try_exit() {
                bail!(
                    "envoy exited ({status}) during start-up:\n{}",
                    proc.log_text()
                );
            }
            if let Ok(r) = client.get(format!("{admin}/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("envoy not ready in time; see {}", proc.log_path().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Envoy {
            url: format!("http://127.0.0.1:{listen}"),
            admin,
            proc,
        })
    }

    /// Starts Envoy expecting it to refuse the configuration; returns its log.
    pub async fn start_expecting_failure(
        opts: &EnvoyOptions,
        log_dir: &Path,
    ) -> anyhow::Result<String> {
        match Envoy::start(opts, log_dir).await {
            Ok(envoy) => bail!(
                "envoy started although it should not have; see {}",
                envoy.proc.log_path().display()
            ),
            Err(err) => Ok(err.to_string()),
        }
    }

    /// The value of the filter's metric `name` in Envoy's admin `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        let text = reqwest::get(format!("{}/stats?filter={name}", self.admin))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.ends_with(name))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Waits until `stat(name)` equals `want` (metrics update at stream end); returns the last value.
    pub async fn wait_stat(&self, name: &str, want: i64, timeout: Duration) -> anyhow::Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name).await?;
            if v == want || Instant::now() > deadline {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Envoy log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}
