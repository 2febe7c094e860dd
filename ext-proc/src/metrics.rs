//! Prometheus metrics of the service.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kvroute_core::Router;

/// Labels of `kvroute_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Policy that decided (empty when the request never reached a policy).
    pub policy: &'static str,
    /// `forwarded`, or the status class of the local reply (`4xx`, `5xx`, ...).
    pub outcome: &'static str,
}

/// Labels of `kvroute_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// Who produced the response headers: `upstream`, `proxy` or `unknown`.
    pub origin: &'static str,
    /// `reported` when the proxy named the endpoint that served, `assumed` otherwise (the
    /// pick is credited).
    pub served: &'static str,
}

/// Labels of the per-worker gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's `ip:port`.
    pub worker: String,
}

/// Every metric the service exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    decision_duration: Histogram,
    prefix_match: Histogram,
    worker_in_flight: Family<WorkerLabels, Gauge>,
    worker_healthy: Family<WorkerLabels, Gauge>,
    requests_in_flight: Gauge,
    worker_waiting: Family<WorkerLabels, Gauge>,
    worker_running: Family<WorkerLabels, Gauge>,
    worker_kv_usage: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    /// Metrics about engine metrics scraping.
    pub scrape: crate::scrape::ScrapeMetrics,
    kv_event_batches: Family<KvEventLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    budget_refusals: Counter,
}

/// Labels of `kvroute_kv_event_batches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvEventLabels {
    /// The worker's `ip:port`.
    pub worker: String,
    /// One of [`KV_EVENT_OUTCOMES`].
    pub outcome: &'static str,
}

