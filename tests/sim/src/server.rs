//! Listening: TCP_NODELAY on every accepted socket, graceful shutdown, and an
//! in-process handle for tests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cache::{KvEventSink, NoopSink};
use crate::config::{EngineKind, SimConfig};
use crate::engine::Engine;
use crate::metrics::{SGLANG_TTFT_BUCKETS, VLLM_TTFT_BUCKETS};
use crate::routes;

/// Creates the engine for `cfg`, publishing KV events to `sink`.
pub fn engine(cfg: SimConfig, sink: Box<dyn KvEventSink>) -> Arc<Engine> {
    let buckets = match cfg.engine {
        EngineKind::Vllm => VLLM_TTFT_BUCKETS,
        EngineKind::Sglang => SGLANG_TTFT_BUCKETS,
    };
    Arc::new(Engine::new(cfg, sink, buckets))
}

/// Serves `engine` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = routes::router(engine);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("failed to set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running in the current tokio runtime.
pub struct RunningSim {
    /// Bound address.
    pub addr: SocketAddr,
    /// Engine state (for inspecting counters).
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningSim {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, waits for open connections to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Binds `addr` (port 0 allowed) and serves in a background task.
pub async fn spawn(addr: &str, cfg: SimConfig) -> io::Result<RunningSim> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let engine = engine(cfg, Box::new(NoopSink));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, Arc::clone(&engine), async move {
        let _ = stopped.await;
    }));
    Ok(RunningSim {
        addr,
        engine,
        stop: Some(stop),
        task,
    })
}
