//! Subscribers to the workers' KV-cache events (vLLM/SGLang ZMQ publishers), feeding
//! [`Router::apply_kv_events`](kvroute_core::Router::apply_kv_events).
//!
//! One subscriber task per routable worker with an endpoint: the worker's
//! `kv_events_endpoint` label, else the `kv_events.endpoint` template with `{host}` and
//! `{port}` replaced by the worker's address. A reconciler starts and stops subscribers as
//! workers come, go, or turn unhealthy. Per message `[topic, seq, batch]`:
//! - the next sequence number is applied;
//! - a gap is filled from the replay (ROUTER) socket when one is configured, else the worker's
//!   index is cleared (what was missed is unknown) and indexing starts over;
//! - a sequence number going backwards means the publisher restarted: the index is cleared;
//! - the first message after connecting is preceded by a replay of the buffered history when
//!   a replay socket is configured.
//!
//! A subscriber that stops (disconnect, socket failure, worker unhealthy or removed) clears
//! the worker's index, since events may be lost from then on. Socket work runs in its own
//! task, so a failing socket never takes the service down.
//!
//! Hostile publishers: the ZMTP client ([`crate::zmtp`]) refuses any frame or message above
//! `kv_events.max_message_bytes` before allocating it; a decoded batch is applied in chunks
//! of [`APPLY_CHUNK_HASHES`] block hashes, releasing the router lock between chunks so a big
//! batch never stalls routing; an endpoint taken from a pod label must be `tcp://` on the
//! worker's own address (a label cannot point kvroute at another host).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvroute_core::kv_events::{KvEventBatch, decode_batch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::state::Shared;
use crate::zmtp::{self, Connection, Limits, Role};

/// Worker label overriding the endpoint template.
pub const ENDPOINT_LABEL: &str = "kv_events_endpoint";
/// Worker label overriding the replay endpoint template.
pub const REPLAY_LABEL: &str = "kv_events_replay_endpoint";
/// The replay stream's end marker.
const END_SEQ: [u8; 8] = [0xff; 8];
/// Block hashes applied per router-lock hold.
pub const APPLY_CHUNK_HASHES: usize = 4096;
/// A whole replay may carry this many maximal messages.
const REPLAY_MAX_MESSAGES: u64 = 64;
/// Bounds of `kv_events.max_message_bytes`.
const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);

/// `kv_events` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Subscribe to the workers' events.
    pub enabled: bool,
    /// Endpoint template (`{host}`, `{port}`: the worker's), used for workers without a
    /// `kv_events_endpoint` label. Empty: only labelled workers are subscribed.
    pub endpoint: String,
    /// Replay endpoint template; empty: no replay (gaps clear the worker's index).
    pub replay_endpoint: String,
    /// Topic prefix to subscribe to (empty: every topic).
    pub topic: String,
    /// Delay between reconnection attempts, in milliseconds.
    pub reconnect_ms: u64,
    /// How long a replay may take, in milliseconds.
    pub replay_timeout_ms: u64,
    /// Largest message (and frame) a publisher may send, in bytes; a bigger one ends the
    /// connection (the worker's index is cleared and the subscriber reconnects).
    pub max_message_bytes: u64,
}

impl Default for KvEventsConfig {
    fn default() -> KvEventsConfig {
        KvEventsConfig {
            enabled: false,
            endpoint: "tcp://{host}:5557".to_owned(),
            replay_endpoint: String::new(),
            topic: String::new(),
            reconnect_ms: 1_000,
            replay_timeout_ms: 2_000,
            max_message_bytes: 4 << 20,
        }
    }
}

impl KvEventsConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (field, v) in [
            ("kv_events.endpoint", &self.endpoint),
            ("kv_events.replay_endpoint", &self.replay_endpoint),
        ] {
            if !v.is_empty() && !v.starts_with("tcp://") {
                return Err((field.to_owned(), "must be a tcp:// endpoint".to_owned()));
            }
        }
        if self.reconnect_ms == 0 || self.replay_timeout_ms == 0 {
            return Err((
                "kv_events.reconnect_ms".to_owned(),
                "delays must be positive".to_owned(),
            ));
        }
        if !MESSAGE_BYTES_RANGE.contains(&self.max_message_bytes) {
            return Err((
                "kv_events.max_message_bytes".to_owned(),
                format!(
                    "must be in {}..={}",
                    MESSAGE_BYTES_RANGE.start(),
                    MESSAGE_BYTES_RANGE.end()
                ),
            ));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits::with_max_message(self.max_message_bytes)
    }
}

