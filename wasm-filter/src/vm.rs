//! The state of one Wasm VM (one Envoy worker thread): the gateway, its router, the metrics
//! and this VM's membership in the cross-VM shared state.

use std::time::{SystemTime, UNIX_EPOCH};

use kvroute_core::shared_state::{self, DecisionEvent};
use kvroute_core::{ApiRoute, Gateway, LocalReply, Outcome, Router};
use proxy_wasm::hostcalls;

use crate::config::{PluginConfig, SharingConfig};
use crate::metrics::{Metric, Metrics};
use crate::sharing::Sharing;

/// One VM's routing state.
pub struct Vm {
    /// The request flow.
    pub gateway: Gateway,
    /// This VM's router.
    pub router: Router,
    /// The filter's metrics.
    pub metrics: Metrics,
    sharing_config: SharingConfig,
    sharing: Option<Sharing>,
    joined: bool,
}

/// Milliseconds since the Unix epoch on the host's clock (0 if unavailable).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Vm {
    /// Builds the VM state from a validated configuration.
    pub fn new(config: &PluginConfig) -> Vm {
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Vm {
            gateway: Gateway::new(config.gateway.clone()),
            router: config.build_router(seed),
            metrics: Metrics::define(),
            sharing_config: config.sharing.clone(),
            sharing: None,
            joined: false,
        }
    }

    /// Joins the shared state on this VM's first request. Lazily, because Envoy also runs a VM
    /// on its main thread that never serves requests and must not receive events.
    pub fn join_once(&mut self) {
        if !self.joined {
            self.joined = true;
            if self.sharing_config.enabled {
                self.sharing = Sharing::join(&self.sharing_config);
            }
        }
    }

    /// Replays every decision sibling VMs published since the last call.
    pub fn apply_events(&mut self, now_ms: u64) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        let router = &mut self.router;
        let applied = sharing.drain(|bytes| {
            if let Some(event) = DecisionEvent::decode(bytes) {
                shared_state::replay(router, &event, now_ms);
            }
        });
        if applied > 0 {
            self.metrics
                .add(Metric::EventsApplied, i64::try_from(applied).unwrap_or(0));
        }
    }

    /// Makes every worker's load include what the other VMs have in flight on it.
    fn sync_loads(&mut self) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        let loads: Vec<_> = self
            .router
            .workers()
            .iter()
            .map(|w| {
                let global = sharing.in_flight(&w.spec.address);
                let others = global.saturating_sub(u64::from(w.in_flight));
                (w.id, u32::try_from(others).unwrap_or(u32::MAX))
            })
            .collect();
        for (id, others) in loads {
            self.router.set_in_flight_elsewhere(id, others);
        }
    }

    /// Routes an inference request on its full body, publishing prefix-learning decisions to
    /// the sibling VMs.
    pub fn route_inference(
        &mut self,
        route: ApiRoute,
        body: &[u8],
        session: Option<&str>,
    ) -> Outcome {
        let now = now_ms();
        self.apply_events(now);
        self.sync_loads();
        let Vm {
            gateway,
            router,
            sharing,
            sharing_config,
            metrics,
            ..
        } = self;
        gateway.route_inference_observed(router, route, body, session, None, now, |req, routed| {
            let (Some(sharing), Some(address)) = (sharing.as_ref(), routed.endpoints.first())
            else {
                return;
            };
            if !shared_state::learns_from_decisions(routed.policy) {
                return;
            }
            let peers = sharing.peers();
            if peers.is_empty() {
                return;
            }
            let event =
                DecisionEvent::from_request(req, address, sharing_config.max_event_prompt_bytes);
            let sent = sharing.publish(&peers, &event.encode());
            metrics.add(Metric::EventsPublished, i64::try_from(sent).unwrap_or(0));
        })
    }

    /// Routes a request that is not routed by content.
    pub fn route_other(&mut self) -> Outcome {
        let now = now_ms();
        self.sync_loads();
        self.gateway.route_other(&mut self.router, None, now)
    }

    /// The local `/v1/models` answer, when the fleet view knows every worker's models.
    pub fn list_models(&self) -> Option<LocalReply> {
        self.gateway.list_models(&self.router, now_ms() / 1000)
    }

    /// Counts a forwarded request in flight on `address`, in every VM's view.
    pub fn acquired(&self, address: &str) {
        if let Some(sharing) = &self.sharing {
            sharing.add_in_flight(address, 1);
        }
        self.metrics.add(Metric::Decisions, 1);
        self.metrics.add(Metric::InFlight, 1);
    }

    /// Moves a shared in-flight count from `from` to `to` (a retry walked the fallback list).
    pub fn moved(&self, from: &str, to: &str) {
        if let Some(sharing) = &self.sharing {
            sharing.add_in_flight(from, -1);
            sharing.add_in_flight(to, 1);
        }
    }

    /// Releases a shared in-flight count on `address`.
    pub fn released(&self, address: &str) {
        if let Some(sharing) = &self.sharing {
            sharing.add_in_flight(address, -1);
        }
        self.metrics.add(Metric::InFlight, -1);
        self.metrics.add(Metric::Released, 1);
    }
}
