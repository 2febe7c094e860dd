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
use crate::state::Shared;

/// gRPC health service name of the ext_proc service.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// A running service.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// The router and metrics.
    pub shared: Arc<Shared>,
    /// The worker registry.
    pub workers: Arc<Workers>,
    discovery: Option<Discovery>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    kv_events: Option<Subscribers>,
    admin: JoinHandle<std::io::Result<()>>,
    scraper: Option<JoinHandle<()>>,
    grace: Duration,
}

/// Binds both listeners, registers the configured workers (probed at once) and starts serving.
/// `config` must be validated.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsConfig::server_config)
        .transpose()?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

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
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(EXT_PROC_SERVICE, ServingStatus::Serving)
        .await;
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

    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    // A buffered body reaches kvroute as one message: tonic's 4 MiB default would fail the
    // stream (and Envoy fail open, unrouted) for prompts under `gateway.max_body_bytes`.
    let max_message = config
        .gateway
        .max_body_bytes
        .saturating_add(MESSAGE_HEADROOM_BYTES);
    let ext_proc = ExtProcServer::new(ExtProcService::new(shared.clone()))
        .max_decoding_message_size(max_message);
    let mut grpc_shutdown = shutdown_rx.clone();
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("configuring TLS on the gRPC port")?;
    }
    let grpc = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(ext_proc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.wait_for(|stop| *stop).await;
            }),
    );

    let app = admin::router(AdminState {
        shared: shared.clone(),
        workers: workers.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
    });
    let admin_listener = admin_listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut admin_shutdown = shutdown_rx;
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, app)
            .with_graceful_shutdown(async move {
                let _ = admin_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });

    Ok(Running {
        grpc_addr,
        admin_addr,
        shared,
        workers,
        discovery,
        shutdown,
        grpc,
        kv_events,
        admin,
        scraper,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

type ExtProcServer = ExternalProcessorServer<ExtProcService>;

/// Room in an ext_proc message beyond the body: headers, metadata, protobuf framing.
const MESSAGE_HEADROOM_BYTES: usize = 1 << 20;

impl Running {
    /// The line printed once both listeners are bound.
    pub fn ready_line(&self) -> String {
        format!(
            "kvroute ready grpc={} admin={}",
            self.grpc_addr, self.admin_addr
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
            mut admin,
            scraper,
            grace,
            ..
        } = self;
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        let both = async {
            let _ = (&mut grpc).await;
            let _ = (&mut admin).await;
        };
        let finished = tokio::time::timeout(grace, both).await.is_ok();
        if !finished {
            grpc.abort();
            admin.abort();
        }
        finished
    }

    /// Waits until either server stops on its own (an error), reporting it.
    pub async fn wait_failure(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.grpc => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
            },
            r = &mut self.admin => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("admin server failed: {e}")),
                Err(e) => Err(anyhow::anyhow!("admin server task failed: {e}")),
            },
        }
    }
}
