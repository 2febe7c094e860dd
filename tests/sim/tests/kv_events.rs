//! The simulator's KV-event publisher over real ZMQ sockets: vLLM's multipart framing, both
//! event layouts, and the replay socket.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kvroute_core::kv_events::{Encoding, KvEvent as WireEvent, decode_batch};
use kvroute_sim::KvEvent;
use kvroute_sim::cache::KvEventSink;
use kvroute_sim::kv_publisher::{self, END_SEQ, PublisherConfig};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

const WAIT: Duration = Duration::from_secs(20);

fn stored(hash: u64) -> KvEvent {
    KvEvent::BlockStored {
        block_hashes: vec![hash],
        parent_block_hash: None,
        token_ids: vec![1, 2],
        block_size: 2,
    }
}

async fn publisher(
    encoding: Encoding,
    replay: bool,
) -> (kv_publisher::ZmqSink, kv_publisher::Bound) {
    kv_publisher::start(PublisherConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        replay_endpoint: replay.then(|| "tcp://127.0.0.1:0".into()),
        topic: "kv@127.0.0.1:8000@m".into(),
        encoding,
    })
    .await
    .unwrap()
}

/// Publishes until the subscriber receives a message (ZMQ drops what a SUB socket has not
/// joined for yet); returns its frames.
async fn first_message(sink: &kv_publisher::ZmqSink, sub: &mut SubSocket) -> Vec<Bytes> {
    let start = Instant::now();
    let mut hash = 100;
    loop {
        assert!(start.elapsed() < WAIT, "no message reached the subscriber");
        sink.publish(stored(hash));
        hash += 1;
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await {
            return msg.into_vec();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_in_vllm_framing_in_both_layouts() {
    for encoding in [Encoding::Array, Encoding::Map] {
        let (sink, bound) = publisher(encoding, false).await;
        let mut sub = SubSocket::new();
        sub.connect(&bound.endpoint).await.unwrap();
        sub.subscribe("kv@").await.unwrap();
        let frames = first_message(&sink, &mut sub).await;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].as_ref(), b"kv@127.0.0.1:8000@m");
        let seq = u64::from_be_bytes(frames[1].as_ref().try_into().unwrap());
        let batch = decode_batch(&frames[2]).unwrap();
        let WireEvent::BlockStored {
            token_ids, medium, ..
        } = &batch.events[0]
        else {
            panic!("expected BlockStored");
        };
        assert_eq!(
            (token_ids.as_slice(), medium.as_deref()),
            (&[1, 2][..], Some("GPU"))
        );
        // The next event comes with the next sequence number.
        sink.publish(KvEvent::AllBlocksCleared);
        let next = loop {
            let frames = tokio::time::timeout(WAIT, sub.recv())
                .await
                .unwrap()
                .unwrap()
                .into_vec();
            let batch = decode_batch(&frames[2]).unwrap();
            if batch.events == vec![WireEvent::AllBlocksCleared] {
                break u64::from_be_bytes(frames[1].as_ref().try_into().unwrap());
            }
        };
        assert!(next > seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_socket_answers_from_a_sequence_number() {
    let (sink, bound) = publisher(Encoding::Array, true).await;
    for hash in 0..5 {
        sink.publish(stored(hash));
        // One batch per event: let the publisher drain the queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut dealer = DealerSocket::new();
    dealer
        .connect(bound.replay_endpoint.as_deref().unwrap())
        .await
        .unwrap();
    let request = vec![Bytes::new(), Bytes::copy_from_slice(&2u64.to_be_bytes())];
    dealer
        .send(ZmqMessage::try_from(request).unwrap())
        .await
        .unwrap();
    let mut seqs = Vec::new();
    loop {
        let frames = tokio::time::timeout(WAIT, dealer.recv())
            .await
            .unwrap()
            .unwrap()
            .into_vec();
        assert_eq!(frames.len(), 3, "[empty, seq, payload]");
        if frames[1].as_ref() == END_SEQ {
            break;
        }
        seqs.push(u64::from_be_bytes(frames[1].as_ref().try_into().unwrap()));
        assert!(decode_batch(&frames[2]).is_ok());
    }
    assert_eq!(seqs, vec![2, 3, 4]);
}
