//! The streaming client against a tiny in-test HTTP server that splits its answer across writes.

use std::time::Duration;

use kvroute_bench::client::{Api, ErrorKind, send};
use kvroute_bench::workload::{Message, Request, Role};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the test server answers.
#[derive(Clone)]
enum Answer {
    /// 200 with this SSE body, written in pieces of `piece` bytes.
    Stream { body: String, piece: usize },
    /// This status with an empty body.
    Status(u16),
    /// Nothing for a long time.
    Stall,
}

async fn read_request(sock: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return serde_json::from_slice(&buf[end + 4..end + 4 + len]).ok();
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn serve(answer: Answer) -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (answer, tx) = (answer.clone(), tx.clone());
            tokio::spawn(async move {
                sock.set_nodelay(true).ok();
                while let Some(body) = read_request(&mut sock).await {
                    tx.send(body).ok();
                    match &answer {
                        Answer::Status(code) => {
                            let head = format!("HTTP/1.1 {code} Nope\r\ncontent-length: 0\r\n\r\n");
                            sock.write_all(head.as_bytes()).await.ok();
                        }
                        Answer::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
                        Answer::Stream { body, piece } => {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                        transfer-encoding: chunked\r\n\r\n";
                            sock.write_all(head.as_bytes()).await.ok();
                            for part in body.as_bytes().chunks(*piece) {
                                let mut frame = format!("{:x}\r\n", part.len()).into_bytes();
                                frame.extend_from_slice(part);
                                frame.extend_from_slice(b"\r\n");
                                sock.write_all(&frame).await.ok();
                                sock.flush().await.ok();
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            sock.write_all(b"0\r\n\r\n").await.ok();
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

fn request() -> Request {
    Request {
        id: 0,
        group: 0,
        turn: 0,
        messages: vec![
            Message {
                role: Role::System,
                content: "be brief".into(),
            },
            Message {
                role: Role::User,
                content: "hello".into(),
            },
        ],
        max_tokens: 3,
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("client")
}

const CHAT_STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" two\"}}]}\n\n\
    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" three\"},\"finish_reason\":\"length\"}]}\n\n\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"total_tokens\":13,\
    \"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n\
    data: [DONE]\n\n";

#[tokio::test]
async fn chat_stream_split_across_writes() {
    let (url, mut bodies) = serve(Answer::Stream {
        body: CHAT_STREAM.into(),
        piece: 7,
    })
    .await;
    let c = client(Duration::from_secs(10));
    for _ in 0..2 {
        let o = send(&c, &url, Api::Chat, "m", &request()).await;
        assert_eq!(o.error, None);
        assert!(o.ttft.is_some_and(|t| t <= o.e2e));
        assert_eq!(o.content_chunks, 3);
        assert_eq!(o.output_tokens(), 3);
        let u = o.usage.expect("usage");
        assert_eq!((u.prompt_tokens, u.cached_tokens), (10, Some(8)));
    }
    let body = bodies.recv().await.expect("request body");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["max_tokens"], 3);
    assert_eq!(body["model"], "m");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hello");
}

#[tokio::test]
async fn completions_stream_sends_the_rendered_prompt() {
    let stream = "data: {\"choices\":[{\"text\":\"x\"}]}\n\ndata: [DONE]\n\n";
    let (url, mut bodies) = serve(Answer::Stream {
        body: stream.into(),
        piece: 5,
    })
    .await;
    let o = send(
        &client(Duration::from_secs(10)),
        &url,
        Api::Completions,
        "m",
        &request(),
    )
    .await;
    assert_eq!(o.error, None);
    assert_eq!(o.usage, None);
    assert_eq!(o.output_tokens(), 1);
    let body = bodies.recv().await.expect("request body");
    assert_eq!(body["prompt"], "be brief\n\nhello");
    assert!(body.get("messages").is_none());
}

#[tokio::test]
async fn errors_by_kind() {
    let c = client(Duration::from_millis(300));
    let (url, _b1) = serve(Answer::Status(503)).await;
    assert_eq!(
        send(&c, &url, Api::Chat, "m", &request()).await.error,
        Some(ErrorKind::Http(503))
    );

    let truncated = CHAT_STREAM.replace("data: [DONE]\n\n", "");
    let (url, _b2) = serve(Answer::Stream {
        body: truncated,
        piece: 64,
    })
    .await;
    let o = send(&c, &url, Api::Chat, "m", &request()).await;
    assert_eq!(o.error, Some(ErrorKind::BadStream));

    let (url, _b3) = serve(Answer::Stream {
        body: "data: {not json\n\n".into(),
        piece: 64,
    })
    .await;
    assert_eq!(
        send(&c, &url, Api::Chat, "m", &request()).await.error,
        Some(ErrorKind::BadStream)
    );

    let (url, _b4) = serve(Answer::Stall).await;
    assert_eq!(
        send(&c, &url, Api::Chat, "m", &request()).await.error,
        Some(ErrorKind::Timeout)
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let o = send(&c, &format!("http://{addr}"), Api::Chat, "m", &request()).await;
    assert_eq!(o.error, Some(ErrorKind::Connect));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_arrivals_and_multi_turn_sessions_send_every_request() {
    use std::sync::Arc;

    use kvroute_bench::progress::Progress;
    use kvroute_bench::runner::{Mode, RunOptions, Target, run};
    use kvroute_bench::workload::{ShapeOverrides, Workload, WorkloadKind};

    let (url, mut bodies) = serve(Answer::Stream {
        body: CHAT_STREAM.into(),
        piece: 64,
    })
    .await;
    let kind = WorkloadKind::MultiTurn;
    let shape = kind.shape(&ShapeOverrides {
        groups: Some(2),
        prompts_per_group: Some(3),
        system_tokens: Some(32),
        question_tokens: Some(4),
        output_tokens: Some(3),
        turns: Some(2),
        ..ShapeOverrides::default()
    });
    let workload = Arc::new(Workload::generate(kind, shape, 4, 4));
    let opts = RunOptions {
        api: Api::Chat,
        model: "m".into(),
        concurrency: Some(2),
        rate: Some(500.0),
        seed: 4,
        mode: Mode::Sequential,
        flush: false,
        chunk_sessions: 2,
    };
    let target = Target {
        name: "t".into(),
        url,
        engines: Vec::new(),
    };
    let runs = run(
        &client(Duration::from_secs(10)),
        &[target],
        workload.clone(),
        &opts,
        Arc::new(Progress::new(12, true)),
    )
    .await
    .expect("run");
    let ids: Vec<usize> = runs[0].outcomes.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..12).collect::<Vec<_>>());
    assert!(runs[0].outcomes.iter().all(|(_, o)| o.error.is_none()));
    // Each conversation's second turn (4 messages) went out after its first (2 messages).
    let mut sent: Vec<Vec<Value>> = Vec::new();
    while let Ok(body) = bodies.try_recv() {
        sent.push(body["messages"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(sent.len(), 12);
    assert_eq!(sent.iter().filter(|m| m.len() == 2).count(), 6);
    for (i, messages) in sent.iter().enumerate().filter(|(_, m)| m.len() == 4) {
        assert!(
            sent[..i].iter().any(|earlier| earlier[..] == messages[..2]),
            "turn 2 before turn 1"
        );
    }
}
