//! Starting and stopping the service: listeners, gRPC and admin servers, health checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use kvroute_core::tokenize::PromptTokenizer;
use kvroute_core::{Gateway, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::discovery::Discovery;
use crate::extproc::ExtProcService;
use crate::health::{LIVENESS_SERVICE, READINESS_SERVICE, Workers};
use crate::kv_events::Subscribers;
use crate::listener;
use crate::state::Shared;

/// gRPC health service name of the ext_proc service.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// gRPC health service name the reference endpoint picker registers for itself.
pub const INFERENCE_EXTENSION_SERVICE: &str = "inference-extension";

/// A running service.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC (ext_proc) address.
    pub grpc_addr: SocketAddr,
    /// Bound plaintext gRPC health address.
    pub health_addr: SocketAddr,
    /// Bound Prometheus metrics address.
    pub metrics_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// The router and metrics.
    pub shared: Arc<Shared>,
    /// The worker registry.
    pub workers: Arc<Workers>,
    discovery: Option<Discovery>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    health: JoinHandle<Result<(), tonic::transport::Error>>,
    kv_events: Option<Subscribers>,
    admin: JoinHandle<std::io::Result<()>>,
    metrics: JoinHandle<std::io::Result<()>>,
    scraper: Option<JoinHandle<()>>,
    grace: Duration,
}

/// Binds every listener, registers the configured workers (probed at once) and starts serving.
/// `config` must be validated.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let tls = config.tls.server_tls()?;
    let grpc_listener = listener::bind(config.grpc_addr, "gRPC").await?;
    let health_listener = listener::bind(config.health_addr, "gRPC health").await?;
    let metrics_listener = listener::bind(config.metrics_addr, "metrics").await?;
    let admin_listener = listener::bind(config.admin_addr, "admin").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let health_addr = health_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    match &tls {
        Some(t) => tracing::info!(
            certificate = if t.self_signed { "self-signed, generated at start" } else { "configured" },
            sha256 = %t.fingerprint,
            plaintext_too = t.plaintext_too,
            "gRPC port serves TLS"
        ),
        None => tracing::info!("gRPC port serves plaintext only (tls.mode: off)"),
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let shared = Shared::new(
        Router::new(config.router.clone(), seed),
        Gateway::new(config.gateway.clone()).with_limits(config.limits.clone()),
    );

    if let Some(t) = &config.tokenizer {
        let tokenizer = PromptTokenizer::load(&t.path)
            .with_context(|| format!("loading the tokenizer {}", t.path.display()))?;
        shared.set_tokenizer(Arc::new(tokenizer));
    }

    let (reporter, health_service) = tonic_health::server::health_reporter();
    for service in [
        LIVENESS_SERVICE,
        EXT_PROC_SERVICE,
        INFERENCE_EXTENSION_SERVICE,
    ] {
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
        .await;

    let workers = Workers::new(shared.clone(), config.health.clone(), reporter)?;
    for w in &config.workers {
        workers
            .upsert_initial(w)
            .map_err(|e| anyhow::anyhow!("worker {}: {e}", w.address))?;
    }
    // One probe round before the gRPC server accepts: no 503 for routable requests.
    workers.first_round().await;

    let discovery = match &config.discovery {
        Some(d) => {
            let statics = config
                .workers
                .iter()
                .filter_map(|w| w.socket_addr().ok().map(|a| a.to_string()))
                .collect();
            Some(Discovery::start(d, workers.clone(), statics).await?)
        }
        None => None,
    };
    let scraper = crate::scrape::spawn(shared.clone(), config.scrape.clone())?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let kv_events = config
        .kv_events
        .enabled
        .then(|| Subscribers::start(shared.clone(), config.kv_events.clone()));

    // A buffered body reaches kvroute as one message: tonic's 4 MiB default would fail the
    // stream (and Envoy fail open, unrouted) for prompts under `gateway.max_body_bytes`.
    let max_message = config
        .gateway
        .max_body_bytes
        .saturating_add(MESSAGE_HEADROOM_BYTES);
    let ext_proc = ExtProcServer::new(ExtProcService::new(shared.clone()))
        .max_decoding_message_size(max_message);
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service.clone())
            .add_service(ext_proc)
            .serve_with_incoming_shutdown(
                listener::Incoming::start(grpc_listener, tls),
                stopped(shutdown_rx.clone()),
            ),
    );
    let health = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(health_listener).with_nodelay(Some(true)),
                stopped(shutdown_rx.clone()),
            ),
    );

    let app = admin::router(AdminState {
        shared: shared.clone(),
        workers: workers.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
    });
    let admin = serve_http(admin_listener, app, stopped(shutdown_rx.clone()));
    let metrics = serve_http(
        metrics_listener,
        admin::metrics_router(shared.clone()),
        stopped(shutdown_rx),
    );

    Ok(Running {
        grpc_addr,
        health_addr,
        metrics_addr,
        admin_addr,
        shared,
        workers,
        discovery,
        shutdown,
        grpc,
        health,
        kv_events,
        admin,
        metrics,
        scraper,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

/// Resolves once shutdown was asked for.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves an HTTP router on `listener` (TCP_NODELAY) until `stop`.
fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    })
}

type ExtProcServer = ExternalProcessorServer<ExtProcService>;

/// Room in an ext_proc message beyond the body: headers, metadata, protobuf framing.
const MESSAGE_HEADROOM_BYTES: usize = 1 << 20;

impl Running {
    /// The line printed once both listeners are bound.
    pub fn ready_line(&self) -> String {
        format!(
            "kvroute ready grpc={} health={} metrics={} admin={}",
            self.grpc_addr, self.health_addr, self.metrics_addr, self.admin_addr
        )
    }

    /// Stops accepting, lets in-flight streams finish within the grace period, then stops.
    /// Returns whether everything finished within the grace period.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.shutdown.send(true);
        if let Some(d) = &self.discovery {
            d.stop();
        }
        self.workers.stop();
        if let Some(s) = self.kv_events.take() {
            s.stop();
        }
        let Running {
            mut grpc,
            mut health,
            mut admin,
            mut metrics,
            scraper,
            grace,
            ..
        } = self;
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        let all = async {
            let _ = (&mut grpc).await;
            let _ = (&mut health).await;
            let _ = (&mut admin).await;
            let _ = (&mut metrics).await;
        };
        let finished = tokio::time::timeout(grace, all).await.is_ok();
        if !finished {
            grpc.abort();
            health.abort();
            admin.abort();
            metrics.abort();
        }
        finished
    }

    /// Waits until either server stops on its own (an error), reporting it.
    pub async fn wait_failure(&mut self) -> anyhow::Result<()> {
        fn report<E: std::fmt::Display>(
            what: &str,
            r: Result<Result<(), E>, tokio::task::JoinError>,
        ) -> anyhow::Result<()> {
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("{what} server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("{what} server task failed: {e}")),
            }
        }
        tokio::select! {
            r = &mut self.grpc => report("gRPC", r),
            r = &mut self.health => report("gRPC health", r),
            r = &mut self.admin => report("admin", r),
            r = &mut self.metrics => report("metrics", r),
        }
    }
}
