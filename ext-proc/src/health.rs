//! Worker registry and active health checks.
//!
//! A worker added to the router starts UNHEALTHY and is probed at once: no request is sent to
//! a worker before it answered its health check once (with `healthy_threshold: 1`, the
//! default, that is the first probe). At start-up the service waits for that first probe of
//! every configured worker before accepting requests ([`Workers::first_round`]). Any 2xx is
//! healthy; a timeout, a connection error or another status is a failure.
//! `healthy_threshold` consecutive successes make a worker healthy, `unhealthy_threshold`
//! consecutive failures unhealthy. A worker configured without
//! models learns them from its `/v1/models` on every transition to healthy (it serves every
//! model until that succeeds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvroute_core::WorkerSpec;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

use crate::config::{HealthConfig, WorkerConfig};
use crate::state::Shared;

/// gRPC health service name reporting whether any worker can take requests.
pub const READINESS_SERVICE: &str = "readiness";
/// gRPC health service name reporting that the process is up.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Adds, updates and removes workers, each with its own probe task.
pub struct Workers {
    shared: Arc<Shared>,
    config: HealthConfig,
    client: reqwest::Client,
    reporter: HealthReporter,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    first_round: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// A registry probing with `config`, reporting readiness to `reporter`.
    pub fn new(
        shared: Arc<Shared>,
        config: HealthConfig,
        reporter: HealthReporter,
    ) -> anyhow::Result<Arc<Workers>> {
        let client = crate::engine_http::client(usize::MAX)?;
        Ok(Arc::new(Workers {
            shared,
            config,
            client,
            reporter,
            tasks: Mutex::new(HashMap::new()),
            first_round: Mutex::new(Vec::new()),
        }))
    }

    /// Adds a worker (unhealthy until probed) or updates one at the same address (keeping its
    /// health and counters), and (re)starts its probe task. Returns the normalized address and
    /// whether the worker is new.
    pub fn upsert(self: &Arc<Self>, worker: &WorkerConfig) -> Result<(String, bool), String> {
        self.upsert_inner(worker, None)
    }

    /// [`Workers::upsert`] for a worker known at start-up: [`Workers::first_round`] waits for
    /// its first probe.
    pub fn upsert_initial(
        self: &Arc<Self>,
        worker: &WorkerConfig,
    ) -> Result<(String, bool), String> {
        let (tx, rx) = oneshot::channel();
        let added = self.upsert_inner(worker, Some(tx))?;
        self.first_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rx);
        Ok(added)
    }

    /// Waits until every worker added with [`Workers::upsert_initial`] was probed once (and,
    /// when healthy, asked for its models), at most two probe timeouts: a picker that
    /// announces readiness before then would answer 503 to requests it could route.
    pub async fn first_round(&self) {
        let pending: Vec<_> = self
            .first_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let bound = Duration::from_millis(self.config.timeout_ms.saturating_mul(2) + 100);
        let all = futures_util::future::join_all(pending);
        if tokio::time::timeout(bound, all).await.is_err() {
            warn!("some workers did not answer their first health probe in time");
        }
        self.update_readiness().await;
    }

    fn upsert_inner(
        self: &Arc<Self>,
        worker: &WorkerConfig,
        first_done: Option<oneshot::Sender<()>>,
    ) -> Result<(String, bool), String> {
        let spec = worker.spec()?;
        if let Some(p) = &worker.health_path
            && !p.starts_with('/')
        {
            return Err(format!("health_path `{p}` must start with /"));
        }
        let address = spec.address.clone();
        let (is_new, healthy) = {
            let mut router = self.shared.router();
            let existing = router
                .workers()
                .by_address(&address)
                .map(|w| (w.healthy, w.spec.models.clone()));
            let mut spec = spec.clone();
            // Keep models learned from the worker when the update does not list any.
            if let Some((_, known)) = &existing
                && spec.models.is_empty()
            {
                spec.models.clone_from(known);
            }
            let id = router.upsert_worker(spec);
            if existing.is_none() {
                router.set_healthy(id, false);
            }
            (existing.is_none(), existing.is_some_and(|(h, _)| h))
        };
        let probe = Probe {
            workers: Arc::clone(self),
            template: spec,
            discover: worker.models.is_empty(),
            url: format!(
                "http://{address}{}",
                worker.health_path.as_deref().unwrap_or(&self.config.path)
            ),
            healthy,
            first_done,
        };
        let handle = tokio::spawn(probe.run());
        let old = self.tasks().insert(address.clone(), handle);
        if let Some(old) = old {
            old.abort();
        }
        Ok((address, is_new))
    }

    /// Removes a worker and stops probing it; `false` if unknown.
    pub async fn remove(&self, address: &str) -> bool {
        let removed = {
            let mut router = self.shared.router();
            let id = router.workers().by_address(address).map(|w| w.id);
            id.and_then(|id| router.remove_worker(id)).is_some()
        };
        if let Some(task) = self.tasks().remove(address) {
            task.abort();
        }
        if removed {
            info!(worker = address, "worker removed");
            self.update_readiness().await;
        }
        removed
    }

    /// Stops every probe task.
    pub fn stop(&self) {
        for (_, task) in self.tasks().drain() {
            task.abort();
        }
    }

    /// Publishes the gRPC `readiness` status: serving when any worker can take requests.
    pub async fn update_readiness(&self) {
        let status = if self.shared.any_routable() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter
            .set_service_status(READINESS_SERVICE, status)
            .await;
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn fetch_models(&self, address: &str) -> Option<Vec<String>> {
        let url = format!("http://{address}/v1/models");
        let resp = self
            .client
            .get(&url)
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let v: serde_json::Value = resp.json().await.ok()?;
        let models: Vec<String> = v
            .get("data")?
            .as_array()?
            .iter()
            .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
            .collect();
        (!models.is_empty()).then_some(models)
    }
}

