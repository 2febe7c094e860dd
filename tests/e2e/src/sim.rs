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
    /// Its KV-event PUB endpoint, when started with `--kv-events-endpoint`.
    pub kv_events: Option<String>,
    /// Its KV-event replay endpoint, when started with `--kv-events-replay-endpoint`.
    pub kv_replay: Option<String>,
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
            args: Vec::new(),
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

/// One engine of a pool: the simulator's dialect and how kvroute is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    /// The simulator's `--engine` (`vllm` or `sglang`).
    pub dialect: String,
    /// The engine kind in kvroute's worker config (`vllm`, `sglang` or `other`).
    pub kind: String,
    /// Extra simulator flags.
    pub sim_args: Vec<String>,
    /// kvroute's health-check path for this worker, when not the default.
    pub health_path: Option<String>,
}

impl EngineSpec {
    /// A simulator of `dialect` known to kvroute as that same engine kind.
    pub fn engine(dialect: &str) -> EngineSpec {
        EngineSpec {
            dialect: dialect.to_owned(),
            kind: dialect.to_owned(),
            sim_args: Vec::new(),
            health_path: None,
        }
    }

    /// A server like the llama.cpp server: no `/health`, no `/metrics`, one request at a
    /// time, known to kvroute as engine kind `other` health-checked on `/v1/models`.
    pub fn bare_other() -> EngineSpec {
        EngineSpec {
            dialect: "vllm".to_owned(),
            kind: "other".to_owned(),
            sim_args: vec![
                "--no-health-metrics".to_owned(),
                "--max-running".to_owned(),
                "1".to_owned(),
            ],
            health_path: Some("/v1/models".to_owned()),
        }
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
    spawn_sim_with(bin, id, engine, model, time_scale, &[], log_dir).map(|(p, _)| p)
}

/// Starts one simulator on an ephemeral port with `extra` flags (replacing the defaults of
/// the same flags, `--port` included); returns the process and its full argument list (for
/// restarts).
pub(crate) fn spawn_sim_with(
    bin: &Path,
    id: &str,
    engine: &str,
    model: &str,
    time_scale: f64,
    extra: &[String],
    log_dir: &Path,
) -> anyhow::Result<(Proc, Vec<String>)> {
    let time_scale = time_scale.to_string();
    let base: [(&str, &str); 12] = [
        ("--port", "0"),
        ("--engine", engine),
        ("--model", model),
        ("--id", id),
        ("--block-size", "16"),
        ("--kv-blocks", "4096"),
        ("--prefill-overhead-ms", "20"),
        ("--prefill-us-per-token", "50"),
        ("--decode-us-per-token", "10000"),
        ("--max-running", "64"),
        ("--context-length", "262144"),
        ("--time-scale", &time_scale),
    ];
    let args: Vec<String> = base
        .iter()
        .filter(|(flag, _)| !extra.iter().any(|e| e == flag))
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .chain(extra.iter().cloned())
        .collect();
    Ok((Proc::spawn(id, bin, &args, log_dir)?, args))
}
