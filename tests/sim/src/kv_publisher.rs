//! KV events over ZMQ, as vLLM publishes them (`--kv-events-config` with the `zmq`
//! publisher): a PUB socket sending multipart `[topic, seq (u64 big-endian), msgpack batch]`,
//! and an optional ROUTER replay socket that answers `[identity, "", start_seq]` with every
//! buffered batch from `start_seq` on (`[identity, "", seq, batch]`), then an end marker
//! (`seq` = all ones, empty payload).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use kvroute_core::kv_events::{self, Encoding, KvEvent as WireEvent, KvEventBatch};
use tokio::sync::mpsc;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::cache::{KvEvent, KvEventSink};
use crate::engine::unix_now;

/// Batches kept for replay.
pub const REPLAY_BUFFER: usize = 10_000;
/// The replay stream's end marker.
pub const END_SEQ: [u8; 8] = [0xff; 8];

/// Where and how events are published.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// PUB endpoint to bind (`tcp://127.0.0.1:5557`; port 0 picks one).
    pub endpoint: String,
    /// Optional ROUTER replay endpoint to bind.
    pub replay_endpoint: Option<String>,
    /// First frame of every message.
    pub topic: String,
    /// Event layout.
    pub encoding: Encoding,
}

/// The sink side: the cache pushes events here, a task publishes them.
pub struct ZmqSink {
    tx: Mutex<Option<mpsc::UnboundedSender<KvEvent>>>,
}

impl KvEventSink for ZmqSink {
    fn publish(&self, event: KvEvent) {
        if let Ok(tx) = self.tx.lock()
            && let Some(tx) = tx.as_ref()
        {
            let _ = tx.send(event);
        }
    }
}

/// The bound endpoints (ports resolved).
#[derive(Debug, Clone)]
pub struct Bound {
    /// PUB endpoint.
    pub endpoint: String,
    /// ROUTER replay endpoint, if any.
    pub replay_endpoint: Option<String>,
}

fn to_wire(event: KvEvent) -> WireEvent {
    match event {
        KvEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
        } => WireEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_id: None,
            medium: Some("GPU".to_owned()),
        },
        KvEvent::BlockRemoved { block_hashes } => WireEvent::BlockRemoved {
            block_hashes,
            medium: Some("GPU".to_owned()),
        },
        KvEvent::AllBlocksCleared => WireEvent::AllBlocksCleared,
    }
}

/// Binds the sockets and starts publishing in the current tokio runtime. Returns the sink to
/// give the cache and the bound endpoints.
pub async fn start(config: PublisherConfig) -> std::io::Result<(ZmqSink, Bound)> {
    let io = |e: zeromq::ZmqError| std::io::Error::other(e.to_string());
    let mut publisher = PubSocket::new();
    let endpoint = publisher.bind(&config.endpoint).await.map_err(io)?;
    let mut replay = None;
    let mut replay_endpoint = None;
    if let Some(ep) = &config.replay_endpoint {
        let mut router = RouterSocket::new();
        replay_endpoint = Some(router.bind(ep).await.map_err(io)?.to_string());
        replay = Some(router);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let buffer = std::sync::Arc::new(Mutex::new(VecDeque::<(u64, Bytes)>::new()));
    tokio::spawn(publish_loop(
        publisher,
        rx,
        config.topic.clone(),
        config.encoding,
        buffer.clone(),
    ));
    if let Some(router) = replay {
        tokio::spawn(replay_loop(router, buffer));
    }
    Ok((
        ZmqSink {
            tx: Mutex::new(Some(tx)),
        },
        Bound {
            endpoint: endpoint.to_string(),
            replay_endpoint,
        },
    ))
}

async fn publish_loop(
    mut socket: PubSocket,
    mut rx: mpsc::UnboundedReceiver<KvEvent>,
    topic: String,
    encoding: Encoding,
    buffer: std::sync::Arc<Mutex<VecDeque<(u64, Bytes)>>>,
) {
    let mut seq: u64 = 0;
    while let Some(first) = rx.recv().await {
        // Everything already queued goes into one batch, as the engine batches per step.
        let mut events = vec![to_wire(first)];
        while let Ok(more) = rx.try_recv() {
            events.push(to_wire(more));
        }
        let batch = KvEventBatch {
            ts: unix_now() as f64,
            events,
            dp_rank: None,
        };
        let payload = Bytes::from(kv_events::encode_batch(&batch, encoding));
        if let Ok(mut b) = buffer.lock() {
            b.push_back((seq, payload.clone()));
            while b.len() > REPLAY_BUFFER {
                b.pop_front();
            }
        }
        let frames = vec![
            Bytes::from(topic.clone().into_bytes()),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload,
        ];
        if let Ok(msg) = ZmqMessage::try_from(frames)
            && let Err(e) = socket.send(msg).await
        {
            tracing::debug!("kv event publish failed: {e}");
        }
        seq += 1;
    }
}

async fn replay_loop(
    mut socket: RouterSocket,
    buffer: std::sync::Arc<Mutex<VecDeque<(u64, Bytes)>>>,
) {
    while let Ok(msg) = socket.recv().await {
        let frames = msg.into_vec();
        let [identity, _, start] = frames.as_slice() else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
            continue;
        };
        let batches: Vec<(u64, Bytes)> = buffer
            .lock()
            .map(|b| b.iter().filter(|(s, _)| *s >= start).cloned().collect())
            .unwrap_or_default();
        let replies = batches
            .into_iter()
            .map(|(s, payload)| (Bytes::copy_from_slice(&s.to_be_bytes()), payload))
            .chain(std::iter::once((
                Bytes::from_static(&END_SEQ),
                Bytes::new(),
            )));
        for (seq, payload) in replies {
            let frames = vec![identity.clone(), Bytes::new(), seq, payload];
            let Ok(reply) = ZmqMessage::try_from(frames) else {
                break;
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    }
}
