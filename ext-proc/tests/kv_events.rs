//! KV-event subscriptions over real ZMQ sockets: sequence gaps, replay and publisher restarts
//! as seen by the router's `precise_prefix` policy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvroute::kv_events::{ENDPOINT_LABEL, KvEventsConfig, REPLAY_LABEL, Subscribers};
use kvroute::state::Shared;
use kvroute_core::kv_events::{
    BlockHasher, Encoding, HasherConfig, KvEvent, KvEventBatch, encode_batch,
};
use kvroute_core::policy::PrecisePrefixConfig;
use kvroute_core::{Gateway, PolicyConfig, Prompt, RouteRequest, Router, RouterConfig, WorkerSpec};
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const WAIT: Duration = Duration::from_secs(20);

fn tokens(seed: u32) -> Vec<u32> {
    (0..48).map(|i| seed * 1000 + i).collect()
}

fn hashes(seed: u32) -> Vec<u64> {
    BlockHasher::new(&HasherConfig::default()).block_hashes(&tokens(seed), None, None, usize::MAX)
}

fn stored(seed: u32, encoding: Encoding) -> Bytes {
    let batch = KvEventBatch {
        ts: 1.0,
        events: vec![KvEvent::BlockStored {
            block_hashes: hashes(seed),
            parent_block_hash: None,
            token_ids: tokens(seed),
            block_size: 16,
            lora_id: None,
            medium: Some("GPU".into()),
        }],
        dp_rank: None,
    };
    Bytes::from(encode_batch(&batch, encoding))
}

/// A router with one healthy worker whose events come from `endpoint` (and `replay`).
fn shared(endpoint: &str, replay: Option<&str>) -> Arc<Shared> {
    let config = RouterConfig {
        // No pending guesses: the test reads exactly what the events said.
        policy: PolicyConfig::PrecisePrefix(PrecisePrefixConfig {
            pending_ttl_ms: 0,
            ..PrecisePrefixConfig::default()
        }),
        ..RouterConfig::default()
    };
    let mut router = Router::new(config, 1);
    let mut labels = BTreeMap::from([(ENDPOINT_LABEL.to_owned(), endpoint.to_owned())]);
    if let Some(r) = replay {
        labels.insert(REPLAY_LABEL.to_owned(), r.to_owned());
    }
    let id = router.upsert_worker(WorkerSpec {
        labels,
        ..WorkerSpec::new("127.0.0.1:1")
    });
    router.set_healthy(id, true);
    Shared::new(router, Gateway::default())
}

fn config() -> KvEventsConfig {
    KvEventsConfig {
        enabled: true,
        endpoint: String::new(),
        reconnect_ms: 100,
        ..KvEventsConfig::default()
    }
}

/// Share of prompt `seed` the router believes the worker holds.
fn matched(shared: &Shared, seed: u32) -> f32 {
    let prompt = Prompt::Tokens(tokens(seed));
    let req = RouteRequest {
        model: "m",
        prompt: &prompt,
        lora: None,
        cache_salt: None,
        session_key: None,
        tokens: None,
    };
    let mut router = shared.router();
    let routed = router.route(&req, None, 0).expect("one healthy worker");
    router.complete(routed.ticket);
    routed.prefix_match.unwrap_or(0.0)
}

async fn send(socket: &mut PubSocket, seq: u64, payload: Bytes) {
    let frames = vec![
        Bytes::from_static(b"kv@127.0.0.1:1@m"),
        Bytes::copy_from_slice(&seq.to_be_bytes()),
        payload,
    ];
    socket
        .send(ZmqMessage::try_from(frames).unwrap())
        .await
        .unwrap();
}

