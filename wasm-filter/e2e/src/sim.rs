//! A `kvroute-sim` engine on a free port.

use std::path::Path;
use std::time::Duration;

use crate::paths::{free_port, sim_bin};
use crate::process::Proc;

/// A running simulated engine.
pub struct Sim {
    /// `127.0.0.1:port`.
    pub address: String,
    /// The id it reports in `x-kvroute-sim-id`.
    pub id: String,
    proc: Proc,
}

impl Sim {
    /// Starts engine `id` serving `model`, fast enough for tests (time scaled down).
    pub fn start(id: &str, model: &str, log_dir: &Path) -> anyhow::Result<Sim> {
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--engine",
            "vllm",
            "--model",
            model,
            "--id",
            id,
            "--prefill-overhead-ms",
            "1",
            "--prefill-us-per-token",
            "5",
            "--decode-us-per-token",
            "200",
            "--time-scale",
            "1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut proc = Proc::spawn(id, &sim_bin()?, &args, log_dir)?;
        proc.wait_for_line("kvroute-sim listening on", Duration::from_secs(20))?;
        Ok(Sim {
            address: format!("127.0.0.1:{port}"),
            id: id.to_owned(),
            proc,
        })
    }

    /// Stops the engine (its address then refuses connections).
    pub fn stop(&mut self) {
        self.proc.kill();
    }
}
