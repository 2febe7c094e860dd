//! One test's gateway: simulated engines, kvroute and the real Envoy, on free ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::certs::TestPki;
use crate::client::http_client;
use crate::config::{BodyMode, EnvoyLayout};
use crate::envoy::Envoy;
use crate::paths;
use crate::process::Proc;
use crate::sim::{DEFAULT_TIME_SCALE, EngineSpec, Sim, spawn_sim, spawn_sim_with};

/// How long a process may take to become ready (debug builds on a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start; see [`Stack::builder`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    test: String,
    engines: usize,
    policy: Option<String>,
    body_mode: Option<BodyMode>,
    health_interval_ms: u64,
    time_scale: f64,
    outsider: bool,
    envoy_config: String,
    kvroute_config: Option<String>,
    static_workers: bool,
    kvroute_env: Vec<(String, String)>,
    sim_models: Vec<String>,
    engine_specs: Vec<EngineSpec>,
    kvroute_tls: bool,
    fail_closed: bool,
    per_try_timeout: Option<String>,
    sim_args: Vec<(usize, Vec<String>)>,
    unready: Vec<usize>,
    all_sim_args: Vec<String>,
    exact_args: Option<Vec<String>>,
}

impl StackBuilder {
    /// The pool as a list of engine specs (sets the number of engines): mixed dialects and
    /// engine kinds. kvroute learns them from a generated `workers:` config section.
    pub fn engine_specs(mut self, specs: Vec<EngineSpec>) -> Self {
        self.engines = specs.len();
        self.engine_specs = specs;
        self
    }

    /// Serves kvroute's gRPC port with mutual TLS (test certificates made now) and has Envoy
    /// connect to it with a client certificate.
    pub fn kvroute_tls(mut self) -> Self {
        self.kvroute_tls = true;
        self
    }

    /// Engine `index` is not expected to pass kvroute's health checks (start-up does not
    /// wait for it).
    pub fn unready(mut self, index: usize) -> Self {
        self.unready.push(index);
        self
    }