/// Polls until prompt `seed` is (or is not) fully held.
async fn wait_matched(shared: &Shared, seed: u32, want: f32) {
    let start = Instant::now();
    while matched(shared, seed) != want {
        assert!(start.elapsed() < WAIT, "prompt {seed} never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes prompt `seed` with increasing sequence numbers until the subscriber applied it
/// (a SUB socket misses what is sent before it joined). Returns the next sequence number.
async fn join(socket: &mut PubSocket, shared: &Shared, seed: u32, mut seq: u64) -> u64 {
    let start = Instant::now();
    while matched(shared, seed) != 1.0 {
        assert!(start.elapsed() < WAIT, "the subscriber never joined");
        send(socket, seq, stored(seed, Encoding::Array)).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_without_replay_clear_and_restarts_reset_the_index() {
    let mut publisher = PubSocket::new();
    let endpoint = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let shared = shared(&endpoint, None);
    let subs = Subscribers::start(shared.clone(), config());
    let seq = join(&mut publisher, &shared, 1, 0).await;

    // Events seq..seq+4 lost: what the worker holds is unknown, the index starts over.
    send(&mut publisher, seq + 5, stored(2, Encoding::Map)).await;
    wait_matched(&shared, 2, 1.0).await;
    assert_eq!(matched(&shared, 1), 0.0);

    // The sequence starts again at 0: the publisher restarted with an empty cache.
    send(&mut publisher, 0, stored(3, Encoding::Array)).await;
    wait_matched(&shared, 3, 1.0).await;
    assert_eq!(matched(&shared, 2), 0.0);
    subs.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_filled_from_the_replay_socket() {
    let mut publisher = PubSocket::new();
    let endpoint = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let mut replay = RouterSocket::new();
    let replay_endpoint = replay.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    // The replay buffer, filled by the test before a gap.
    let buffer: Arc<Mutex<Vec<(u64, Bytes)>>> = Arc::default();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (buf, reqs) = (buffer.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok(msg) = replay.recv().await {
            let frames = msg.into_vec();
            let [identity, _, start] = frames.as_slice() else {
                continue;
            };
            let start = u64::from_be_bytes(start.as_ref().try_into().unwrap());
            reqs.lock().unwrap().push(start);
            let batches: Vec<(u64, Bytes)> = buf.lock().unwrap().clone();
            for (seq, payload) in batches.into_iter().filter(|(s, _)| *s >= start) {
                let frames = vec![
                    identity.clone(),
                    Bytes::new(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    payload,
                ];
                let _ = replay.send(ZmqMessage::try_from(frames).unwrap()).await;
            }
            let end = vec![
                identity.clone(),
                Bytes::new(),
                Bytes::from_static(&[0xff; 8]),
                Bytes::new(),
            ];
            let _ = replay.send(ZmqMessage::try_from(end).unwrap()).await;
        }
    });
    let shared = shared(&endpoint, Some(&replay_endpoint));
    let subs = Subscribers::start(shared.clone(), config());
    let seq = join(&mut publisher, &shared, 1, 0).await;

    // seq and seq+1 are missed on the PUB socket but kept by the replay socket.
    buffer.lock().unwrap().extend([
        (seq, stored(4, Encoding::Map)),
        (seq + 1, stored(5, Encoding::Array)),
    ]);
    send(&mut publisher, seq + 2, stored(6, Encoding::Array)).await;
    wait_matched(&shared, 6, 1.0).await;
    assert_eq!(matched(&shared, 4), 1.0);
    assert_eq!(matched(&shared, 5), 1.0);
    // Nothing was cleared.
    assert_eq!(matched(&shared, 1), 1.0);
    assert!(requests.lock().unwrap().contains(&seq));
    subs.stop();
}

/// A raw ZMTP publisher: greets as PUB, then writes `script(connection_number)` and waits.
async fn raw_publisher(script: fn(usize) -> Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut greeting = [0u8; 64];
                greeting[0] = 0xff;
                greeting[9] = 0x7f;
                greeting[10] = 3;
                greeting[12..16].copy_from_slice(b"NULL");
                greeting[32] = 1;
                let mut ready = vec![0x04, 0, 5];
                ready.extend_from_slice(b"READY\x0bSocket-Type\0\0\0\x03PUB");
                ready[1] = (ready.len() - 2) as u8;
                let mut theirs = [0u8; 64];
                if s.write_all(&greeting).await.is_err()
                    || s.read_exact(&mut theirs).await.is_err()
                    || s.write_all(&ready).await.is_err()
                {
                    return;
                }
                // The subscription (and READY) arrive before the script is played.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = s.write_all(&script(n)).await;
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink).await, Ok(k) if k > 0) {}
            });
        }
    });
    endpoint
}

/// One ZMTP message of `frames` on the wire.
fn zmtp_message(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let more = u8::from(i + 1 < frames.len());
        out.push(more | 0x02);
        out.extend_from_slice(&(f.len() as u64).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_announcing_a_huge_frame_is_cut_off_and_retried() {
    // The first connection announces an 18 EB frame (zeromq 0.4 reserved it and aborted);
    // later ones publish a real batch.
    let endpoint = raw_publisher(|n| {
        if n == 0 {
            let mut wire = vec![0x03];
            wire.extend_from_slice(&u64::MAX.to_be_bytes());
            wire
        } else {
            zmtp_message(&[
                b"kv@127.0.0.1:1@m",
                &0u64.to_be_bytes(),
                &stored(7, Encoding::Array),
            ])
        }
    })
    .await;
    let shared = shared(&endpoint, None);
    let subs = Subscribers::start(shared.clone(), config());
    wait_matched(&shared, 7, 1.0).await;
    let text = shared.metrics.encode(&shared.router());
    let oversized = text
        .lines()
        .find(|l| l.contains("outcome=\"oversized\""))
        .unwrap_or_else(|| panic!("no oversized count in:\n{text}"));
    assert!(oversized.ends_with(" 1"), "{oversized}");
    // The worker leaves: its series go with it.
    {
        let mut router = shared.router();
        let id = router.workers().by_address("127.0.0.1:1").unwrap().id;
        router.remove_worker(id);
    }
    let start = Instant::now();
    while shared
        .metrics
        .encode(&shared.router())
        .contains("127.0.0.1:1")
    {
        assert!(start.elapsed() < WAIT, "the left worker's series stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subs.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_pointing_away_from_the_worker_is_not_followed() {
    let mut publisher = PubSocket::new();
    // Bound on 127.0.0.2: not the worker's address (127.0.0.1).
    let endpoint = publisher
        .bind("tcp://127.0.0.2:0")
        .await
        .unwrap()
        .to_string();
    let shared = shared(&endpoint, None);
    let subs = Subscribers::start(shared.clone(), config());
    for seq in 0..20 {
        send(&mut publisher, seq, stored(8, Encoding::Array)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        matched(&shared, 8),
        0.0,
        "events from another host were applied"
    );
    subs.stop();
}
