//! The router: the worker set, one policy per model, and in-flight accounting.
//!
//! This is the sans-IO state machine both shells drive. It is `Send` but not shared: the
//! ext_proc service keeps it behind a mutex, the wasm filter owns one per VM.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::circuit::{Circuit, CircuitConfig, CircuitState, ResponseOrigin, Transition};
use crate::error::RouteError;
use crate::kv_events::KvEventBatch;
use crate::policy::{Policy, PolicyConfig, PolicyEnv};
use crate::request::RouteRequest;
use crate::worker::{LoadReport, Worker, WorkerId, WorkerSet, WorkerSpec};

/// Router settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Policy for every model without its own entry in `model_policies`.
    pub policy: PolicyConfig,
    /// Per-model policy overrides, keyed by model name.
    pub model_policies: BTreeMap<String, PolicyConfig>,
    /// Length of the endpoint list returned to the proxy: the choice plus ordered fallbacks.
    /// 1 (the default, as the reference endpoint picker) works with every gateway; a longer
    /// list only helps a proxy that walks it on retry (Envoy's `override_host` load
    /// balancer, as in kvroute's own `envoy/envoy.yaml`); an `ORIGINAL_DST` cluster or a
    /// gateway that parses one address fails every request given a list.
    pub max_endpoints: usize,
    /// A worker with this many requests in flight receives no more; when every candidate is
    /// full the request is shed with 429. `None`: no limit.
    pub max_in_flight_per_worker: Option<u32>,
    /// Per-worker circuit breaker fed with request results.
    pub circuit: CircuitConfig,
}

impl Default for RouterConfig {
    fn default() -> RouterConfig {
        RouterConfig {
            policy: PolicyConfig::default(),
            model_policies: BTreeMap::new(),
            max_endpoints: 1,
            max_in_flight_per_worker: None,
            circuit: CircuitConfig::default(),
        }
    }
}

/// Longest endpoint list a decision may name.
pub const MAX_ENDPOINTS: usize = 16;

impl RouterConfig {
    /// Checks every value, the policies' parameters included; the error is
    /// `(field, message)` with the field under `router.`. Every shell calls it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |f: &str, m: &str| Err((format!("router.{f}"), m.to_owned()));
        if !(1..=MAX_ENDPOINTS).contains(&self.max_endpoints) {
            return invalid("max_endpoints", "must be within 1..=16");
        }
        if self.max_in_flight_per_worker == Some(0) {
            return invalid(
                "max_in_flight_per_worker",
                "must be at least 1 (omit it for no limit)",
            );
        }
        self.circuit.validate()?;
        self.policy
            .validate()
            .map_err(|(f, m)| (format!("router.policy.{f}"), m))?;
        for (model, policy) in &self.model_policies {
            if model.is_empty() {
                return invalid("model_policies", "model name must not be empty");
            }
            policy
                .validate()
                .map_err(|(f, m)| (format!("router.model_policies.{model}.{f}"), m))?;
        }
        Ok(())
    }
}

/// Proof that a request is in flight on a worker. Not `Clone`: handing it back to
/// [`Router::complete`] consumes it, so a request is released at most once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a ticket must be handed back to Router::complete when the request ends"]
pub struct Ticket {
    worker: WorkerId,
    /// The request's sequence number in this router (ties a half-open trial to it).
    request: u64,
}

impl Ticket {
    /// The worker the request is counted on.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }
}

/// A routing decision.
#[derive(Debug)]
pub struct Routed {
    /// In-flight proof; return it to [`Router::complete`].
    pub ticket: Ticket,
    /// Ordered `ip:port` list: the choice first, then fallbacks.
    pub endpoints: Vec<String>,
    /// Name of the policy that decided.
    pub policy: &'static str,
    /// Share of the prompt cached on the choice, when the policy knows it.
    pub prefix_match: Option<f32>,
}

/// Workers, policies and in-flight accounting.
pub struct Router {
    config: RouterConfig,
    workers: WorkerSet,
    default_policy: Box<dyn Policy>,
    model_policies: HashMap<String, Box<dyn Policy>>,
    rng: SmallRng,
    outstanding: u64,
    next_request: u64,
    circuits: HashMap<WorkerId, Circuit>,
}

