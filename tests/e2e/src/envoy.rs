//! The real Envoy, started on a rendered copy of a shipped config.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::client::http_client;
use crate::config::{EnvoyLayout, render_envoy_config, set_failure_mode_allow};
use crate::paths;
use crate::process::Proc;

/// The running Envoy.
pub(crate) struct Envoy {
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    _proc: Proc,
}

impl Envoy {
    /// Renders `envoy/<config>` for `layout`, starts Envoy and waits (up to `timeout`)
    /// until `/ready` says LIVE.
    pub(crate) async fn start(
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
        let config_path = log_dir.join(format!("rendered-{config}"));
        std::fs::write(&config_path, rendered)?;
        let admin_path = log_dir.join("envoy-admin-address.txt");
        let args: Vec<String> = vec![
            "-c".into(),
            config_path.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--disable-hot-restart".into(),
            "--file-flush-interval-msec".into(),
            "100".into(),
            "--log-level".into(),
            "warning".into(),
            "--admin-address-path".into(),
            admin_path.display().to_string(),
        ];
        let mut proc = Proc::spawn("envoy", bin, &args, log_dir)?;
        let client = http_client(false)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            proc.ensure_running()?;
            if let Some(admin) = read_admin_address(&admin_path) {
                let live = client.get(format!("http://{admin}/ready")).send().await;
                if matches!(&live, Ok(r) if r.status().is_success()) {
                    let listen = listener_address(&client, admin, "gateway").await?;
                    return Ok(Envoy {
                        listen,
                        admin,
                        _proc: proc,
                    });
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Envoy not ready within {timeout:?}; log: {}",
                    proc.log_path().display()
                );
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