    /// Renders the Envoy config with `failure_mode_allow: false` (fail-closed variant).
    pub fn fail_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }

    /// Renders the Envoy routes with this `retry_policy.per_try_timeout` (e.g. `"1s"`).
    pub fn per_try_timeout(mut self, timeout: &str) -> Self {
        self.per_try_timeout = Some(timeout.to_string());
        self
    }

    /// Extra command-line arguments for engine `index` (e.g. `--health-delay-ms 1000`).
    pub fn sim_args(mut self, index: usize, args: &[&str]) -> Self {
        self.sim_args
            .push((index, args.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// Extra command-line arguments of every pool engine.
    pub fn all_sim_args(mut self, args: &[&str]) -> Self {
        self.all_sim_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A kvroute YAML config file (passed with `--config`; flags still set addresses,
    /// policy, health interval and workers).
    pub fn kvroute_config(mut self, yaml: &str) -> Self {
        self.kvroute_config = Some(yaml.to_string());
        self
    }

    /// kvroute gets no `--worker` flags: its workers come from its config's `discovery`
    /// section, so `start` does not wait for them (Envoy still lists every engine).
    pub fn discovered_workers(mut self) -> Self {
        self.static_workers = false;
        self
    }

    /// An environment variable for kvroute (for example `KUBECONFIG`).
    pub fn kvroute_env(mut self, key: &str, value: &str) -> Self {
        self.kvroute_env.push((key.to_string(), value.to_string()));
        self
    }

    /// The model each engine serves, by index (default [`MODEL`](crate::MODEL) for all).
    pub fn sim_models(mut self, models: &[&str]) -> Self {
        self.sim_models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Number of engines in the pool (default 4).
    pub fn engines(mut self, n: usize) -> Self {
        self.engines = n;
        self
    }

    /// kvroute policy name (default `round_robin`).
    pub fn policy(mut self, name: &str) -> Self {
        self.policy = Some(name.to_string());
        self
    }

    /// ext_proc request body mode (default as shipped, `FULL_DUPLEX_STREAMED`).
    pub fn body_mode(mut self, mode: BodyMode) -> Self {
        self.body_mode = Some(mode);
        self
    }

    /// Starts kvroute with exactly these arguments (no subcommand, addresses, policy or
    /// workers added: the Helm chart's argument list). Implies [`Self::discovered_workers`].
    pub fn kvroute_exact_args(mut self, args: &[&str]) -> Self {
        self.exact_args = Some(args.iter().map(|a| a.to_string()).collect());
        self.static_workers = false;
        self
    }

    /// The Envoy config a gateway generates for an InferencePool route
    /// (`tests/e2e/gateways/<shape>.yaml`, processing modes as generated), and kvroute on its
    /// defaults: no policy flag, no endpoint-list length.
    pub fn gateway(mut self, shape: &str) -> Self {
        self.envoy_config = format!("gateways/{shape}.yaml");
        self.policy = None;
        self.body_mode = None;
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
            kvroute_env: self.kvroute_env.clone(),
            kvroute_starts: 0,
            static_workers: self.static_workers,
            envoy: None,
            envoy_bin: envoy_bin.clone(),
            envoy_config: self.envoy_config.clone(),
            body_mode: self.body_mode,
            kvroute_tls: None,
            per_try_timeout: self.per_try_timeout.clone(),
            client: http_client(false)?,
            sim_bin: sim_bin.clone(),
        };
        let mut pending = Vec::new();
        let mut sim_args = Vec::new();
        for i in 0..self.engines {
            // Default: the vLLM dialect, what kvroute assumes for a `--worker` flag.
            let spec = self
                .engine_specs
                .get(i)
                .cloned()
                .unwrap_or_else(|| EngineSpec::engine("vllm"));
            let extra: Vec<String> = spec
                .sim_args
                .iter()
                .chain(&self.all_sim_args)
                .cloned()
                .chain(
                    self.sim_args
                        .iter()
                        .filter(|(index, _)| *index == i)
                        .flat_map(|(_, a)| a.iter().cloned()),
                )
                .collect();
            let (proc, args) = spawn_sim_with(
                &sim_bin,
                &format!("sim-{i}"),
                &spec.dialect,
                self.sim_models.get(i).map_or(crate::MODEL, String::as_str),
                self.time_scale,
                &extra,
                &log_dir,
            )?;
            pending.push(proc);
            sim_args.push(args);
        }
        if self.outsider {
            pending.push(spawn_sim(
                &sim_bin,
                "outsider",
                "vllm",
                crate::MODEL,
                self.time_scale,
                &log_dir,
            )?);
        }
        let mut sim_args = sim_args.into_iter();
        for proc in pending {
            let mut sim = Sim::ready(proc, READY_TIMEOUT).await?;
            if sim.id == "outsider" {
                stack.outsider = Some(sim);
            } else {
                sim.args = sim_args.next().unwrap_or_default();
                sim.alive = !self.unready.contains(&stack.sims.len());
                stack.sims.push(sim);
            }
        }

        let mut args = vec![
            "serve".to_string(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--health-addr".into(),
            "127.0.0.1:0".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--health-interval-ms".into(),
            self.health_interval_ms.to_string(),
        ];
        if let Some(policy) = &self.policy {
            args.extend(["--policy".into(), policy.clone()]);
        }
        // kvroute's own override_host config walks a fallback list and opts in to one, as
        // the shipped compose file and manifests do.
        let sets_list = self
            .kvroute_config
            .as_deref()
            .is_some_and(|y| y.contains("max_endpoints"));
        if self.envoy_config == "envoy.yaml" && !sets_list {
            args.extend(["--max-endpoints".into(), "3".into()]);
        }
        let pki = if self.kvroute_tls {
            Some(TestPki::generate(&log_dir.join("pki"))?)
        } else {
            None
        };
        stack.kvroute_tls = pki.as_ref().map(TestPki::envoy_client);
        let yaml = self.kvroute_yaml(&stack.sims, pki.as_ref())?;
        if let Some(yaml) = &yaml {
            let path = log_dir.join("kvroute.yaml");
            std::fs::write(&path, yaml)?;
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        if self.static_workers && self.engine_specs.is_empty() {
            for sim in &stack.sims {
                args.push("--worker".into());
                args.push(format!("http://{}", sim.addr));
            }
        }
        stack.kvroute_args = self.exact_args.clone().unwrap_or(args);
        let kvroute = stack.spawn_kvroute("kvroute", None).await?;
        let grpc = kvroute.grpc;
        stack.kvroute = Some(kvroute);

        let layout = EnvoyLayout {
            listen_port: 0,
            kvroute_grpc: grpc,
            engines: stack.sims.iter().map(|s| s.addr).collect(),
            body_mode: self.body_mode,
            kvroute_tls: stack.kvroute_tls.clone(),
            per_try_timeout: self.per_try_timeout.clone(),
        };
        stack.envoy = Some(
            Envoy::start(
                "envoy",
                READY_TIMEOUT,
                &envoy_bin,
                &self.envoy_config,
                &layout,
                self.fail_closed,
                &log_dir,
            )
            .await?,
        );
        if self.static_workers {
            stack.wait_alive_workers_healthy().await?;
        }
        Ok(stack)
    }
}

impl StackBuilder {
    /// kvroute's config file: the given YAML plus, when asked for, the `workers:` of the
    /// engine specs and the `tls:` section. `None`: no file.
    fn kvroute_yaml(&self, sims: &[Sim], pki: Option<&TestPki>) -> anyhow::Result<Option<String>> {
        if self.engine_specs.is_empty() && pki.is_none() {
            return Ok(self.kvroute_config.clone());
        }
        let mut doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(self.kvroute_config.as_deref().unwrap_or("{}"))
                .context("kvroute config is not YAML")?;
        let map = doc
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("kvroute config is not a mapping"))?;
        if !self.engine_specs.is_empty() {
            let workers: Vec<Value> = sims
                .iter()
                .zip(&self.engine_specs)
                .map(|(sim, spec)| {
                    let mut w = serde_json::json!({
                        "address": format!("http://{}", sim.addr),
                        "engine": spec.kind,
                    });
                    if let Some(p) = &spec.health_path {
                        w["health_path"] = Value::from(p.as_str());
                    }
                    w
                })
                .collect();
            map.insert("workers".into(), serde_yaml_ng::to_value(workers)?);
        }
        if let Some(pki) = pki {
            map.insert("tls".into(), serde_yaml_ng::to_value(pki.kvroute_server())?);
        }
        Ok(Some(serde_yaml_ng::to_string(&doc)?))
    }
}

/// The running kvroute.
struct Kvroute {
    grpc: SocketAddr,
    health: SocketAddr,
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
    kvroute_env: Vec<(String, String)>,
    kvroute_starts: u32,
    static_workers: bool,
    envoy: Option<Envoy>,
    envoy_bin: PathBuf,
    envoy_config: String,
    body_mode: Option<BodyMode>,
    /// Envoy's client side of kvroute's mutual TLS, when the stack uses it.
    kvroute_tls: Option<crate::certs::ClientTls>,
    per_try_timeout: Option<String>,
    client: reqwest::Client,
    sim_bin: PathBuf,
}

/// A second kvroute with its own Envoy, same arguments and engines as the stack's (see
/// [`Stack::start_replica`]).
pub struct Replica {
    kvroute: Kvroute,
    envoy: Envoy,
    client: reqwest::Client,
}

impl Replica {
    /// `http://<this replica's gateway><path>`.
    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.envoy.listen)
    }

    /// `http://<this replica's kvroute admin><path>`.
    pub fn kvroute_admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.kvroute.admin)
    }

    /// POSTs `body` as JSON to this replica's gateway.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .post(self.gateway_url(path))
            .json(body)
            .send()
            .await?)
    }

    /// Whether this replica's Envoy lists every host of `cluster` as healthy.
    pub async fn envoy_cluster_healthy(&self, cluster: &str) -> anyhow::Result<bool> {
        let url = format!("http://{}/clusters", self.envoy.admin);
        cluster_healthy(&self.client, &url, cluster).await
    }

    /// Polls this replica's `GET /workers` until `pred` holds.
    pub async fn wait_workers(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        wait_workers_at(
            &self.client,
            &self.kvroute_admin_url("/workers"),
            timeout,
            pred,
        )
        .await
    }
}