/// What the proxy reported when a response started: the endpoint that served it (when it
/// says), the `:status`, and where the response came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseReport<'a> {
    /// `ip:port` the proxy used (a retry may have walked the fallback list).
    pub served: Option<&'a str>,
    /// HTTP status of the response.
    pub status: Option<u16>,
    /// Whether a worker produced the response or the proxy did.
    pub origin: ResponseOrigin,
}

impl Router {
    /// A router with no workers; `seed` seeds every random choice.
    pub fn new(config: RouterConfig, seed: u64) -> Router {
        let default_policy = config.policy.build();
        let model_policies = config
            .model_policies
            .iter()
            .map(|(model, p)| (model.clone(), p.build()))
            .collect();
        Router {
            config,
            workers: WorkerSet::new(),
            default_policy,
            model_policies,
            rng: SmallRng::seed_from_u64(seed),
            outstanding: 0,
            next_request: 0,
            circuits: HashMap::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Every known worker.
    pub fn workers(&self) -> &WorkerSet {
        &self.workers
    }

    /// Requests routed and not yet completed.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// Adds a worker or updates the spec of the one at the same address.
    pub fn upsert_worker(&mut self, spec: WorkerSpec) -> WorkerId {
        self.workers.upsert(spec).0
    }

    /// Removes a worker and purges it from every policy's state at once. Tickets still out for
    /// it complete harmlessly.
    pub fn remove_worker(&mut self, id: WorkerId) -> Option<Worker> {
        let removed = self.workers.remove(id)?;
        self.circuits.remove(&id);
        self.default_policy.worker_removed(id);
        for p in self.model_policies.values_mut() {
            p.worker_removed(id);
        }
        Some(removed)
    }

    /// Feeds a batch of `worker`'s KV-cache events to every policy (unknown workers are
    /// ignored: their events may arrive before they join or after they leave).
    pub fn apply_kv_events(&mut self, worker: WorkerId, batch: &KvEventBatch) {
        if self.workers.get(worker).is_none() {
            return;
        }
        self.default_policy.kv_events(worker, batch);
        for p in self.model_policies.values_mut() {
            p.kv_events(worker, batch);
        }
    }

    /// Records a health-check verdict. A worker turning unhealthy is ejected: every policy
    /// forgets what it learned about it ([`Policy::worker_unavailable`]), so the cache-aware
    /// index does not keep pointing prefixes at a dead engine whose cache is gone.
    pub fn set_healthy(&mut self, id: WorkerId, healthy: bool) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        let ejected = w.healthy && !healthy;
        let recovered = !w.healthy && healthy;
        w.healthy = healthy;
        if recovered {
            // Back after an ejection (a restarted engine): its old failures say nothing now.
            self.circuits.remove(&id);
        }
        if ejected {
            self.default_policy.worker_unavailable(id);
            for p in self.model_policies.values_mut() {
                p.worker_unavailable(id);
            }
        }
    }

    /// The circuit-breaker state of a worker as of `now_ms`.
    pub fn circuit_state(&self, id: WorkerId, now_ms: u64) -> CircuitState {
        self.circuits.get(&id).map_or(CircuitState::Closed, |c| {
            c.state(now_ms, &self.config.circuit)
        })
    }

    /// Records the result of a forwarded request on the worker its ticket names (a 5xx
    /// answer or a reset is a failure). Returns the circuit transition it caused.
    pub fn record_result(
        &mut self,
        ticket: &Ticket,
        success: bool,
        now_ms: u64,
    ) -> Option<Transition> {
        self.workers.get(ticket.worker)?;
        self.circuits.entry(ticket.worker).or_default().record(
            success,
            now_ms,
            &self.config.circuit,
        )
    }

    fn circuit_allows(&self, id: WorkerId, now_ms: u64) -> bool {
        self.circuits
            .get(&id)
            .is_none_or(|c| c.allows(now_ms, &self.config.circuit))
    }

    /// Leaves out the candidates whose circuit is open, unless fewer than the panic threshold
    /// would remain (or none at all): then every candidate is tried, as Envoy's load balancer
    /// does in panic mode, rather than piling the load on a few or failing.
    fn obey_circuits(&self, candidates: &mut Vec<&Worker>, now_ms: u64) {
        if self.circuits.is_empty() || candidates.is_empty() {
            return;
        }
        let usable = candidates
            .iter()
            .filter(|w| self.circuit_allows(w.id, now_ms))
            .count();
        let share = usable as f64 / candidates.len() as f64;
        if usable == 0 || share < self.config.circuit.panic_threshold {
            return;
        }
        candidates.retain(|w| self.circuit_allows(w.id, now_ms));
    }

    /// Counts a request in flight on `id`, marking a half-open circuit's trial, and returns
    /// its ticket.
    fn admit(&mut self, id: WorkerId, now_ms: u64) -> Ticket {
        if let Some(w) = self.workers.get_mut(id) {
            w.in_flight = w.in_flight.saturating_add(1);
        }
        let request = self.next_request;
        self.next_request += 1;
        if let Some(c) = self.circuits.get_mut(&id) {
            c.on_sent(request, now_ms, &self.config.circuit);
        }
        self.outstanding += 1;
        Ticket {
            worker: id,
            request,
        }
    }

    /// Starts or stops draining a worker: a draining worker gets no new requests.
    pub fn set_draining(&mut self, id: WorkerId, draining: bool) {
        if let Some(w) = self.workers.get_mut(id) {
            w.draining = draining;
        }
    }

    /// Records how many requests routers sharing this one's state have in flight on `id`.
    pub fn set_in_flight_elsewhere(&mut self, id: WorkerId, count: u32) {
        if let Some(w) = self.workers.get_mut(id) {
            w.in_flight_elsewhere = count;
        }
    }

    /// Records (or clears, with `None`) the engine's own load report, clamped to sane ranges
    /// ([`LoadReport::sanitized`]).
    pub fn set_load(&mut self, id: WorkerId, load: Option<LoadReport>) {
        if let Some(w) = self.workers.get_mut(id) {
            w.load = load.map(LoadReport::sanitized);
        }
    }

    /// Chooses workers for `req`. `subset` is the proxy's subset hint (`ip:port` list): when
    /// given, only those endpoints are eligible.
    pub fn route(
        &mut self,
        req: &RouteRequest<'_>,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Result<Routed, RouteError> {
        let serves = |w: &Worker| req.model.is_empty() || w.spec.serves(req.model);
        let mut any_serving = false;
        let mut any_routable = false;
        let mut any_in_subset = false;
        let mut candidates: Vec<&Worker> = Vec::with_capacity(self.workers.len());
        for w in self.workers.iter() {
            if !serves(w) {
                continue;
            }
            any_serving = true;
            if !w.is_routable() {
                continue;
            }
            any_routable = true;
            if let Some(subset) = subset
                && !subset.contains(&w.spec.address.as_str())
            {
                continue;
            }
            any_in_subset = true;
            if let Some(cap) = self.config.max_in_flight_per_worker
                && w.in_flight >= cap
            {
                continue;
            }
            candidates.push(w);
        }
        self.obey_circuits(&mut candidates, now_ms);
        if candidates.is_empty() {
            let model = req.model.to_owned();
            return Err(if !any_serving {
                RouteError::ModelNotFound { model }
            } else if !any_routable {
                RouteError::NoHealthyWorker { model }
            } else if !any_in_subset {
                RouteError::EmptySubset
            } else {
                RouteError::Overloaded
            });
        }

        let policy = match self.model_policies.get_mut(req.model) {
            Some(p) => p,
            None => &mut self.default_policy,
        };
        let mut env = PolicyEnv {
            now_ms,
            rng: &mut self.rng,
        };
        let pick = policy.pick(req, &candidates, &mut env);
        let policy_name = policy.name();
        debug_assert!(
            !pick.ranked.is_empty(),
            "policy {policy_name} ranked nothing"
        );
        let first = pick.ranked.first().copied().unwrap_or(candidates[0].id);
        let endpoints: Vec<String> = pick
            .ranked
            .iter()
            .filter_map(|id| candidates.iter().find(|w| w.id == *id))
            .take(self.config.max_endpoints.max(1))
            .map(|w| w.spec.address.clone())
            .collect();

        let ticket = self.admit(first, now_ms);
        Ok(Routed {
            ticket,
            endpoints,
            policy: policy_name,
            prefix_match: pick.prefix_match,
        })
    }

    /// Chooses the least-loaded routable worker regardless of model (random tie-break), for
    /// requests that are not routed by content. `subset` as in [`Router::route`].
    pub fn route_any(
        &mut self,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Result<Routed, RouteError> {
        let in_subset = |w: &&Worker| subset.is_none_or(|s| s.contains(&w.spec.address.as_str()));
        let mut candidates: Vec<&Worker> = self
            .workers
            .iter()
            .filter(|w| w.is_routable())
            .filter(in_subset)
            .collect();
        self.obey_circuits(&mut candidates, now_ms);
        if candidates.is_empty() {
            return Err(if self.workers.iter().any(Worker::is_routable) {
                RouteError::EmptySubset
            } else {
                RouteError::NoHealthyWorker {
                    model: String::new(),
                }
            });
        }
        let min = candidates.iter().map(|w| w.load()).min().unwrap_or(0);
        let tied: Vec<&&Worker> = candidates.iter().filter(|w| w.load() == min).collect();
        let first = tied[self.rng.random_range(0..tied.len())].id;
        let ranked = crate::policy::rank_with_first(Some(first), &candidates);
        let endpoints = ranked
            .iter()
            .take(self.config.max_endpoints.max(1))
            .filter_map(|id| candidates.iter().find(|w| w.id == *id))
            .map(|w| w.spec.address.clone())
            .collect();
        let ticket = self.admit(first, now_ms);
        Ok(Routed {
            ticket,
            endpoints,
            policy: "least_request",
            prefix_match: None,
        })
    }

    /// The proxy reported that the request was served by `address` (a retry may have walked
    /// the fallback list): move the in-flight count there. Serving elsewhere means the proxy
    /// gave up on the pick (refused, reset or timed out), which counts as a failure of the
    /// pick for its circuit breaker; the returned transition is that circuit's.
    pub fn served_by(
        &mut self,
        ticket: &mut Ticket,
        address: &str,
        now_ms: u64,
    ) -> Option<Transition> {
        let served = self.workers.by_address(address).map(|w| w.id)?;
        if served == ticket.worker {
            return None;
        }
        let transition = self.record_result(ticket, false, now_ms);
        if let Some(w) = self.workers.get_mut(ticket.worker) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
        if let Some(w) = self.workers.get_mut(served) {
            w.in_flight = w.in_flight.saturating_add(1);
        }
        ticket.worker = served;
        transition
    }

    /// The proxy reported response headers for the request. Moves the count to the serving
    /// worker ([`Router::served_by`]) and feeds the serving worker's circuit breaker: a 5xx
    /// the worker answered is a failure; one the proxy produced itself
    /// ([`ResponseOrigin::Proxy`]: no host, no original destination, connection refused, its
    /// own filters) says nothing about the worker and is not recorded, and a response of
    /// unknown origin counts only as a success. Both shells call this once per response;
    /// returns the circuit transitions it caused, by worker.
    pub fn response_started(
        &mut self,
        ticket: &mut Ticket,
        report: ResponseReport<'_>,
        now_ms: u64,
    ) -> Vec<(WorkerId, Transition)> {
        let mut transitions = Vec::new();
        let picked = ticket.worker;
        if let Some(t) = report
            .served
            .and_then(|address| self.served_by(ticket, address, now_ms))
        {
            transitions.push((picked, t));
        }
        let success = report.status.is_some_and(|s| s < 500);
        let counts = match report.origin {
            ResponseOrigin::Upstream => true,
            ResponseOrigin::Proxy => false,
            ResponseOrigin::Unknown => success,
        };
        if counts && let Some(t) = self.record_result(ticket, success, now_ms) {
            transitions.push((ticket.worker, t));
        }
        transitions
    }

    /// The request ended (finished, failed, reset or abandoned): release its in-flight count.
    pub fn complete(&mut self, ticket: Ticket) {
        if let Some(w) = self.workers.get_mut(ticket.worker) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
        // A half-open trial that ended without a result (the client left before the response
        // headers) must not hold the trial slot: the next request is the trial.
        if let Some(c) = self.circuits.get_mut(&ticket.worker) {
            c.on_abandoned(ticket.request);
        }
        self.outstanding = self.outstanding.saturating_sub(1);
    }
}
