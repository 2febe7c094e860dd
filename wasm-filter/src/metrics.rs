//! Envoy metrics the filter defines (visible in Envoy's admin `/stats`), shared by all VMs.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// One metric of the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Requests forwarded with a destination chosen by the router (counter).
    Decisions,
    /// Requests answered locally: errors, `/v1/models` (counter).
    LocalReplies,
    /// Requests routed and not yet released, across all VMs (gauge).
    InFlight,
    /// In-flight tickets released at stream end (counter).
    Released,
    /// Decision events sent to sibling VMs (counter).
    EventsPublished,
    /// Decision events from sibling VMs replayed into this VM's router (counter).
    EventsApplied,
    /// Worker lists applied from the admin API (counter).
    FleetSyncs,
}

impl Metric {
    const ALL: [Metric; 7] = [
        Metric::Decisions,
        Metric::LocalReplies,
        Metric::InFlight,
        Metric::Released,
        Metric::EventsPublished,
        Metric::EventsApplied,
        Metric::FleetSyncs,
    ];

    /// The metric's name in Envoy's stats.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Decisions => "kvroute_decisions_total",
            Metric::LocalReplies => "kvroute_local_replies_total",
            Metric::InFlight => "kvroute_in_flight",
            Metric::Released => "kvroute_released_total",
            Metric::EventsPublished => "kvroute_events_published_total",
            Metric::EventsApplied => "kvroute_events_applied_total",
            Metric::FleetSyncs => "kvroute_fleet_syncs_total",
        }
    }

    fn kind(self) -> MetricType {
        match self {
            Metric::InFlight => MetricType::Gauge,
            _ => MetricType::Counter,
        }
    }
}

/// Handles of the defined metrics; a metric the host refused is silently skipped.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    ids: [Option<u32>; Metric::ALL.len()],
}

impl Metrics {
    /// Defines every metric with the host (idempotent across VMs: same name, same metric).
    pub fn define() -> Metrics {
        let mut ids = [None; Metric::ALL.len()];
        for (slot, m) in ids.iter_mut().zip(Metric::ALL) {
            match hostcalls::define_metric(m.kind(), m.name()) {
                Ok(id) => *slot = Some(id),
                Err(status) => log::warn!("kvroute: cannot define metric {}: {status:?}", m.name()),
            }
        }
        Metrics { ids }
    }

    /// Adds `delta` to a counter or gauge.
    pub fn add(&self, metric: Metric, delta: i64) {
        let idx = Metric::ALL.iter().position(|m| *m == metric);
        if let Some(id) = idx.and_then(|i| self.ids[i]) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}