/// Fills `{host}` and `{port}` of `template` from `address` (`ip:port`).
fn expand(template: &str, address: &str) -> Option<String> {
    if template.is_empty() {
        return None;
    }
    let addr: std::net::SocketAddr = address.parse().ok()?;
    let host = match addr.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Some(
        template
            .replace("{host}", &host)
            .replace("{port}", &addr.port().to_string()),
    )
}

/// Whether an endpoint from a worker's label may be used: `tcp://` on the worker's own host,
/// so whoever can label a pod cannot make kvroute connect elsewhere.
fn label_endpoint_allowed(endpoint: &str, address: &str) -> Result<(), String> {
    let (host, _) = zmtp::parse_endpoint(endpoint).map_err(|e| e.to_string())?;
    let worker: std::net::SocketAddr = address
        .parse()
        .map_err(|_| format!("worker address {address} is not ip:port"))?;
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip == worker.ip() => Ok(()),
        Ok(ip) => Err(format!("{ip} is not the worker's address {}", worker.ip())),
        Err(_) => Err(format!("{host} is not an IP address")),
    }
}

/// Where one worker publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    endpoint: String,
    replay: Option<String>,
}

/// Runs the subscribers until stopped.
pub struct Subscribers {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscribers").finish_non_exhaustive()
    }
}

impl Subscribers {
    /// Starts the reconciler.
    pub fn start(shared: Arc<Shared>, config: KvEventsConfig) -> Subscribers {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(reconcile(shared, Arc::new(config), stop_rx));
        Subscribers { stop, task }
    }

    /// Stops every subscriber.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// The workers that should have a subscriber, by address.
fn targets(shared: &Shared, config: &KvEventsConfig) -> HashMap<String, Target> {
    let router = shared.router();
    router
        .workers()
        .iter()
        .filter(|w| w.healthy)
        .filter_map(|w| {
            let address = &w.spec.address;
            let label = |k: &str| {
                let v = w.spec.labels.get(k).filter(|v| !v.is_empty())?;
                match label_endpoint_allowed(v, address) {
                    Ok(()) => Some(v.clone()),
                    Err(why) => {
                        debug!(worker = %address, label = k, endpoint = %v, "kv events label ignored: {why}");
                        None
                    }
                }
            };
            let endpoint = label(ENDPOINT_LABEL).or_else(|| expand(&config.endpoint, address))?;
            let replay = label(REPLAY_LABEL).or_else(|| expand(&config.replay_endpoint, address));
            Some((address.clone(), Target { endpoint, replay }))
        })
        .collect()
}

/// Starts, restarts and stops subscribers to match the worker set.
async fn reconcile(
    shared: Arc<Shared>,
    config: Arc<KvEventsConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, (Target, JoinHandle<()>)> = HashMap::new();
    let tick = Duration::from_millis(config.reconnect_ms.clamp(50, 500));
    loop {
        let wanted = targets(&shared, &config);
        running.retain(|address, (target, task)| {
            let keep = wanted.get(address) == Some(target) && !task.is_finished();
            if !keep {
                task.abort();
                clear(&shared, address);
                if shared.router().workers().by_address(address).is_none() {
                    shared.metrics.forget_kv_events(address);
                }
                debug!(worker = %address, "kv events subscriber stopped");
            }
            keep
        });
        for (address, target) in wanted {
            if running.contains_key(&address) {
                continue;
            }
            info!(worker = %address, endpoint = %target.endpoint, "subscribing to kv events");
            let task = tokio::spawn(subscribe_loop(
                shared.clone(),
                config.clone(),
                address.clone(),
                target.clone(),
            ));
            running.insert(address, (target, task));
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(tick) => {}
        }
    }
    for (address, (_, task)) in running {
        task.abort();
        clear(&shared, &address);
    }
}

/// Forgets what the index knows about `address`.
fn clear(shared: &Shared, address: &str) {
    apply(shared, address, &KvEventBatch::cleared());
}

/// Applies a batch to the worker at `address`, if it is still known, one chunk of
/// [`APPLY_CHUNK_HASHES`] block hashes per router-lock hold.
fn apply(shared: &Shared, address: &str, batch: &KvEventBatch) {
    for chunk in batch.chunks(APPLY_CHUNK_HASHES) {
        let mut router = shared.router();
        let Some(id) = router.workers().by_address(address).map(|w| w.id) else {
            return;
        };
        router.apply_kv_events(id, chunk.as_ref());
    }
}

/// Connects, consumes, and reconnects after failures, clearing the index each time.
async fn subscribe_loop(
    shared: Arc<Shared>,
    config: Arc<KvEventsConfig>,
    address: String,
    target: Target,
) {
    loop {
        let session = tokio::spawn(session(
            shared.clone(),
            config.clone(),
            address.clone(),
            target.clone(),
        ));
        match session.await {
            Ok(Ok(())) => {}
            Ok(Err(e @ zmtp::ZmtpError::TooLarge { .. })) => {
                warn!(worker = %address, "kv events: {e}; reconnecting");
                shared.metrics.record_kv_events(&address, "oversized");
            }
            Ok(Err(e)) => debug!(worker = %address, "kv events: {e}"),
            Err(e) => warn!(worker = %address, "kv events subscriber failed: {e}"),
        }
        clear(&shared, &address);
        tokio::time::sleep(Duration::from_millis(config.reconnect_ms)).await;
    }
}

/// Sequence-number bookkeeping of one subscription.
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: Option<u64>,
}

