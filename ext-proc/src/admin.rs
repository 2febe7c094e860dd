//! The admin HTTP API: workers, metrics and the process's own health.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::config::WorkerConfig;
use crate::health::Workers;
use crate::state::Shared;

/// Everything the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The router and metrics.
    pub shared: Arc<Shared>,
    /// The worker registry.
    pub workers: Arc<Workers>,
    /// Bearer token required on every route but `/healthz` and `/readyz`, when set.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("shared", &self.shared)
            .field("workers", &self.workers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One worker as `GET /workers` lists it.
#[derive(Debug, Serialize)]
pub struct WorkerView {
    /// `ip:port`.
    pub address: String,
    /// Engine kind.
    pub engine: &'static str,
    /// Models served (empty: every model).
    pub models: Vec<String>,
    /// LoRA adapters.
    pub lora_adapters: Vec<String>,
    /// Passes its health checks.
    pub healthy: bool,
    /// Receives no new requests.
    pub draining: bool,
    /// Requests in flight counted by the router.
    pub in_flight: u32,
    /// The engine's scraped load, while fresh.
    pub load: Option<kvroute_core::LoadReport>,
    /// Circuit-breaker state: `closed`, `open` or `half_open`.
    pub circuit: &'static str,
}

/// The admin API routes.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/workers", get(list_workers).post(add_worker))
        .route("/workers/{address}", axum::routing::delete(remove_worker))
        .route("/workers/{address}/drain", post(drain_worker))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state)
}

async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                error_body("missing or wrong bearer token"),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares the SHA-256 digests of both in constant time: neither the content nor the length
/// of the token shows in the time taken.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn error_body(message: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "error": message }))
}

fn view(router: &kvroute_core::Router, now_ms: u64, w: &kvroute_core::Worker) -> WorkerView {
    WorkerView {
        circuit: router.circuit_state(w.id, now_ms).as_str(),
        address: w.spec.address.clone(),
        engine: w.spec.engine.as_str(),
        models: w.spec.models.clone(),
        lora_adapters: w.spec.lora_adapters.clone(),
        healthy: w.healthy,
        draining: w.draining,
        in_flight: w.in_flight,
        load: w.load,
    }
}

async fn list_workers(State(state): State<AdminState>) -> Json<Vec<WorkerView>> {
    let now = state.shared.now_ms();
    let router = state.shared.router();
    Json(
        router
            .workers()
            .iter()
            .map(|w| view(&router, now, w))
            .collect(),
    )
}

async fn add_worker(State(state): State<AdminState>, Json(spec): Json<WorkerConfig>) -> Response {
    match state.workers.upsert(&spec) {
        Ok((address, is_new)) => {
            state.workers.update_readiness().await;
            let found = {
                let now = state.shared.now_ms();
                let router = state.shared.router();
                router
                    .workers()
                    .by_address(&address)
                    .map(|w| view(&router, now, w))
            };
            let status = if is_new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            match found {
                Some(v) => (status, Json(v)).into_response(),
                None => (
                    StatusCode::CONFLICT,
                    error_body("worker removed concurrently"),
                )
                    .into_response(),
            }
        }
        Err(message) => (StatusCode::BAD_REQUEST, error_body(&message)).into_response(),
    }
}

fn normalized(address: &str) -> String {
    crate::config::normalize_address(address)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| address.to_owned())
}

async fn drain_worker(State(state): State<AdminState>, Path(address): Path<String>) -> Response {
    let address = normalized(&address);
    let found = {
        let now = state.shared.now_ms();
        let mut router = state.shared.router();
        let id = router.workers().by_address(&address).map(|w| w.id);
        id.map(|id| {
            router.set_draining(id, true);
            router.workers().get(id).map(|w| view(&router, now, w))
        })
    };
    match found.flatten() {
        Some(v) => {
            tracing::info!(worker = %address, "worker draining");
            state.workers.update_readiness().await;
            Json(v).into_response()
        }
        None => (StatusCode::NOT_FOUND, error_body("unknown worker")).into_response(),
    }
}

async fn remove_worker(State(state): State<AdminState>, Path(address): Path<String>) -> Response {
    let address = normalized(&address);
    if state.workers.remove(&address).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, error_body("unknown worker")).into_response()
    }
}

/// The metrics port's routes: `GET /metrics` only, without a token (read-only).
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(shared): State<Arc<Shared>>| async move { encode_metrics(&shared) }),
        )
        .with_state(shared)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    encode_metrics(&state.shared)
}

fn encode_metrics(shared: &Shared) -> Response {
    let text = {
        let router = shared.router();
        shared.metrics.encode(&router)
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.shared.any_routable() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no routable worker\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_is_exact_whatever_the_lengths() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
