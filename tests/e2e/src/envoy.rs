//! The real Envoy, started on a rendered copy of a shipped config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::client::http_client;
use crate::config::{EnvoyLayout, render_envoy_config, set_failure_mode_allow};
use crate::paths;
use crate::process::Proc;

/// How to run Envoy on a rendered config (see [`Envoy::launch`]).
#[derive(Debug, Clone)]
pub struct EnvoyRun {
    /// Process name: output goes to `<log_dir>/<name>.log`; unique among running Envoys
    /// sharing a log directory.
    pub name: String,
    /// The listener whose bound address [`Envoy::url`] reports.
    pub listener: String,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// `--component-log-level` (for instance `wasm:info`), if any.
    pub component_log_level: Option<String>,
    /// How long Envoy may take until `/ready` says LIVE.
    pub timeout: Duration,
}

impl EnvoyRun {
    /// Process `name` serving `listener`, one worker thread, 30 s to become ready.
    pub fn new(name: &str, listener: &str) -> EnvoyRun {
        EnvoyRun {
            name: name.to_string(),
            listener: listener.to_string(),
            concurrency: 1,
            component_log_level: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    _proc: Proc,
    log: PathBuf,
    client: reqwest::Client,
}

impl Envoy {
    /// Renders `envoy/<config>` for `layout`, starts Envoy and waits (up to `timeout`)
    /// until `/ready` says LIVE.
    pub(crate) async fn start(
        name: &str,
        timeout: Duration,
        bin: &Path,
        config: &str,
        layout: &EnvoyLayout,
        fail_closed: bool,
        log_dir: &Path,
    ) -> anyhow::Result<Envoy> {
        let template_path = paths::envoy_config(config);
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("cannot read {}", template_path.display()))?;
        let mut rendered = render_envoy_config(&template, layout)?;
        if fail_closed {
            rendered = set_failure_mode_allow(&rendered, false)?;
        }
        let config_path = log_dir.join(format!("rendered-{name}-{}", config.replace('/', "-")));
        std::fs::write(&config_path, rendered)?;
        let run = EnvoyRun {
            timeout,
            ..EnvoyRun::new(name, "gateway")
        };
        Envoy::launch(bin, &config_path, &run, log_dir).await
    }

    /// Starts Envoy `bin` on the rendered config file `config` (admin on an ephemeral port,
    /// see [`EnvoyConfig::admin_on_ephemeral_port`](crate::config::EnvoyConfig)) and waits
    /// until `/ready` says LIVE. Fails with the log's path if Envoy exits first.
    pub async fn launch(
        bin: &Path,
        config: &Path,
        run: &EnvoyRun,
        log_dir: &Path,
    ) -> anyhow::Result<Envoy> {
        let admin_path = log_dir.join(format!("{}-admin-address.txt", run.name));
        // A previous Envoy of the same name may have left its (dead) address there.
        let _ = std::fs::remove_file(&admin_path);
        let mut args: Vec<String> = vec![
            "-c".into(),
            config.display().to_string(),
            "--concurrency".into(),
            run.concurrency.to_string(),
            "--disable-hot-restart".into(),
            "--file-flush-interval-msec".into(),
            "100".into(),
            "--log-level".into(),
            "warning".into(),
            "--admin-address-path".into(),
            admin_path.display().to_string(),
        ];
        if let Some(levels) = &run.component_log_level {
            args.push("--component-log-level".into());
            args.push(levels.clone());
        }
        let mut proc = Proc::spawn(&run.name, bin, &args, log_dir)?;
        let client = http_client(false)?;
        let deadline = tokio::time::Instant::now() + run.timeout;
        loop {
            proc.ensure_running()?;
            if let Some(admin) = read_admin_address(&admin_path) {
                let live = client.get(format!("http://{admin}/ready")).send().await;
                if matches!(&live, Ok(r) if r.status().is_success()) {
                    let listen = listener_address(&client, admin, &run.listener).await?;
                    return Ok(Envoy {
                        listen,
                        admin,
                        log: proc.log_path().to_path_buf(),
                        _proc: proc,
                        client,
                    });
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Envoy not ready within {:?}; log: {}",
                    run.timeout,
                    proc.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://ip:port` of the served listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Where Envoy's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Envoy's output so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the first admin `/stats` entry whose name ends with `name` (0 when absent).
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        let text = self
            .client
            .get(self.admin_url(&format!("/stats?filter={name}")))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.ends_with(name))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Polls [`Envoy::stat`] until it equals `want` or `timeout` passes; returns the last value.
    pub async fn wait_stat(&self, name: &str, want: i64, timeout: Duration) -> anyhow::Result<i64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.stat(name).await?;
            if value == want || tokio::time::Instant::now() > deadline {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The admin address Envoy wrote to `--admin-address-path`, once it is there.
fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The address listener `name` is bound to (its port may have been 0 in the config).
async fn listener_address(
    client: &reqwest::Client,
    admin: SocketAddr,
    name: &str,
) -> anyhow::Result<SocketAddr> {
    let status: Value = client
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let listener = status["listener_statuses"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .ok_or_else(|| anyhow!("Envoy has no listener {name}: {status}"))?;
    let socket = &listener["local_address"]["socket_address"];
    let ip = socket["address"].as_str().unwrap_or_default();
    let port = socket["port_value"].as_u64().unwrap_or_default();
    format!("{ip}:{port}")
        .parse()
        .with_context(|| format!("bad address of listener {name}: {socket}"))
}
