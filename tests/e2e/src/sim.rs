//! A simulated engine process (`kvroute-sim`) on an ephemeral port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;

use crate::process::Proc;

/// Model name every simulated engine serves.
pub const MODEL: &str = "sim-model";

/// A simulated engine.
pub struct Sim {
    /// Value of its `x-kvroute-sim-id` response header.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its KV-event PUB endpoint, when started with `--kv-events-endpoint`.
    pub kv_events: Option<String>,
    /// Its KV-event replay endpoint, when started with `--kv-events-replay-endpoint`.
    pub kv_replay: Option<String>,
    pub(crate) alive: bool,
    pub(crate) proc: Proc,
}

impl Sim {
    /// Waits for the simulator's ready line and reads its address from it.
    pub(crate) async fn ready(mut proc: Proc, timeout: Duration) -> anyhow::Result<Sim> {
        let line = proc
            .wait_for_line("kvroute-sim listening on ", timeout)
            .await?;
        let addr = line
            .trim_start_matches("kvroute-sim listening on ")
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("cannot read the address in {line:?}"))?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        Ok(Sim {
            id: proc.name().to_string(),
            addr,
            kv_events: field("kv_events="),
            kv_replay: field("kv_replay="),
            alive: true,
            proc,
        })
    }

    /// `http://ip:port` of this engine.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts one simulator on an ephemeral port.
pub(crate) fn spawn_sim(
    bin: &Path,
    id: &str,
    engine: &str,
    time_scale: f64,
    extra: &[String],
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    let args: Vec<String> = [
        "--port",
        "0",
        "--engine",
        engine,
        "--model",
        MODEL,
        "--id",
        id,
        "--block-size",
        "16",
        "--kv-blocks",
        "4096",
        "--prefill-overhead-ms",
        "20",
        "--prefill-us-per-token",
        "50",
        "--decode-us-per-token",
        "10000",
        "--max-running",
        "64",
        "--context-length",
        "262144",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--time-scale".to_string(), time_scale.to_string()])
    .chain(extra.iter().cloned())
    .collect();
    Proc::spawn(id, bin, &args, log_dir)
}
