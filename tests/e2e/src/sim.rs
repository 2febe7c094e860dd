//! A simulated engine process (`kvroute-sim`) on an ephemeral port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;

use crate::paths;
use crate::process::Proc;

/// Model name every simulated engine serves.
pub const MODEL: &str = "sim-model";

/// Default simulator time scale: twenty times faster than the latency model.
pub const DEFAULT_TIME_SCALE: f64 = 0.05;

/// How long a standalone engine may take to print its ready line.
const SIM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A simulated engine.
pub struct Sim {
    /// Value of its `x-kvroute-sim-id` response header.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
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
        Ok(Sim {
            id: proc.name().to_string(),
            addr,
            alive: true,
            proc,
        })
    }

    /// Starts engines `<prefix>-0..<prefix>-<count-1>` (vLLM dialect) outside any
    /// [`Stack`](crate::Stack), in parallel, and waits until each listens.
    pub async fn start_many(
        prefix: &str,
        count: usize,
        time_scale: f64,
        log_dir: &Path,
    ) -> anyhow::Result<Vec<Sim>> {
        let bin = paths::sim_bin()?;
        let pending = (0..count)
            .map(|i| {
                spawn_sim(
                    &bin,
                    &format!("{prefix}-{i}"),
                    "vllm",
                    MODEL,
                    time_scale,
                    log_dir,
                )
            })
            .collect::<anyhow::Result<Vec<Proc>>>()?;
        let mut sims = Vec::with_capacity(count);
        for proc in pending {
            sims.push(Sim::ready(proc, SIM_READY_TIMEOUT).await?);
        }
        Ok(sims)
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
    model: &str,
    time_scale: f64,
    log_dir: &Path,
) -> anyhow::Result<Proc> {
    let args: Vec<String> = [
        "--port",
        "0",
        "--engine",
        engine,
        "--model",
        model,
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
    .collect();
    Proc::spawn(id, bin, &args, log_dir)
}
