//! Test harness: an in-process kvroute, fake workers and an ext_proc client.

#![allow(dead_code)]

pub mod certs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use kvroute::config::{Config, HealthConfig, WorkerConfig};
use kvroute::server::Running;
use tokio::sync::mpsc;
use tonic::Streaming;

/// A fake engine answering `/health` with a settable status and `/v1/models` with `models`.
pub struct FakeWorker {
    pub addr: SocketAddr,
    pub health_status: Arc<AtomicU16>,
}

impl FakeWorker {
    pub async fn start(models: &[&str]) -> FakeWorker {
        let status = Arc::new(AtomicU16::new(200));
        let s = status.clone();
        let data: Vec<serde_json::Value> = models
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model"}))
            .collect();
        let listing = serde_json::json!({"object": "list", "data": data});
        let app = axum::Router::new()
            .route(
                "/health",
                axum::routing::get(move || {
                    let s = s.clone();
                    async move {
                        axum::http::StatusCode::from_u16(s.load(Ordering::Relaxed))
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }),
            )
            .route(
                "/v1/models",
                axum::routing::get(move || {
                    let l = listing.clone();
                    async move { axum::Json(l) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeWorker {
            addr,
            health_status: status,
        }
    }

    pub fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::Relaxed);
    }
}

/// A config on free ports with fast health checks and these workers.
pub fn config(workers: &[&FakeWorker]) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        health_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        health: HealthConfig {
            interval_ms: 100,
            timeout_ms: 500,
            ..HealthConfig::default()
        },
        workers: workers
            .iter()
            .map(|w| WorkerConfig::new(w.addr.to_string()))
            .collect(),
        shutdown_grace_ms: 2000,
        ..Config::default()
    }
}

/// Starts kvroute and waits until `healthy` workers are healthy.
pub async fn start(config: Config, healthy: usize) -> Running {
    config.validate().unwrap();
    let running = kvroute::server::start(config).await.unwrap();
    wait_until(|| async {
        workers(&running)
            .await
            .iter()
            .filter(|w| w["healthy"] == true)
            .count()
            >= healthy
    })
    .await;
    running
}

/// Polls `cond` every 20 ms for up to 10 s.
pub async fn wait_until<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 10 s");
}

pub fn admin_url(running: &Running, path: &str) -> String {
    format!("http://{}{}", running.admin_addr, path)
}

/// `GET /workers` as JSON.
pub async fn workers(running: &Running) -> Vec<serde_json::Value> {
    reqwest::get(admin_url(running, "/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Total in-flight count from `GET /workers`.
pub async fn in_flight(running: &Running) -> u64 {
    workers(running)
        .await
        .iter()
        .map(|w| w["in_flight"].as_u64().unwrap())
        .sum()
}

/// One ext_proc stream, driven message by message.
pub struct Session {
    pub tx: mpsc::Sender<ProcessingRequest>,
    pub rx: Streaming<ProcessingResponse>,
}

impl Session {
    pub async fn open(running: &Running) -> Session {
        let mut client = ExternalProcessorClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel::<ProcessingRequest>(64);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let rx = client.process(outbound).await.unwrap().into_inner();
        Session { tx, rx }
    }

    pub async fn send(&self, msg: ProcessingRequest) {
        self.tx.send(msg).await.unwrap();
    }

    /// The next response, failing after 5 s.
    pub async fn recv(&mut self) -> ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("no response within 5 s")
            .expect("stream error")
            .expect("stream closed")
    }

    /// Sends a buffered POST to `path` (headers, then `body` in one message) the way Envoy
    /// does, and returns kvroute's answer to the body.
    pub async fn route_buffered(&mut self, path: &str, body: &[u8]) -> ProcessingResponse {
        self.send(request_headers(
            "POST",
            path,
            &[],
            false,
            BodySendMode::Buffered,
            None,
        ))
        .await;
        let _ = self.recv().await;
        self.send(request_body(body, true)).await;
        self.recv().await
    }

    /// `None` if nothing arrives within `ms`.
    pub async fn try_recv(&mut self, ms: u64) -> Option<ProcessingResponse> {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.message())
            .await
            .ok()
            .and_then(|r| r.ok().flatten())
    }
}

pub fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..HeaderValue::default()
    }
}

/// Request headers for `method path` with extra headers, in the given body mode.
pub fn request_headers(
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    end_of_stream: bool,
    mode: BodySendMode,
    metadata: Option<Metadata>,
) -> ProcessingRequest {
    let mut headers = vec![
        header(":method", method),
        header(":path", path),
        header("x-request-id", "test-request"),
    ];
    headers.extend(extra.iter().map(|(k, v)| header(k, v)));
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode as i32,
            response_body_mode: BodySendMode::None as i32,
            ..ProtocolConfiguration::default()
        }),
        metadata_context: metadata,
        request: Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

pub fn request_body(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::RequestBody(HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

pub fn response_headers(end_of_stream: bool, metadata: Option<Metadata>) -> ProcessingRequest {
    ProcessingRequest {
        metadata_context: metadata,
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![header(":status", "200")],
            }),
            end_of_stream,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

pub fn response_body(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseBody(HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

pub const COMPLETION: &[u8] = br#"{"model":"m","prompt":"hello world, this is a prompt"}"#;
