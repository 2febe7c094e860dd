//! Runs a validated request on the engine and shapes the answer: one JSON body,
//! or server-sent events (`data: {json}\n\n` ... `data: [DONE]\n\n`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use serde_json::{Value, json};

use crate::engine::{Engine, FinishReason, Generation, unix_now};
use crate::errors::ApiError;
use crate::request::{Dialect, GenRequest};

/// SplitMix64 finalizer: spreads request numbers into random-looking ids.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Identity of one response, shared by all its chunks.
struct Meta {
    id: String,
    created: u64,
    model: String,
    dialect: Dialect,
    started: Instant,
}

impl Meta {
    fn new(engine: &Engine, req: &GenRequest) -> Self {
        let n = engine.next_request_number();
        let hi = splitmix64(engine.started_unix() ^ engine.cfg.seed.rotate_left(17) ^ n);
        let suffix = format!("{hi:016x}{:016x}", splitmix64(hi ^ n));
        let id = match (&req.rid, req.dialect) {
            (Some(rid), _) => rid.clone(),
            (None, Dialect::Chat) => format!("chatcmpl-{suffix}"),
            (None, Dialect::Completion) => format!("cmpl-{suffix}"),
            (None, Dialect::Generate) => suffix,
        };
        Meta {
            id,
            created: unix_now(),
            model: req.model.clone(),
            dialect: req.dialect,
            started: Instant::now(),
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.dialect, streamed) {
            (Dialect::Chat, false) => "chat.completion",
            (Dialect::Chat, true) => "chat.completion.chunk",
            _ => "text_completion",
        }
    }

    fn usage(g: &Generation) -> Value {
        let (p, c) = (g.prompt_tokens(), g.completion_tokens());
        json!({
            "prompt_tokens": p,
            "total_tokens": p + c,
            "completion_tokens": c,
            "prompt_tokens_details": {"cached_tokens": g.cached_tokens()},
        })
    }

    /// SGLang `meta_info` of `/generate`.
    fn meta_info(&self, g: &Generation, finish: Option<FinishReason>) -> Value {
        let finish_reason = match finish {
            Some(r) => json!({"type": r.as_str(), "length": g.completion_tokens()}),
            None => Value::Null,
        };
        json!({
            "id": self.id,
            "finish_reason": finish_reason,
            "prompt_tokens": g.prompt_tokens(),
            "completion_tokens": g.completion_tokens(),
            "cached_tokens": g.cached_tokens(),
            "e2e_latency": self.started.elapsed().as_secs_f64(),
        })
    }

    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// Chunk announcing the assistant role (chat only).
    fn role_chunk(&self) -> Value {
        self.envelope(json!([{
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }]))
    }

    /// Chunk carrying one token; `finish` set on the last.
    fn token_chunk(&self, token: &str, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self.dialect {
            Dialect::Chat => self.envelope(json!([{
                "index": 0,
                "delta": {"content": token},
                "logprobs": null,
                "finish_reason": finish,
                "stop_reason": null,
            }])),
            _ => self.envelope(json!([{
                "index": 0,
                "text": token,
                "logprobs": null,
                "finish_reason": finish,
                "stop_reason": null,
            }])),
        }
    }

    /// Whole non-streamed body.
    fn full_body(&self, g: &Generation, text: String, finish: FinishReason) -> Value {
        let usage = Self::usage(g);
        match self.dialect {
            Dialect::Chat => json!({
                "id": self.id,
                "object": self.object(false),
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": null,
                    "finish_reason": finish.as_str(),
                    "stop_reason": null,
                }],
                "usage": usage,
                "prompt_logprobs": null,
            }),
            Dialect::Completion => json!({
                "id": self.id,
                "object": self.object(false),
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": finish.as_str(),
                    "stop_reason": null,
                    "prompt_logprobs": null,
                }],
                "usage": usage,
            }),
            Dialect::Generate => json!({
                "text": text,
                "meta_info": self.meta_info(g, Some(finish)),
            }),
        }
    }
}

/// Runs the request without streaming and returns one JSON body.
pub async fn complete(engine: Arc<Engine>, req: GenRequest) -> Response {
    let meta = Meta::new(&engine, &req);
    let Some(mut g) = engine.start(&req.prompt, req.max_tokens).await else {
        return ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "The engine is shutting down.".to_string(),
        }
        .openai();
    };
    let mut text = g.first_token();
    while let Some(t) = g.next_token().await {
        text.push_str(&t);
    }
    let body = meta.full_body(&g, text, FinishReason::Length);
    g.finish();
    Json(body).into_response()
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Per-stream state; dropping it (client gone) releases the engine slot.
struct StreamState {
    engine: Arc<Engine>,
    req: GenRequest,
    meta: Meta,
    generation: Option<Generation>,
    text: String,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl StreamState {
    fn push_token(&mut self, g: &Generation, token: &str) {
        let finish = g.is_done().then_some(FinishReason::Length);
        let v = match self.meta.dialect {
            Dialect::Generate => {
                self.text.push_str(token);
                json!({"text": self.text, "meta_info": self.meta.meta_info(g, finish)})
            }
            _ => self.meta.token_chunk(token, finish),
        };
        self.pending.push_back(frame(&v));
    }

    fn finish(&mut self, g: Generation) {
        if self.req.include_usage {
            let mut v = self.meta.envelope(json!([]));
            v["usage"] = Meta::usage(&g);
            self.pending.push_back(frame(&v));
        }
        g.finish();
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.done = true;
    }

    async fn next_frame(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            let g = match self.generation.take() {
                None => {
                    let mut g = self
                        .engine
                        .start(&self.req.prompt, self.req.max_tokens)
                        .await?;
                    if self.meta.dialect == Dialect::Chat {
                        let role = self.meta.role_chunk();
                        self.pending.push_back(frame(&role));
                    }
                    let first = g.first_token();
                    self.push_token(&g, &first);
                    g
                }
                Some(mut g) => {
                    if let Some(t) = g.next_token().await {
                        self.push_token(&g, &t);
                    }
                    g
                }
            };
            if g.is_done() {
                self.finish(g);
            } else {
                self.generation = Some(g);
            }
        }
    }
}

/// Runs the request as server-sent events. Headers go out at once; the first
/// event follows prefill (queueing included), then one event per token.
pub fn stream(engine: Arc<Engine>, req: GenRequest) -> Response {
    let meta = Meta::new(&engine, &req);
    let state = StreamState {
        engine,
        req,
        meta,
        generation: None,
        text: String::new(),
        pending: VecDeque::new(),
        done: false,
    };
    let body = Body::from_stream(stream::unfold(state, StreamState::next_frame));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
