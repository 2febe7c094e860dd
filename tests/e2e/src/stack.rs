//! One test's gateway: simulated engines, kvroute and the real Envoy, on free ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::client::http_client;
use crate::config::{BodyMode, EnvoyLayout};
use crate::envoy::Envoy;
use crate::paths;
use crate::process::Proc;
use crate::sim::{Sim, spawn_sim};

/// How long a process may take to become ready (debug builds on a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start; see [`Stack::builder`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    test: String,
    engines: usize,
    policy: String,
    body_mode: BodyMode,
    health_interval_ms: u64,
    time_scale: f64,
    outsider: bool,
    envoy_config: String,
    kvroute_config: Option<String>,
    sim_args: Vec<String>,
}

impl StackBuilder {
    /// Extra command-line arguments of every pool engine.
    pub fn sim_args(mut self, args: &[&str]) -> Self {
        self.sim_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A kvroute YAML config file (passed with `--config`; flags still set addresses,
    /// policy, health interval and workers).
    pub fn kvroute_config(mut self, yaml: &str) -> Self {
        self.kvroute_config = Some(yaml.to_string());
        self
    }

    /// Number of engines in the pool (default 4).
    pub fn engines(mut self, n: usize) -> Self {
        self.engines = n;
        self
    }

    /// kvroute policy name (default `round_robin`).
    pub fn policy(mut self, name: &str) -> Self {
        self.policy = name.to_string();
        self
    }

    /// ext_proc request body mode (default as shipped, `BUFFERED`).
    pub fn body_mode(mut self, mode: BodyMode) -> Self {
        self.body_mode = mode;
        self
    }

    /// kvroute's health-check interval (default 200 ms).
    pub fn health_interval_ms(mut self, ms: u64) -> Self {
        self.health_interval_ms = ms;
        self
    }

    /// Simulator time scale (default 0.05: twenty times faster than the latency model).
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Also starts an engine that is in no pool (see [`Stack::outsider`]).
    pub fn with_outsider(mut self) -> Self {
        self.outsider = true;
        self
    }

    /// Shipped Envoy config file under `envoy/` (default `envoy.yaml`).
    pub fn envoy_config(mut self, file: &str) -> Self {
        self.envoy_config = file.to_string();
        self
    }

    /// Starts engines, kvroute and Envoy, and waits until kvroute sees every engine healthy.
    pub async fn start(self) -> anyhow::Result<Stack> {
        let kvroute_bin = paths::kvroute_bin()?;
        let sim_bin = paths::sim_bin()?;
        let envoy_bin = paths::envoy_bin()?;
        let log_dir = paths::log_dir(&self.test)?;
        // Shown by the test runner when the test fails.
        println!("e2e process logs: {}", log_dir.display());
        let mut stack = Stack {
            log_dir: log_dir.clone(),
            sims: Vec::new(),
            outsider: None,
            kvroute: None,
            kvroute_bin,
            kvroute_args: Vec::new(),
            kvroute_starts: 0,
            envoy: None,
            client: http_client(false)?,
        };
        let mut pending = Vec::new();
        for i in 0..self.engines {
            // vLLM dialect: what kvroute assumes for a `--worker` given on the command line.
            pending.push(spawn_sim(
                &sim_bin,
                &format!("sim-{i}"),
                "vllm",
                self.time_scale,
                &self.sim_args,
                &log_dir,
            )?);
        }
        if self.outsider {
            pending.push(spawn_sim(
                &sim_bin,
                "outsider",
                "vllm",
                self.time_scale,
                &[],
                &log_dir,
            )?);
        }
        for proc in pending {
            let sim = Sim::ready(proc, READY_TIMEOUT).await?;
            if sim.id == "outsider" {
                stack.outsider = Some(sim);
            } else {
                stack.sims.push(sim);
            }
        }

        let mut args = vec![
            "serve".to_string(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--policy".into(),
            self.policy.clone(),
            "--health-interval-ms".into(),
            self.health_interval_ms.to_string(),
        ];
        if let Some(yaml) = &self.kvroute_config {
            let path = log_dir.join("kvroute.yaml");
            std::fs::write(&path, yaml)?;
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        for sim in &stack.sims {
            args.push("--worker".into());
            args.push(format!("http://{}", sim.addr));
        }
        stack.kvroute_args = args;
        let kvroute = stack.spawn_kvroute("kvroute", None).await?;
        let grpc = kvroute.grpc;
        stack.kvroute = Some(kvroute);

        let layout = EnvoyLayout {
            listen_port: 0,
            kvroute_grpc: grpc,
            engines: stack.sims.iter().map(|s| s.addr).collect(),
            body_mode: self.body_mode,
        };
        stack.envoy = Some(
            Envoy::start(
                READY_TIMEOUT,
                &envoy_bin,
                &self.envoy_config,
                &layout,
                &log_dir,
            )
            .await?,
        );
        stack.wait_alive_workers_healthy().await?;
        Ok(stack)
    }
}

/// The running kvroute.
struct Kvroute {
    grpc: SocketAddr,
    admin: SocketAddr,
    proc: Proc,
}

/// Engines + kvroute + Envoy for one test; everything is killed on drop.
pub struct Stack {
    log_dir: PathBuf,
    sims: Vec<Sim>,
    outsider: Option<Sim>,
    kvroute: Option<Kvroute>,
    kvroute_bin: PathBuf,
    kvroute_args: Vec<String>,
    kvroute_starts: u32,
    envoy: Option<Envoy>,
    client: reqwest::Client,
}

impl Stack {
    /// A builder for test `test` (names the log directory `target/e2e-logs/<test>/`).
    pub fn builder(test: &str) -> StackBuilder {
        StackBuilder {
            test: test.to_string(),
            engines: 4,
            policy: "round_robin".to_string(),
            body_mode: BodyMode::Buffered,
            health_interval_ms: 200,
            time_scale: 0.05,
            outsider: false,
            envoy_config: "envoy.yaml".to_string(),
            kvroute_config: None,
            sim_args: Vec::new(),
        }
    }

    /// The keep-alive client used by the helpers.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Where this test's process logs are.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The engines in the pool.
    pub fn sims(&self) -> &[Sim] {
        &self.sims
    }

    /// The engine that is in no pool, if started.
    pub fn outsider(&self) -> Option<&Sim> {
        self.outsider.as_ref()
    }

    /// `http://<gateway><path>`.
    pub fn gateway_url(&self, path: &str) -> String {
        let listen = self
            .envoy
            .as_ref()
            .map(|e| e.listen.to_string())
            .unwrap_or_default();
        format!("http://{listen}{path}")
    }

    /// `http://<envoy admin><path>`.
    pub fn envoy_admin_url(&self, path: &str) -> String {
        let admin = self
            .envoy
            .as_ref()
            .map(|e| e.admin.to_string())
            .unwrap_or_default();
        format!("http://{admin}{path}")
    }

    /// `http://<kvroute admin><path>` (kvroute's address survives restarts).
    pub fn kvroute_admin_url(&self, path: &str) -> String {
        let admin = self
            .kvroute
            .as_ref()
            .map(|k| k.admin.to_string())
            .unwrap_or_default();
        format!("http://{admin}{path}")
    }

    /// POSTs `body` as JSON to the gateway.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .post(self.gateway_url(path))
            .json(body)
            .send()
            .await?)
    }

    /// kvroute's `GET /workers`.
    pub async fn workers(&self) -> anyhow::Result<Vec<Value>> {
        let resp = self
            .client
            .get(self.kvroute_admin_url("/workers"))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET /workers: {status} {body}");
        }
        let list = body
            .as_array()
            .or_else(|| body.get("workers").and_then(Value::as_array))
            .ok_or_else(|| anyhow!("GET /workers: not a list: {body}"))?;
        Ok(list.clone())
    }

    /// Polls `GET /workers` until `pred` holds; returns the list that satisfied it.
    pub async fn wait_workers(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = self.workers().await;
            if let Ok(ws) = &last
                && pred(ws)
            {
                return Ok(ws.clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("condition on GET /workers not met within {timeout:?}; last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The `GET /workers` entry of an engine, matched by its `ip:port`.
    pub fn worker_entry<'a>(workers: &'a [Value], sim: &Sim) -> Option<&'a Value> {
        let addr = sim.addr.to_string();
        workers.iter().find(|w| {
            w["address"]
                .as_str()
                .is_some_and(|a| a.trim_start_matches("http://").trim_end_matches('/') == addr)
        })
    }

    /// Kills engine `index` (SIGKILL).
    pub fn kill_sim(&mut self, index: usize) {
        if let Some(sim) = self.sims.get_mut(index) {
            sim.proc.kill();
            sim.alive = false;
        }
    }

    /// Kills kvroute (SIGKILL).
    pub fn kill_kvroute(&mut self) {
        if let Some(k) = self.kvroute.as_mut() {
            k.proc.kill();
        }
    }

    /// Restarts kvroute (same addresses) with policy `name`.
    pub async fn set_policy(&mut self, name: &str) -> anyhow::Result<()> {
        match self.kvroute_args.iter().position(|a| a == "--policy") {
            Some(pos) => self.kvroute_args[pos + 1] = name.to_string(),
            None => self
                .kvroute_args
                .extend(["--policy".into(), name.to_string()]),
        }
        self.restart_kvroute().await
    }

    /// Restarts kvroute (same addresses) with the YAML config file `yaml` instead of any
    /// earlier `--config` or `--policy` flag.
    pub async fn set_config(&mut self, yaml: &str) -> anyhow::Result<()> {
        let path = self
            .log_dir
            .join(format!("kvroute-config-{}.yaml", self.kvroute_starts + 1));
        std::fs::write(&path, yaml)?;
        for flag in ["--policy", "--config"] {
            if let Some(pos) = self.kvroute_args.iter().position(|a| a == flag) {
                self.kvroute_args.drain(pos..pos + 2);
            }
        }
        self.kvroute_args.push("--config".into());
        self.kvroute_args.push(path.display().to_string());
        self.restart_kvroute().await
    }

    /// Starts kvroute again on the same gRPC and admin addresses (killing it first).
    pub async fn restart_kvroute(&mut self) -> anyhow::Result<()> {
        let old = self
            .kvroute
            .take()
            .ok_or_else(|| anyhow!("kvroute was never started"))?;
        let addrs = (old.grpc, old.admin);
        drop(old);
        self.kvroute_starts += 1;
        let name = format!("kvroute-{}", self.kvroute_starts);
        let started = self.spawn_kvroute(&name, Some(addrs)).await?;
        self.kvroute = Some(started);
        self.wait_alive_workers_healthy().await
    }

    /// Waits until kvroute reports healthy exactly the engines that were not killed.
    async fn wait_alive_workers_healthy(&self) -> anyhow::Result<()> {
        let alive = self.sims.iter().filter(|s| s.alive).count();
        self.wait_workers(READY_TIMEOUT, |ws| {
            ws.len() == self.sims.len()
                && ws
                    .iter()
                    .filter(|w| w["healthy"] == Value::Bool(true))
                    .count()
                    == alive
        })
        .await
        .context("kvroute did not report the running engines healthy")?;
        Ok(())
    }

    /// Starts kvroute (on `addrs` = (grpc, admin) if given) and waits for its ready line.
    async fn spawn_kvroute(
        &self,
        name: &str,
        addrs: Option<(SocketAddr, SocketAddr)>,
    ) -> anyhow::Result<Kvroute> {
        let mut args = self.kvroute_args.clone();
        if let Some((grpc, admin)) = addrs {
            for (flag, value) in [("--grpc-addr", grpc), ("--admin-addr", admin)] {
                if let Some(pos) = args.iter().position(|a| a == flag) {
                    args[pos + 1] = value.to_string();
                }
            }
        }
        let mut proc = Proc::spawn(name, &self.kvroute_bin, &args, &self.log_dir)?;
        let line = proc.wait_for_line("kvroute ready ", READY_TIMEOUT).await?;
        let (grpc, admin) = parse_kvroute_ready(&line)?;
        Ok(Kvroute { grpc, admin, proc })
    }

    /// Envoy's captured output so far (access log lines start with `[<time>] "`; they
    /// are flushed every 100 ms).
    pub fn envoy_log(&self) -> anyhow::Result<String> {
        let path = self.log_dir.join("envoy.log");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Whether Envoy's admin `/clusters` lists every host of `cluster` as healthy.
    pub async fn envoy_cluster_healthy(&self, cluster: &str) -> anyhow::Result<bool> {
        let text = self
            .client
            .get(self.envoy_admin_url("/clusters"))
            .send()
            .await?
            .text()
            .await?;
        let prefix = format!("{cluster}::");
        let flags: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("::health_flags::"))
            .filter_map(|l| l.rsplit("::").next())
            .collect();
        anyhow::ensure!(
            !flags.is_empty(),
            "Envoy lists no host of cluster {cluster}"
        );
        Ok(flags.iter().all(|f| *f == "healthy"))
    }

    /// Sum of the samples of metric `name` on kvroute's `/metrics` whose labels include
    /// every `labels` pair.
    pub async fn kvroute_metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(self.kvroute_admin_url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(crate::openai::metric_sum_matching(&text, name, labels))
    }

    /// Sum of every sample of metric `name` on an engine's `/metrics`.
    pub async fn sim_metric(&self, sim: &Sim, name: &str) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", sim.url()))
            .send()
            .await?
            .text()
            .await?;
        Ok(crate::openai::metric_sum(&text, name))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e process logs: {}", self.log_dir.display());
        }
    }
}

/// Reads `kvroute ready grpc=IP:PORT admin=IP:PORT`.
fn parse_kvroute_ready(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let value = |key: &str| -> anyhow::Result<SocketAddr> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {key}IP:PORT in kvroute's ready line {line:?}"))
    };
    Ok((value("grpc=")?, value("admin=")?))
}
