//! Cross-VM state over proxy-wasm shared data and shared queues.
//!
//! - In-flight counts: one process-wide counter per worker address in shared data, updated with
//!   compare-and-swap, so every VM's policy sees the load all VMs put on a worker.
//! - Decisions: every VM owns a shared queue and lists its id in a registry key; a VM that makes
//!   a prefix-learning decision enqueues the encoded event to every other VM's queue, and each
//!   VM replays what it dequeues (on `on_queue_ready` and before each decision), so all the
//!   per-VM prefix indexes converge to the same content.

use kvroute_core::shared_state::{decode_count, encode_count};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::config::SharingConfig;

/// Attempts of one compare-and-swap update before giving up (contention is brief).
const CAS_ATTEMPTS: usize = 64;

/// This VM's membership in the shared state.
#[derive(Debug)]
pub struct Sharing {
    namespace: String,
    own_queue: u32,
}

impl Sharing {
    /// Registers this VM's queue and lists it in the registry. `None` if the host refuses.
    pub fn join(config: &SharingConfig) -> Option<Sharing> {
        let ns = &config.namespace;
        let seq_key = format!("{ns}/vm_seq");
        let mut n = 0;
        update(&seq_key, |old| {
            n = decode_count(old) + 1;
            encode_count(n).to_vec()
        })?;
        let own_queue = match hostcalls::register_shared_queue(&format!("{ns}/events/{n}")) {
            Ok(id) => id,
            Err(status) => {
                log::warn!("kvroute: cannot register a shared queue: {status:?}");
                return None;
            }
        };
        update(&format!("{ns}/queues"), |old| {
            let mut ids = old.unwrap_or_default().to_vec();
            ids.truncate(ids.len() / 4 * 4);
            ids.extend_from_slice(&own_queue.to_le_bytes());
            ids
        })?;
        Some(Sharing {
            namespace: ns.clone(),
            own_queue,
        })
    }

    fn in_flight_key(&self, address: &str) -> String {
        format!("{}/in_flight/{address}", self.namespace)
    }

    /// Adds `delta` to the process-wide in-flight count of `address` (never below zero).
    pub fn add_in_flight(&self, address: &str, delta: i64) {
        let key = self.in_flight_key(address);
        let done = update(&key, |old| {
            encode_count(decode_count(old).saturating_add_signed(delta)).to_vec()
        });
        if done.is_none() {
            log::warn!("kvroute: in-flight count of {address} not updated (contention)");
        }
    }

    /// The process-wide in-flight count of `address`.
    pub fn in_flight(&self, address: &str) -> u64 {
        match hostcalls::get_shared_data(&self.in_flight_key(address)) {
            Ok((bytes, _)) => decode_count(bytes.as_deref()),
            Err(_) => 0,
        }
    }

    /// The queue ids of every other VM that joined.
    pub fn peers(&self) -> Vec<u32> {
        let key = format!("{}/queues", self.namespace);
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&key) else {
            return Vec::new();
        };
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .filter(|id| *id != self.own_queue)
            .collect()
    }

    /// Sends `event` to every queue in `peers`; returns how many accepted it.
    pub fn publish(&self, peers: &[u32], event: &[u8]) -> usize {
        peers
            .iter()
            .filter(|q| hostcalls::enqueue_shared_queue(**q, Some(event)).is_ok())
            .count()
    }

    /// Hands every event waiting in this VM's queue to `apply`; returns how many there were.
    pub fn drain(&self, mut apply: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Ok(Some(event)) = hostcalls::dequeue_shared_queue(self.own_queue) {
            apply(&event);
            n += 1;
        }
        n
    }
}

/// Replaces the value at `key` with `f(old)` under compare-and-swap, retrying on conflicts.
fn update(key: &str, mut f: impl FnMut(Option<&[u8]>) -> Vec<u8>) -> Option<()> {
    for _ in 0..CAS_ATTEMPTS {
        let (old, cas) = hostcalls::get_shared_data(key).ok()?;
        let new = f(old.as_deref());
        match hostcalls::set_shared_data(key, Some(&new), cas) {
            Ok(()) => return Some(()),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::warn!("kvroute: shared data {key} not written: {status:?}");
                return None;
            }
        }
    }
    None
}
