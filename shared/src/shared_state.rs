//! State shared between several routers that serve the same fleet, as bytes.
//!
//! The proxy-wasm filter runs one [`Router`] per Envoy worker thread (one Wasm VM each). To keep
//! their views from splitting into unrelated copies, each router publishes its decisions as
//! [`DecisionEvent`]s and the others replay them ([`replay`]), so prefix-learning policies
//! converge to the same content everywhere; and in-flight counts live in process-wide counters
//! encoded with [`encode_count`]/[`decode_count`]. A router can also follow another one's
//! fleet view ([`FleetWorker`], [`sync_fleet`]: the `kvroute` admin API's `GET /workers`). The
//! transport (proxy-wasm shared queues, shared data, HTTP callouts) belongs to the shell; this
//! module only defines the bytes and their meaning.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;

use crate::request::{Prompt, RouteRequest};
use crate::router::Router;
use crate::worker::{EngineKind, WorkerSpec};

/// Format version written as the first byte of every encoded event.
const EVENT_VERSION: u8 = 1;
const KIND_TEXT: u8 = 0;
const KIND_TOKENS: u8 = 1;

/// Whether decisions of the policy named `policy` teach it something worth replaying on other
/// routers. Stateless or purely load-driven policies need no replay.
pub fn learns_from_decisions(policy: &str) -> bool {
    policy == "cache_aware"
}

/// One routing decision as another router must learn it: the cache namespace, the prompt
/// (possibly cut to a bounded prefix) and the worker it went to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionEvent<'a> {
    /// `ip:port` of the chosen worker.
    pub address: Cow<'a, str>,
    /// Requested model.
    pub model: Cow<'a, str>,
    /// LoRA adapter, part of the cache namespace.
    pub lora: Option<Cow<'a, str>>,
    /// Cache salt, part of the cache namespace.
    pub cache_salt: Option<Cow<'a, str>>,
    /// The prompt, cut to at most the byte budget given to [`DecisionEvent::from_request`].
    pub prompt: Prompt<'a>,
}

