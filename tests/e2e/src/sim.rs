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
    pub(crate) alive: bool,
    pub(crate) proc: Proc,
    /// Arguments it was started with, for restarts on the same port.
    pub(crate) args: Vec<String>,
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
        Ok(Sim {
            id: proc.name().to_string(),
            addr,
            alive: true,
            proc,
            args: Vec::new(),
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
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    spawn_sim_with(bin, id, engine, time_scale, 0, &[], log_dir).map(|(p, _)| p)
}

/// Starts one simulator on `port` (0: ephemeral) with `extra` arguments; returns the
/// process and its full argument list.
pub(crate) fn spawn_sim_with(
    bin: &Path,
    id: &str,
    engine: &str,
    time_scale: f64,
    port: u16,
    extra: &[String],
    log_dir: &Path,
) -> anyhow::Result<(Proc, Vec<String>)> {
    let port = port.to_string();
    let args: Vec<String> = [
        "--port",
        &port,
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
    Ok((Proc::spawn(id, bin, &args, log_dir)?, args))
}
