//! Test-only fault injection and request counting.
//!
//! `POST /sim/fault` with `{"status": 500, "count": 10}` makes the next 10 inference
//! requests (chat, completions, `/generate`) fail with that status and an engine-style JSON
//! error body; without `count` every one fails until `DELETE /sim/fault`. `GET /sim/fault`
//! returns the current fault and two counters: inference requests received and failed by a
//! fault. Real engines have no such routes; tests use them to make an engine misbehave and
//! to balance request counts.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

/// Paths whose requests are counted and may be failed.
const INFERENCE_PATHS: &[&str] = &["/v1/chat/completions", "/v1/completions", "/generate"];

/// A fault to inject, as posted to `/sim/fault`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// HTTP status of the failed answers (400..=599).
    pub status: u16,
    /// How many requests fail; `None`: until cleared.
    #[serde(default)]
    pub count: Option<u64>,
}

/// Fault state and counters.
#[derive(Debug, Default)]
pub struct Faults {
    active: Mutex<Option<FaultSpec>>,
    requests: AtomicU64,
    failed: AtomicU64,
}

impl Faults {
    /// Inference requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Inference requests failed by an injected fault.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Option<FaultSpec>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status to fail the next request with, consuming one from a counted fault.
    fn take(&self) -> Option<StatusCode> {
        let mut active = self.active();
        let spec = (*active)?;
        match spec.count {
            Some(0) => {
                *active = None;
                return None;
            }
            Some(n) => {
                active.replace(FaultSpec {
                    count: Some(n - 1),
                    ..spec
                });
            }
            None => {}
        }
        StatusCode::from_u16(spec.status).ok()
    }
}

/// Adds the `/sim/fault` routes and the counting/failing middleware to `router`.
pub fn install(router: Router, faults: Arc<Faults>) -> Router {
    let admin = Router::new()
        .route("/sim/fault", post(set).delete(clear).get(show))
        .with_state(faults.clone());
    router
        .layer(axum::middleware::from_fn_with_state(faults, inject))
        .merge(admin)
}

async fn inject(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    let inference = req.method() == Method::POST && INFERENCE_PATHS.contains(&req.uri().path());
    if !inference {
        return next.run(req).await;
    }
    faults.requests.fetch_add(1, Ordering::Relaxed);
    match faults.take() {
        Some(status) => {
            faults.failed.fetch_add(1, Ordering::Relaxed);
            let body = json!({"error": {
                "message": "injected fault",
                "type": "InternalServerError",
                "param": null,
                "code": status.as_u16(),
            }});
            (status, axum::Json(body)).into_response()
        }
        None => next.run(req).await,
    }
}

async fn set(State(faults): State<Arc<Faults>>, body: axum::body::Bytes) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if !(400..=599).contains(&spec.status) {
        return (StatusCode::BAD_REQUEST, "status must be 400..=599").into_response();
    }
    *faults.active() = Some(spec);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear(State(faults): State<Arc<Faults>>) -> StatusCode {
    *faults.active() = None;
    StatusCode::NO_CONTENT
}

async fn show(State(faults): State<Arc<Faults>>) -> Response {
    let active = *faults.active();
    axum::Json(json!({
        "status": active.map(|f| f.status),
        "remaining": active.and_then(|f| f.count),
        "requests": faults.requests(),
        "failed": faults.failed(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_fault_expires() {
        let f = Faults::default();
        *f.active() = Some(FaultSpec {
            status: 500,
            count: Some(2),
        });
        assert_eq!(f.take(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(f.take(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(f.take(), None);
        assert!(f.active().is_none());
    }
}