/// The probe loop of one worker.
struct Probe {
    workers: Arc<Workers>,
    template: WorkerSpec,
    discover: bool,
    url: String,
    healthy: bool,
    first_done: Option<oneshot::Sender<()>>,
}

impl Probe {
    async fn run(mut self) {
        let cfg = self.workers.config.clone();
        let mut ticker = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut discovered = false;
        loop {
            ticker.tick().await;
            let ok = self.probe(cfg.timeout_ms).await;
            if ok {
                successes = successes.saturating_add(1);
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                successes = 0;
            }
            let flip = if self.healthy {
                !ok && failures >= cfg.unhealthy_threshold
            } else {
                ok && successes >= cfg.healthy_threshold
            };
            if flip {
                self.healthy = !self.healthy;
                if self.healthy && self.discover {
                    discovered = self.discover_models().await || discovered;
                }
                if !self.set_healthy() {
                    return;
                }
                self.workers.update_readiness().await;
            } else if self.healthy && self.discover && !discovered {
                discovered = self.discover_models().await;
            }
            if let Some(done) = self.first_done.take() {
                let _ = done.send(());
            }
        }
    }

    async fn probe(&self, timeout_ms: u64) -> bool {
        let result = self
            .workers
            .client
            .get(&self.url)
            .timeout(Duration::from_millis(timeout_ms))
            .send()
            .await;
        match result {
            Ok(resp) => {
                let ok = resp.status().is_success();
                // Read the body so the connection goes back to the pool (a longer one is
                // dropped with its connection).
                let _ = crate::engine_http::read_capped(resp, crate::engine_http::MAX_HEALTH_BYTES)
                    .await;
                ok
            }
            Err(err) => {
                debug!(url = %self.url, error = %err, "health probe failed");
                false
            }
        }
    }

    /// Records the new health state; `false` when the worker is gone.
    fn set_healthy(&self) -> bool {
        let address = &self.template.address;
        let mut router = self.workers.shared.router();
        let Some(id) = router.workers().by_address(address).map(|w| w.id) else {
            return false;
        };
        router.set_healthy(id, self.healthy);
        drop(router);
        if self.healthy {
            info!(worker = %address, "worker healthy");
        } else {
            warn!(worker = %address, "worker unhealthy");
        }
        true
    }

    /// Learns the worker's models from its `/v1/models`; `true` on success.
    async fn discover_models(&self) -> bool {
        let address = &self.template.address;
        let Some(models) = self.workers.fetch_models(address).await else {
            debug!(worker = %address, "model discovery failed; serving every model");
            return false;
        };
        let mut router = self.workers.shared.router();
        if router.workers().by_address(address).is_none() {
            return false;
        }
        info!(worker = %address, models = ?models, "models discovered");
        router.upsert_worker(WorkerSpec {
            models,
            ..self.template.clone()
        });
        true
    }
}