impl<'a> DecisionEvent<'a> {
    /// The event for `req` routed to `address`, keeping at most `max_prompt_bytes` of the
    /// prompt (cut on a char boundary for text, on a whole id for tokens).
    pub fn from_request(
        req: &RouteRequest<'a>,
        address: &'a str,
        max_prompt_bytes: usize,
    ) -> DecisionEvent<'a> {
        let prompt = match req.prompt {
            Prompt::Text(text) => {
                let mut end = text.len().min(max_prompt_bytes);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                Prompt::Text(Cow::Borrowed(&text[..end]))
            }
            Prompt::Tokens(ids) => {
                let keep = ids.len().min(max_prompt_bytes / 4);
                Prompt::Tokens(ids[..keep].to_vec())
            }
        };
        DecisionEvent {
            address: Cow::Borrowed(address),
            model: Cow::Borrowed(req.model),
            lora: req.lora.map(Cow::Borrowed),
            cache_salt: req.cache_salt.map(Cow::Borrowed),
            prompt,
        }
    }

    /// Compact binary encoding: a version byte, then length-prefixed fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.address.len() + self.prompt.len() * 4);
        out.push(EVENT_VERSION);
        put_str(&mut out, &self.address);
        put_str(&mut out, &self.model);
        put_opt(&mut out, self.lora.as_deref());
        put_opt(&mut out, self.cache_salt.as_deref());
        match &self.prompt {
            Prompt::Text(text) => {
                out.push(KIND_TEXT);
                put_str(&mut out, text);
            }
            Prompt::Tokens(ids) => {
                out.push(KIND_TOKENS);
                put_len(&mut out, ids.len());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes [`DecisionEvent::encode`]'s output, borrowing from `bytes`. `None` for anything
    /// malformed (wrong version, truncated, invalid UTF-8, trailing bytes).
    pub fn decode(bytes: &'a [u8]) -> Option<DecisionEvent<'a>> {
        let mut r = Reader { bytes, pos: 0 };
        if r.byte()? != EVENT_VERSION {
            return None;
        }
        let address = Cow::Borrowed(r.str()?);
        let model = Cow::Borrowed(r.str()?);
        let lora = r.opt()?.map(Cow::Borrowed);
        let cache_salt = r.opt()?.map(Cow::Borrowed);
        let prompt = match r.byte()? {
            KIND_TEXT => Prompt::Text(Cow::Borrowed(r.str()?)),
            KIND_TOKENS => {
                let n = r.len()?;
                let raw = r.take(n.checked_mul(4)?)?;
                Prompt::Tokens(
                    raw.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            _ => return None,
        };
        (r.pos == bytes.len()).then_some(DecisionEvent {
            address,
            model,
            lora,
            cache_salt,
            prompt,
        })
    }

    /// The request view policies route on (no session key: affinity policies do not learn).
    pub fn route_request(&self) -> RouteRequest<'_> {
        RouteRequest {
            model: &self.model,
            prompt: &self.prompt,
            lora: self.lora.as_deref(),
            cache_salt: self.cache_salt.as_deref(),
            session_key: None,
            tokens: None,
        }
    }
}

/// Teaches `router` a decision another router made: routes the event's request within a
/// subset holding only the event's worker (so the policy records the prompt for that worker)
/// and releases the in-flight count at once. Returns `false` when this router cannot route
/// there (unknown or unhealthy worker, model not served): nothing is learnt then.
pub fn replay(router: &mut Router, event: &DecisionEvent<'_>, now_ms: u64) -> bool {
    let subset = [event.address.as_ref()];
    match router.route(&event.route_request(), Some(&subset), now_ms) {
        Ok(routed) => {
            router.complete(routed.ticket);
            true
        }
        Err(_) => false,
    }
}

/// One worker as another router reports it (an entry of `GET /workers`; unknown fields such
/// as `in_flight` are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FleetWorker {
    /// `ip:port`.
    pub address: String,
    /// Engine kind.
    #[serde(default)]
    pub engine: EngineKind,
    /// Models served (empty: every model).
    #[serde(default)]
    pub models: Vec<String>,
    /// LoRA adapters.
    #[serde(default)]
    pub lora_adapters: Vec<String>,
    /// Passes its health checks.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Receives no new requests.
    #[serde(default)]
    pub draining: bool,
}

fn yes() -> bool {
    true
}

/// What [`sync_fleet`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetChange {
    /// Workers that were not known before.
    pub added: usize,
    /// Workers no longer listed, removed (and purged from every policy).
    pub removed: usize,
}

/// Makes `router`'s worker set follow `fleet`: listed workers are added or updated (spec,
/// health, draining; labels are kept), unlisted ones removed. In-flight counts survive.
pub fn sync_fleet(router: &mut Router, fleet: &[FleetWorker]) -> FleetChange {
    let mut change = FleetChange::default();
    let listed: HashSet<&str> = fleet.iter().map(|w| w.address.as_str()).collect();
    let gone: Vec<_> = router
        .workers()
        .iter()
        .filter(|w| !listed.contains(w.spec.address.as_str()))
        .map(|w| w.id)
        .collect();
    for id in gone {
        if router.remove_worker(id).is_some() {
            change.removed += 1;
        }
    }
    for entry in fleet {
        let known = router.workers().by_address(&entry.address);
        let labels = known.map(|w| w.spec.labels.clone()).unwrap_or_default();
        if known.is_none() {
            change.added += 1;
        }
        let id = router.upsert_worker(WorkerSpec {
            address: entry.address.clone(),
            engine: entry.engine,
            models: entry.models.clone(),
            lora_adapters: entry.lora_adapters.clone(),
            labels,
        });
        router.set_healthy(id, entry.healthy);
        router.set_draining(id, entry.draining);
    }
    change
}

/// Encodes a process-wide counter value.
pub fn encode_count(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decodes a counter; missing or malformed bytes read as zero.
pub fn decode_count(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(u32::MAX as usize);
    put_len(out, len);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn len(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn opt(&mut self) -> Option<Option<&'a str>> {
        match self.byte()? {
            0 => Some(None),
            1 => self.str().map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use crate::router::RouterConfig;
    use crate::worker::WorkerSpec;

    fn request<'a>(prompt: &'a Prompt<'a>) -> RouteRequest<'a> {
        RouteRequest {
            model: "m",
            prompt,
            lora: Some("sql"),
            cache_salt: None,
            session_key: Some("s"),
            tokens: None,
        }
    }

    #[test]
    fn text_event_round_trips_and_cuts_on_char_boundary() {
        let prompt = Prompt::Text(Cow::Borrowed("héllo wörld"));
        let ev = DecisionEvent::from_request(&request(&prompt), "10.0.0.1:80", 2);
        assert_eq!(ev.prompt, Prompt::Text(Cow::Borrowed("h")));
        let full = DecisionEvent::from_request(&request(&prompt), "10.0.0.1:80", 1 << 20);
        let bytes = full.encode();
        let back = DecisionEvent::decode(&bytes).unwrap();
        assert_eq!(back, full);
        assert_eq!(back.route_request().lora, Some("sql"));
        assert_eq!(back.route_request().session_key, None);
    }

    #[test]
    fn token_event_round_trips_whole_ids() {
        let prompt = Prompt::Tokens(vec![1, 2, 3, 70_000]);
        let ev = DecisionEvent::from_request(&request(&prompt), "a:1", 14);
        assert_eq!(ev.prompt, Prompt::Tokens(vec![1, 2, 3]));
        let bytes = ev.encode();
        assert_eq!(DecisionEvent::decode(&bytes).unwrap(), ev);
    }

    #[test]
    fn malformed_events_are_rejected_without_panicking() {
        let prompt = Prompt::Text(Cow::Borrowed("abc"));
        let bytes = DecisionEvent::from_request(&request(&prompt), "a:1", 100).encode();
        for cut in 0..bytes.len() {
            assert!(DecisionEvent::decode(&bytes[..cut]).is_none(), "cut {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(DecisionEvent::decode(&extra).is_none());
        let mut wrong_version = bytes;
        wrong_version[0] = 9;
        assert!(DecisionEvent::decode(&wrong_version).is_none());
        assert!(DecisionEvent::decode(&[1, 255, 255, 255, 255]).is_none());
    }

    #[test]
    fn replay_counts_nothing_and_only_reaches_known_workers() {
        let mut router = Router::new(
            RouterConfig {
                policy: PolicyConfig::from_name("cache_aware").unwrap(),
                ..RouterConfig::default()
            },
            3,
        );
        router.upsert_worker(WorkerSpec::new("10.0.0.1:80"));
        router.upsert_worker(WorkerSpec::new("10.0.0.2:80"));
        let prompt = Prompt::Text(Cow::Borrowed("shared system prompt"));
        let ev = DecisionEvent::from_request(&request(&prompt), "10.0.0.2:80", 1024);
        assert!(replay(&mut router, &ev, 0));
        assert_eq!(router.outstanding(), 0);
        assert!(router.workers().iter().all(|w| w.in_flight == 0));
        let stranger = DecisionEvent::from_request(&request(&prompt), "10.9.9.9:1", 1024);
        assert!(!replay(&mut router, &stranger, 0));
    }

    #[test]
    fn fleet_sync_adds_updates_and_removes() {
        let mut router = Router::new(RouterConfig::default(), 1);
        router.upsert_worker(WorkerSpec::new("10.0.0.1:80"));
        router.upsert_worker(WorkerSpec::new("10.0.0.2:80"));
        let fleet: Vec<FleetWorker> = serde_json::from_str(
            r#"[{"address":"10.0.0.2:80","engine":"sglang","models":["m"],"healthy":true,
                 "draining":true,"in_flight":3},
                {"address":"10.0.0.3:80","healthy":false}]"#,
        )
        .unwrap();
        let change = sync_fleet(&mut router, &fleet);
        assert_eq!(
            change,
            FleetChange {
                added: 1,
                removed: 1
            }
        );
        assert!(router.workers().by_address("10.0.0.1:80").is_none());
        let two = router.workers().by_address("10.0.0.2:80").unwrap();
        assert!(two.draining && two.healthy);
        assert_eq!(two.spec.engine, EngineKind::Sglang);
        assert!(!router.workers().by_address("10.0.0.3:80").unwrap().healthy);
        assert_eq!(sync_fleet(&mut router, &fleet), FleetChange::default());
    }

    #[test]
    fn counters_decode_leniently() {
        assert_eq!(decode_count(Some(&encode_count(42))), 42);
        assert_eq!(decode_count(None), 0);
        assert_eq!(decode_count(Some(b"xyz")), 0);
        assert!(learns_from_decisions("cache_aware"));
        assert!(!learns_from_decisions("round_robin"));
    }
}