/// What to do with a message, given its sequence number.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqAction {
    /// In order: apply it.
    Apply,
    /// Already seen: drop it.
    Duplicate,
    /// The first message, or messages `from..seq` are missing: replay them (or clear the
    /// index when replay is impossible), then apply.
    Gap {
        /// First missing sequence number.
        from: u64,
        /// Whether nothing was seen before (history, not loss).
        first: bool,
    },
    /// The publisher restarted (sequence went backwards): clear the index, then apply.
    Restarted,
}

impl SeqTracker {
    /// Classifies `seq` and records it as the latest.
    pub fn observe(&mut self, seq: u64) -> SeqAction {
        let action = match self.last {
            None if seq == 0 => SeqAction::Apply,
            None => SeqAction::Gap {
                from: 0,
                first: true,
            },
            Some(last) if seq == last.wrapping_add(1) => SeqAction::Apply,
            Some(last) if seq == last => SeqAction::Duplicate,
            Some(last) if seq < last => SeqAction::Restarted,
            Some(last) => SeqAction::Gap {
                from: last + 1,
                first: false,
            },
        };
        if action != SeqAction::Duplicate {
            self.last = Some(seq);
        }
        action
    }
}

/// The sequence number and payload of a `[topic, seq, batch]` message.
fn split(mut frames: Vec<Bytes>) -> Option<(u64, Bytes)> {
    if frames.len() < 2 {
        return None;
    }
    let payload = frames.pop()?;
    let seq = frames.pop()?;
    let seq = u64::from_be_bytes(<[u8; 8]>::try_from(seq.as_ref()).ok()?);
    Some((seq, payload))
}

fn decode_and_apply(shared: &Shared, address: &str, payload: &[u8]) {
    match decode_batch(payload) {
        Ok(batch) => {
            apply(shared, address, &batch);
            shared.metrics.record_kv_events(address, "applied");
        }
        Err(e) => {
            warn!(worker = %address, "undecodable kv event batch: {e}");
            shared.metrics.record_kv_events(address, "undecodable");
        }
    }
}

/// One connection: subscribe, then apply messages in sequence order until the socket fails.
async fn session(
    shared: Arc<Shared>,
    config: Arc<KvEventsConfig>,
    address: String,
    target: Target,
) -> Result<(), zmtp::ZmtpError> {
    let timeout = Duration::from_millis(config.replay_timeout_ms);
    let mut sub =
        Connection::connect(&target.endpoint, Role::Sub, config.limits(), timeout).await?;
    sub.subscribe(config.topic.as_bytes()).await?;
    let mut seqs = SeqTracker::default();
    loop {
        let msg = sub.recv().await?;
        let Some((seq, payload)) = split(msg) else {
            warn!(worker = %address, "malformed kv event message");
            continue;
        };
        match seqs.observe(seq) {
            SeqAction::Duplicate => continue,
            SeqAction::Apply => {}
            SeqAction::Restarted => {
                info!(worker = %address, seq, "kv event publisher restarted: index cleared");
                clear(&shared, &address);
                shared.metrics.record_kv_events(&address, "restarted");
            }
            SeqAction::Gap { from, first } => {
                let replayed = match &target.replay {
                    Some(ep) => replay(ep.clone(), from, seq, timeout, config.limits()).await,
                    None => None,
                };
                match replayed {
                    Some(batches) if first || covers(&batches, from, seq) => {
                        shared.metrics.record_kv_events(&address, "replayed");
                        for (_, payload) in batches {
                            decode_and_apply(&shared, &address, &payload);
                        }
                    }
                    _ if first => {}
                    _ => {
                        info!(worker = %address, from, seq, "kv events lost: index cleared");
                        clear(&shared, &address);
                        shared.metrics.record_kv_events(&address, "gap_cleared");
                    }
                }
            }
        }
        decode_and_apply(&shared, &address, &payload);
    }
}