/// Outcomes of `kvroute_kv_event_batches_total`: `applied`, `undecodable`, the resync that
/// happened (`gap_cleared`, `replayed`, `restarted`), or a connection cut for an oversized
/// message (`oversized`).
pub const KV_EVENT_OUTCOMES: [&str; 6] = [
    "applied",
    "undecodable",
    "gap_cleared",
    "replayed",
    "restarted",
    "oversized",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        // 5 us .. ~84 ms in x2 steps: routing takes microseconds, the tail shows lock waits.
        let decision_duration = Histogram::new(exponential_buckets(5e-6, 2.0, 15));
        let prefix_match = Histogram::new((1..=10).map(|i| f64::from(i) / 10.0));
        let worker_in_flight = Family::<WorkerLabels, Gauge>::default();
        let worker_healthy = Family::<WorkerLabels, Gauge>::default();
        let requests_in_flight = Gauge::default();
        let kv_event_batches = Family::<KvEventLabels, Counter>::default();
        registry.register(
            "kvroute_kv_event_batches",
            "KV-event batches received from workers, by outcome",
            kv_event_batches.clone(),
        );
        registry.register(
            "kvroute_decisions",
            "Routing decisions by policy and outcome",
            decisions.clone(),
        );
        registry.register(
            "kvroute_decision_duration_seconds",
            "Time to take one routing decision, lock included",
            decision_duration.clone(),
        );
        registry.register(
            "kvroute_prefix_match_ratio",
            "Share of the prompt cached on the chosen worker, when the policy knows it",
            prefix_match.clone(),
        );
        registry.register(
            "kvroute_worker_in_flight",
            "Requests in flight per worker",
            worker_in_flight.clone(),
        );
        registry.register(
            "kvroute_worker_healthy",
            "1 when the worker passes its health checks",
            worker_healthy.clone(),
        );
        registry.register(
            "kvroute_requests_in_flight",
            "Requests routed and not yet completed",
            requests_in_flight.clone(),
        );
        let worker_waiting = Family::<WorkerLabels, Gauge>::default();
        let worker_running = Family::<WorkerLabels, Gauge>::default();
        let worker_kv_usage = Family::<WorkerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kvroute_worker_engine_waiting",
            "Requests waiting in the engine's queue, as last scraped (absent when stale)",
            worker_waiting.clone(),
        );
        registry.register(
            "kvroute_worker_engine_running",
            "Requests running on the engine, as last scraped (absent when stale)",
            worker_running.clone(),
        );
        registry.register(
            "kvroute_worker_engine_kv_cache_usage",
            "Engine KV-cache use 0..1, as last scraped (absent when stale)",
            worker_kv_usage.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "kvroute_responses",
            "Response headers of routed requests, by origin and whether the proxy reported the \
             endpoint that served",
            responses.clone(),
        );
        let budget_refusals = Counter::default();
        registry.register(
            "kvroute_buffered_bytes_refusals",
            "Requests answered 429 because their body would exceed limits.max_buffered_bytes",
            budget_refusals.clone(),
        );
        let scrape = crate::scrape::ScrapeMetrics::default();
        scrape.register(&mut registry);
        Metrics {
            registry,
            worker_waiting,
            worker_running,
            worker_kv_usage,
            scrape,
            decisions,
            decision_duration,
            prefix_match,
            worker_in_flight,
            worker_healthy,
            requests_in_flight,
            kv_event_batches,
            responses,
            budget_refusals,
        }
    }

    /// Counts a request refused for the buffered-bytes budget.
    pub fn record_budget_refusal(&self) {
        self.budget_refusals.inc();
    }

    /// Counts the response headers of a routed request.
    pub fn record_response(&self, origin: kvroute_core::ResponseOrigin, reported: bool) {
        let origin = match origin {
            kvroute_core::ResponseOrigin::Upstream => "upstream",
            kvroute_core::ResponseOrigin::Proxy => "proxy",
            kvroute_core::ResponseOrigin::Unknown => "unknown",
        };
        let served = if reported { "reported" } else { "assumed" };
        self.responses
            .get_or_create(&ResponseLabels { origin, served })
            .inc();
    }

    /// Drops the KV-event series of a worker that left, so series do not pile up as pods
    /// come and go.
    pub fn forget_kv_events(&self, worker: &str) {
        for outcome in KV_EVENT_OUTCOMES {
            self.kv_event_batches.remove(&KvEventLabels {
                worker: worker.to_owned(),
                outcome,
            });
        }
    }

    /// Counts one KV-event batch (or resync) of `worker`.
    pub fn record_kv_events(&self, worker: &str, outcome: &'static str) {
        debug_assert!(KV_EVENT_OUTCOMES.contains(&outcome), "{outcome}");
        self.kv_event_batches
            .get_or_create(&KvEventLabels {
                worker: worker.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Records a decision that missed its deadline and let the request through unrouted
    /// (outcome `deadline_missed`).
    pub fn record_deadline_missed(&self, seconds: f64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: "",
                outcome: "deadline_missed",
            })
            .inc();
        self.decision_duration.observe(seconds);
    }

    /// Records one decision: its policy, outcome (`forwarded` or an HTTP status), duration
    /// and prefix match.
    pub fn record_decision(
        &self,
        policy: &'static str,
        status: Option<u16>,
        seconds: f64,
        prefix_match: Option<f32>,
    ) {
        let outcome = match status.map(|s| s / 100) {
            None => "forwarded",
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            Some(_) => "other",
        };
        self.decisions
            .get_or_create(&DecisionLabels { policy, outcome })
            .inc();
        self.decision_duration.observe(seconds);
        if let Some(m) = prefix_match {
            self.prefix_match.observe(f64::from(m));
        }
    }

    /// Encodes everything in the Prometheus text format, refreshing the gauges from `router`.
    pub fn encode(&self, router: &Router) -> String {
        self.worker_in_flight.clear();
        self.worker_healthy.clear();
        self.worker_waiting.clear();
        self.worker_running.clear();
        self.worker_kv_usage.clear();
        for w in router.workers().iter() {
            let labels = WorkerLabels {
                worker: w.spec.address.clone(),
            };
            self.worker_in_flight
                .get_or_create(&labels)
                .set(i64::from(w.in_flight));
            self.worker_healthy
                .get_or_create(&labels)
                .set(i64::from(w.healthy));
            if let Some(l) = w.load {
                self.worker_waiting
                    .get_or_create(&labels)
                    .set(i64::from(l.waiting));
                self.worker_running
                    .get_or_create(&labels)
                    .set(i64::from(l.running));
                self.worker_kv_usage
                    .get_or_create(&labels)
                    .set(f64::from(l.kv_cache_usage));
            }
        }
        self.requests_in_flight
            .set(i64::try_from(router.outstanding()).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
