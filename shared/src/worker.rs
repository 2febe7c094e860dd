//! Workers (engine endpoints) and the set the router chooses from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Stable identity of a worker inside one router. Never reused: a worker removed and added
/// again under the same address gets a new id, so stale tickets cannot touch the newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

/// The inference engine behind a worker; decides metric names and request normalization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM (the default, as in the Gateway API Inference Extension).
    #[default]
    Vllm,
    /// SGLang.
    Sglang,
    /// Any other OpenAI-compatible server (llama.cpp server, ...).
    Other,
}

impl EngineKind {
    /// Parses `vllm`, `sglang` or `other` (case-insensitive).
    pub fn parse(s: &str) -> Option<EngineKind> {
        match s.to_ascii_lowercase().as_str() {
            "vllm" => Some(EngineKind::Vllm),
            "sglang" => Some(EngineKind::Sglang),
            "other" => Some(EngineKind::Other),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
            EngineKind::Other => "other",
        }
    }
}

/// What configuration or discovery says about a worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// `ip:port` the proxy connects to; also the value written into the destination header.
    pub address: String,
    /// Engine kind.
    #[serde(default)]
    pub engine: EngineKind,
    /// Base models served. Empty means "every model".
    #[serde(default)]
    pub models: Vec<String>,
    /// LoRA adapters loaded on the worker; a request naming one as `model` is served here.
    #[serde(default)]
    pub lora_adapters: Vec<String>,
    /// Free-form labels (from config or pod labels).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl WorkerSpec {
    /// A spec for `address` serving every model, engine vLLM.
    pub fn new(address: impl Into<String>) -> WorkerSpec {
        WorkerSpec {
            address: address.into(),
            ..WorkerSpec::default()
        }
    }

    /// Whether this worker serves `model` (as a base model or a LoRA adapter).
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| m == model)
            || self.lora_adapters.iter().any(|m| m == model)
    }
}

/// Largest queue or running count an engine report is believed up to; beyond it a report
/// is clamped (no engine holds millions of requests; a bigger figure is a broken exporter).
pub const MAX_REPORTED_REQUESTS: u32 = 1_000_000;

/// Load reported by the engine itself (scraped from its metrics), as of `observed_at_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests waiting in the engine's queue.
    pub waiting: u32,
    /// Requests running on the engine.
    pub running: u32,
    /// KV-cache use, 0.0..=1.0.
    pub kv_cache_usage: f32,
    /// When the report was taken, on the shell's clock (milliseconds).
    pub observed_at_ms: u64,
}

impl LoadReport {
    /// The report with counts clamped to [`MAX_REPORTED_REQUESTS`] and KV-cache use to
    /// 0..=1 (NaN reads as 0).
    pub fn sanitized(self) -> LoadReport {
        let kv = if self.kv_cache_usage.is_nan() {
            0.0
        } else {
            self.kv_cache_usage.clamp(0.0, 1.0)
        };
        LoadReport {
            waiting: self.waiting.min(MAX_REPORTED_REQUESTS),
            running: self.running.min(MAX_REPORTED_REQUESTS),
            kv_cache_usage: kv,
            observed_at_ms: self.observed_at_ms,
        }
    }
}

/// A worker as the router sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    /// Identity inside this router.
    pub id: WorkerId,
    /// What configuration or discovery says about it.
    pub spec: WorkerSpec,
    /// Passed its health checks (or no checks configured).
    pub healthy: bool,
    /// Being drained: finishes what it has, receives nothing new.
    pub draining: bool,
    /// Requests routed here and not yet completed, counted by this router.
    pub in_flight: u32,
    /// Requests other routers sharing this router's state have in flight here (the wasm
    /// filter's sibling VMs); 0 when nothing is shared.
    pub in_flight_elsewhere: u32,
    /// The engine's own load report, when scraped and fresh.
    pub load: Option<LoadReport>,
}

impl Worker {
    /// May receive new requests.
    pub fn is_routable(&self) -> bool {
        self.healthy && !self.draining
    }

    /// Requests routed here and not yet completed, by this router and the ones sharing its
    /// state.
    pub fn routed_in_flight(&self) -> u32 {
        self.in_flight.saturating_add(self.in_flight_elsewhere)
    }

    /// The load figure policies balance on: the router's in-flight count plus the engine's
    /// waiting queue when known. In-flight already includes what the engine runs for us.
    /// Saturates: an absurd report makes the worker look full, never idle.
    pub fn load(&self) -> u32 {
        self.routed_in_flight()
            .saturating_add(self.load.map_or(0, |l| l.waiting))
    }
}

/// Every worker the router knows, in insertion order.
#[derive(Clone, Debug, Default)]
pub struct WorkerSet {
    workers: Vec<Worker>,
    next_id: u32,
}

impl WorkerSet {
    /// An empty set.
    pub fn new() -> WorkerSet {
        WorkerSet::default()
    }

    /// Adds a worker, or updates the spec of the one already at that address (keeping its id,
    /// health and counters). Returns its id and whether it is new.
    pub fn upsert(&mut self, spec: WorkerSpec) -> (WorkerId, bool) {
        if let Some(w) = self
            .workers
            .iter_mut()
            .find(|w| w.spec.address == spec.address)
        {
            w.spec = spec;
            return (w.id, false);
        }
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        self.workers.push(Worker {
            id,
            spec,
            healthy: true,
            draining: false,
            in_flight: 0,
            in_flight_elsewhere: 0,
            load: None,
        });
        (id, true)
    }

    /// Removes a worker; returns it if it was there.
    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let pos = self.workers.iter().position(|w| w.id == id)?;
        Some(self.workers.remove(pos))
    }

    /// The worker with this id.
    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// The worker with this id, mutably.
    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    /// The worker at `address` (`ip:port`).
    pub fn by_address(&self, address: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.spec.address == address)
    }

    /// All workers, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// No workers at all.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_identity_and_ids_are_never_reused() {
        let mut set = WorkerSet::new();
        let (a, new_a) = set.upsert(WorkerSpec::new("10.0.0.1:8000"));
        assert!(new_a);
        let (a2, new_a2) = set.upsert(WorkerSpec {
            models: vec!["m".into()],
            ..WorkerSpec::new("10.0.0.1:8000")
        });
        assert_eq!(a, a2);
        assert!(!new_a2);
        assert_eq!(set.get(a).unwrap().spec.models, vec!["m".to_string()]);
        set.remove(a).unwrap();
        let (a3, _) = set.upsert(WorkerSpec::new("10.0.0.1:8000"));
        assert_ne!(a, a3);
    }

    #[test]
    fn serves_models_and_adapters() {
        let spec = WorkerSpec {
            models: vec!["base".into()],
            lora_adapters: vec!["sql".into()],
            ..WorkerSpec::new("a:1")
        };
        assert!(spec.serves("base"));
        assert!(spec.serves("sql"));
        assert!(!spec.serves("other"));
        assert!(WorkerSpec::new("b:1").serves("anything"));
    }
}