/// Whether the Envoy admin `/clusters` page at `url` lists every host of `cluster` healthy.
async fn cluster_healthy(
    client: &reqwest::Client,
    url: &str,
    cluster: &str,
) -> anyhow::Result<bool> {
    let text = client.get(url).send().await?.text().await?;
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

/// `GET <url>` (a kvroute `/workers`) as a list.
async fn get_workers(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<Value>> {
    let resp = client.get(url).send().await?;
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

/// Polls `GET <url>` until `pred` holds; returns the list that satisfied it.
async fn wait_workers_at(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = get_workers(client, url).await;
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

impl Stack {
    /// A builder for test `test` (names the log directory `target/e2e-logs/<test>/`).
    pub fn builder(test: &str) -> StackBuilder {
        StackBuilder {
            test: test.to_string(),
            engines: 4,
            policy: Some("round_robin".to_string()),
            body_mode: Some(BodyMode::default()),
            health_interval_ms: 200,
            time_scale: DEFAULT_TIME_SCALE,
            outsider: false,
            envoy_config: "envoy.yaml".to_string(),
            kvroute_config: None,
            static_workers: true,
            kvroute_env: Vec::new(),
            sim_models: Vec::new(),
            engine_specs: Vec::new(),
            kvroute_tls: false,
            fail_closed: false,
            per_try_timeout: None,
            sim_args: Vec::new(),
            unready: Vec::new(),
            all_sim_args: Vec::new(),
            exact_args: None,
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
        get_workers(&self.client, &self.kvroute_admin_url("/workers")).await
    }

    /// Starts another kvroute (same arguments, environment and engines, its own ports) with
    /// its own Envoy (same config and engines): a second replica of the gateway.
    pub async fn start_replica(&self, name: &str) -> anyhow::Result<Replica> {
        let kvroute = self.spawn_kvroute(&format!("kvroute-{name}"), None).await?;
        let layout = EnvoyLayout {
            listen_port: 0,
            kvroute_grpc: kvroute.grpc,
            engines: self.sims.iter().map(|s| s.addr).collect(),
            body_mode: self.body_mode,
            kvroute_tls: self.kvroute_tls.clone(),
            per_try_timeout: self.per_try_timeout.clone(),
        };
        let envoy = Envoy::start(
            &format!("envoy-{name}"),
            READY_TIMEOUT,
            &self.envoy_bin,
            &self.envoy_config,
            &layout,
            false,
            &self.log_dir,
        )
        .await?;
        Ok(Replica {
            kvroute,
            envoy,
            client: http_client(false)?,
        })
    }

    /// Polls `GET /workers` until `pred` holds; returns the list that satisfied it.
    pub async fn wait_workers(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        wait_workers_at(
            &self.client,
            &self.kvroute_admin_url("/workers"),
            timeout,
            pred,
        )
        .await
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

    /// Freezes engine `index` (SIGSTOP): the kernel still accepts its connections and
    /// requests, nothing answers, like a hung engine process.
    pub fn pause_sim(&self, index: usize) -> anyhow::Result<()> {
        let sim = self
            .sims
            .get(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        sim.proc.signal("STOP")
    }

    /// Lets frozen engine `index` run again (SIGCONT).
    pub fn resume_sim(&self, index: usize) -> anyhow::Result<()> {
        let sim = self
            .sims
            .get(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        sim.proc.signal("CONT")
    }

    /// Starts killed engine `index` again on the same port with the same arguments (a
    /// restarted pod: same address, empty cache).
    pub async fn restart_sim(&mut self, index: usize) -> anyhow::Result<()> {
        let sim = self
            .sims
            .get_mut(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        sim.proc.kill();
        let mut args = sim.args.clone();
        if let Some(pos) = args.iter().position(|a| a == "--port") {
            args[pos + 1] = sim.addr.port().to_string();
        }
        let proc = Proc::spawn(&sim.id, &self.sim_bin, &args, &self.log_dir)?;
        let mut fresh = Sim::ready(proc, READY_TIMEOUT).await?;
        anyhow::ensure!(
            fresh.addr == sim.addr,
            "restarted {} on {} instead of {}",
            sim.id,
            fresh.addr,
            sim.addr
        );
        fresh.args = args;
        *sim = fresh;
        Ok(())
    }

    /// From now on engine `index` is expected to pass health checks (see
    /// [`StackBuilder::unready`]).
    pub fn expect_ready(&mut self, index: usize) {
        if let Some(sim) = self.sims.get_mut(index) {
            sim.alive = true;
        }
    }

    /// kvroute's plaintext gRPC health address.
    pub fn kvroute_health_addr(&self) -> Option<SocketAddr> {
        self.kvroute.as_ref().map(|k| k.health)
    }

    /// kvroute's ext_proc gRPC address.
    pub fn kvroute_grpc_addr(&self) -> Option<SocketAddr> {
        self.kvroute.as_ref().map(|k| k.grpc)
    }

    /// kvroute's process id (for memory sampling).
    pub fn kvroute_pid(&self) -> Option<u32> {
        self.kvroute.as_ref().map(|k| k.proc.pid())
    }

    /// Makes engine `index` fail inference requests with `status` (`count` of them, or all
    /// until [`Stack::clear_sim_fault`]), through its test-only `POST /sim/fault`.
    pub async fn sim_fault(
        &self,
        index: usize,
        status: u16,
        count: Option<u64>,
    ) -> anyhow::Result<()> {
        let sim = self
            .sims
            .get(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        let resp = self
            .client
            .post(format!("{}/sim/fault", sim.url()))
            .json(&serde_json::json!({ "status": status, "count": count }))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "POST /sim/fault: {}",
            resp.status()
        );
        Ok(())
    }

    /// Stops injecting faults on engine `index`.
    pub async fn clear_sim_fault(&self, index: usize) -> anyhow::Result<()> {
        let sim = self
            .sims
            .get(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        self.client
            .delete(format!("{}/sim/fault", sim.url()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Engine `index`'s `GET /sim/fault`: `requests` received and `failed` by a fault.
    pub async fn sim_counters(&self, index: usize) -> anyhow::Result<Value> {
        let sim = self
            .sims
            .get(index)
            .ok_or_else(|| anyhow!("no engine {index}"))?;
        Ok(self
            .client
            .get(format!("{}/sim/fault", sim.url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
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

    /// Starts kvroute again on the same addresses and returns as soon as it printed its
    /// ready line (no waiting for health checks).
    pub async fn restart_kvroute_no_wait(&mut self) -> anyhow::Result<()> {
        let old = self
            .kvroute
            .take()
            .ok_or_else(|| anyhow!("kvroute was never started"))?;
        let addrs = (old.grpc, old.admin);
        drop(old);
        self.kvroute_starts += 1;
        let name = format!("kvroute-{}", self.kvroute_starts);
        self.kvroute = Some(self.spawn_kvroute(&name, Some(addrs)).await?);
        Ok(())
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
        if !self.static_workers {
            return Ok(());
        }
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
        let mut proc = Proc::spawn_with_env(
            name,
            &self.kvroute_bin,
            &args,
            &self.kvroute_env,
            &self.log_dir,
        )?;
        let line = proc.wait_for_line("kvroute ready ", READY_TIMEOUT).await?;
        let [grpc, health, admin] = parse_kvroute_ready(&line)?;
        Ok(Kvroute {
            grpc,
            health,
            admin,
            proc,
        })
    }

    /// Envoy's captured output so far (access log lines start with `[<time>] "`; they
    /// are flushed every 100 ms).
    pub fn envoy_log(&self) -> anyhow::Result<String> {
        let path = self.log_dir.join("envoy.log");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Whether Envoy's admin `/clusters` lists every host of `cluster` as healthy.
    pub async fn envoy_cluster_healthy(&self, cluster: &str) -> anyhow::Result<bool> {
        cluster_healthy(&self.client, &self.envoy_admin_url("/clusters"), cluster).await
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

/// Reads the gRPC, health and admin addresses of `kvroute ready grpc=IP:PORT
/// health=IP:PORT metrics=IP:PORT admin=IP:PORT`; an unspecified address (`[::]`, `0.0.0.0`)
/// becomes loopback, where a local client reaches it.
fn parse_kvroute_ready(line: &str) -> anyhow::Result<[SocketAddr; 3]> {
    let value = |key: &str| -> anyhow::Result<SocketAddr> {
        let addr: SocketAddr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {key}IP:PORT in kvroute's ready line {line:?}"))?;
        Ok(if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        })
    };
    Ok([value("grpc=")?, value("health=")?, value("admin=")?])
}
