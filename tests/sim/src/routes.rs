//! HTTP routes of both engine dialects.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;

use crate::config::EngineKind;
use crate::engine::Engine;
use crate::metrics;
use crate::request::{self, Dialect, GenRequest};
use crate::respond;

/// Header naming the simulator instance that answered (set with `--id`).
pub const SIM_ID_HEADER: &str = "x-kvroute-sim-id";

type Shared = State<Arc<Engine>>;

/// Largest request body accepted (what a million-token context needs as text).
const MAX_BODY_BYTES: usize = 64 << 20;

/// Builds the router for the engine's dialect.
pub fn router(engine: Arc<Engine>) -> Router {
    let mut r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models));
    if !engine.cfg.no_health_metrics {
        r = r
            .route("/health", get(health))
            .route("/metrics", get(metrics_text));
    }
    r = match engine.cfg.engine {
        EngineKind::Vllm => r.route("/reset_prefix_cache", post(reset_prefix_cache)),
        EngineKind::Sglang => r
            .route("/generate", post(generate))
            .route("/health_generate", get(health))
            .route("/model_info", get(model_info))
            .route("/server_info", get(server_info))
            .route("/get_server_info", get(server_info))
            .route("/flush_cache", post(flush_cache).get(flush_cache)),
    };
    let id = engine
        .cfg
        .id
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok());
    // Real engines take prompts as long as their context (no 2 MB default body cap).
    let r = crate::fault::install(r.with_state(engine), Arc::default())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    match id {
        Some(value) => r.layer(axum::middleware::map_response(move |mut res: Response| {
            let value = value.clone();
            async move {
                res.headers_mut()
                    .insert(HeaderName::from_static(SIM_ID_HEADER), value);
                res
            }
        })),
        None => r,
    }
}

async fn run(engine: Arc<Engine>, req: GenRequest) -> Response {
    if req.stream {
        respond::stream(engine, req)
    } else {
        respond::complete(engine, req).await
    }
}

async fn openai(engine: Arc<Engine>, dialect: Dialect, body: Bytes) -> Response {
    match request::parse_openai(&engine.cfg, dialect, &body) {
        Ok(req) => run(engine, req).await,
        Err(e) => e.openai(),
    }
}

async fn chat(State(engine): Shared, body: Bytes) -> Response {
    openai(engine, Dialect::Chat, body).await
}

async fn completions(State(engine): Shared, body: Bytes) -> Response {
    openai(engine, Dialect::Completion, body).await
}

async fn generate(State(engine): Shared, body: Bytes) -> Response {
    match request::parse_generate(&engine.cfg, &body) {
        Ok(req) => run(engine, req).await,
        Err(e) => e.sglang_native(),
    }
}

async fn models(State(engine): Shared) -> Response {
    let cfg = &engine.cfg;
    let data: Vec<_> = cfg
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m,
                "object": "model",
                "created": engine.started_unix(),
                "owned_by": cfg.engine.name(),
                "root": m,
                "parent": null,
                "max_model_len": cfg.context_length,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn health(State(engine): Shared) -> StatusCode {
    let delay = engine.cfg.health_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::OK
}

async fn metrics_text(State(engine): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&engine),
    )
        .into_response()
}

async fn reset_prefix_cache(State(engine): Shared) -> Response {
    if engine.reset_cache() {
        StatusCode::OK.into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to reset prefix cache: requests are running.",
        )
            .into_response()
    }
}

async fn flush_cache(State(engine): Shared) -> Response {
    if engine.reset_cache() {
        (
            StatusCode::OK,
            "Cache flushed.\nPlease check backend logs for more details. (When there are running \
             or waiting requests, the operation will not be performed.)\n",
        )
            .into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            "Cache not flushed: there are running or waiting requests.\n",
        )
            .into_response()
    }
}

async fn model_info(State(engine): Shared) -> Response {
    let model = engine.cfg.primary_model();
    axum::Json(json!({
        "model_path": model,
        "tokenizer_path": model,
        "is_generation": true,
        "preferred_sampling_params": null,
        "weight_version": "default",
        "has_image_understanding": false,
        "has_audio_understanding": false,
        "model_type": "simulated",
        "architectures": null,
    }))
    .into_response()
}

async fn server_info(State(engine): Shared) -> Response {
    let cfg = &engine.cfg;
    let max_total_tokens = cfg.kv_blocks.saturating_mul(u64::from(cfg.block_size));
    axum::Json(json!({
        "model_path": cfg.primary_model(),
        "served_model_name": cfg.primary_model(),
        "page_size": cfg.block_size,
        "context_length": cfg.context_length,
        "max_running_requests": cfg.max_running,
        "max_total_num_tokens": max_total_tokens,
        "disable_radix_cache": false,
        "version": env!("CARGO_PKG_VERSION"),
        "internal_states": [{
            "max_total_num_tokens": max_total_tokens,
            "last_gen_throughput": 0.0,
        }],
    }))
    .into_response()
}