/// Asks the replay socket for batches `from..until` (exclusive). `None` when the replay
/// failed or does not cover `from` (the publisher's buffer moved on).
pub async fn replay(
    endpoint: String,
    from: u64,
    until: u64,
    timeout: Duration,
    limits: Limits,
) -> Option<Vec<(u64, Bytes)>> {
    let task = tokio::spawn(async move {
        let mut dealer = Connection::connect(&endpoint, Role::Dealer, limits, timeout)
            .await
            .ok()?;
        dealer.send(&[&[], &from.to_be_bytes()]).await.ok()?;
        let mut out = Vec::new();
        let mut total = 0u64;
        loop {
            let frames = dealer.recv().await.ok()?;
            total += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            if total > limits.max_message_bytes.saturating_mul(REPLAY_MAX_MESSAGES) {
                return None;
            }
            let (seq, payload) = match frames.as_slice() {
                [_, seq, payload] | [seq, payload] => (seq.clone(), payload.clone()),
                _ => return None,
            };
            if seq.as_ref() == END_SEQ {
                break;
            }
            let seq = u64::from_be_bytes(<[u8; 8]>::try_from(seq.as_ref()).ok()?);
            if seq < until {
                out.push((seq, payload));
            }
        }
        Some(out)
    });
    let abort = task.abort_handle();
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(batches)) => batches,
        Ok(Err(_)) => None,
        Err(_) => {
            abort.abort();
            None
        }
    }
}

/// Whether replayed `batches` cover `from..until` from its start.
fn covers(batches: &[(u64, Bytes)], from: u64, until: u64) -> bool {
    from >= until || batches.first().is_some_and(|(s, _)| *s == from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_classified() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), SeqAction::Apply);
        assert_eq!(t.observe(1), SeqAction::Apply);
        assert_eq!(t.observe(1), SeqAction::Duplicate);
        assert_eq!(
            t.observe(5),
            SeqAction::Gap {
                from: 2,
                first: false
            }
        );
        assert_eq!(t.observe(6), SeqAction::Apply);
        assert_eq!(t.observe(0), SeqAction::Restarted);
        assert_eq!(t.observe(1), SeqAction::Apply);
        let b = |s: u64| (s, Bytes::new());
        assert!(covers(&[b(2), b(3)], 2, 4));
        assert!(!covers(&[b(3)], 2, 4));
        assert!(covers(&[], 4, 4));
        let mut late = SeqTracker::default();
        assert_eq!(
            late.observe(7),
            SeqAction::Gap {
                from: 0,
                first: true
            }
        );
    }

    #[test]
    fn templates_expand_and_validate() {
        assert_eq!(
            expand("tcp://{host}:5557", "10.0.0.1:8000").as_deref(),
            Some("tcp://10.0.0.1:5557")
        );
        assert_eq!(
            expand("tcp://{host}:{port}", "[::1]:8000").as_deref(),
            Some("tcp://[::1]:8000")
        );
        assert_eq!(expand("", "10.0.0.1:8000"), None);
        assert!(KvEventsConfig::default().validate().is_ok());
        let bad = KvEventsConfig {
            endpoint: "ipc:///x".into(),
            ..KvEventsConfig::default()
        };
        assert!(bad.validate().is_err());
        let huge = KvEventsConfig {
            max_message_bytes: 1 << 40,
            ..KvEventsConfig::default()
        };
        assert_eq!(
            huge.validate().unwrap_err().0,
            "kv_events.max_message_bytes"
        );
    }

    #[test]
    fn label_endpoints_must_stay_on_the_worker() {
        assert!(label_endpoint_allowed("tcp://10.0.0.1:5557", "10.0.0.1:8000").is_ok());
        assert!(label_endpoint_allowed("tcp://[::1]:5557", "[::1]:8000").is_ok());
        for (bad, why) in [
            ("tcp://10.0.0.2:5557", "not the worker's address"),
            ("tcp://metadata.internal:80", "not an IP address"),
            ("ipc:///var/run/x", "expected tcp://"),
            ("tcp://*:5557", "expected tcp://"),
        ] {
            let err = label_endpoint_allowed(bad, "10.0.0.1:8000").unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
