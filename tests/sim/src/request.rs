//! Parsing and validation of generation requests, with each engine's rules.

use serde_json::{Map, Value};

use kvroute_core::ApiRoute;

use crate::config::{EngineKind, SimConfig};
use crate::errors::ApiError;
use crate::prompt::{self, Prompt};

/// Which API shape a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
    /// SGLang `POST /generate`.
    Generate,
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// API shape.
    pub dialect: Dialect,
    /// Model name to echo back.
    pub model: String,
    /// Tokenized prompt.
    pub prompt: Prompt,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Server-sent events instead of one JSON body.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
    /// Client-supplied request id (SGLang `rid`).
    pub rid: Option<String>,
}

/// Default output length of the OpenAI routes when the request sets none.
pub const DEFAULT_MAX_TOKENS: u64 = 16;
/// SGLang's default `max_new_tokens` on `/generate`.
pub const SGLANG_DEFAULT_MAX_NEW_TOKENS: u64 = 128;

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "Input should be a valid dictionary or object to extract fields from",
        )),
        Err(e) => Err(ApiError::bad_request(format!("JSON decode error: {e}"))),
    }
}

fn is_set(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_some_and(|v| !v.is_null())
}

fn opt_u64(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{key}: Input should be a valid integer"))
        }),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key}: Input should be a valid boolean"
        ))),
    }
}

/// Resolves the model: missing means the first served one; unknown is a 404.
fn resolve_model(cfg: &SimConfig, m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("model") {
        None | Some(Value::Null) => Ok(cfg.primary_model().to_string()),
        Some(Value::String(s)) if cfg.models.iter().any(|x| x == s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(ApiError::unknown_model(s)),
        Some(_) => Err(ApiError::bad_request(
            "model: Input should be a valid string",
        )),
    }
}

fn ids(v: &[Value]) -> Option<Vec<u64>> {
    v.iter().map(Value::as_u64).collect()
}

/// Prompt of `/v1/completions` (`prompt`) or `/generate` (`text`/`input_ids`):
/// a string, a list with one string, a list of token ids, or a list with one such list.
fn prompt_value(cfg: &SimConfig, model: &str, v: &Value, field: &str) -> Result<Prompt, ApiError> {
    let batch = || ApiError::bad_request(format!("{field}: only a single prompt is supported"));
    match v {
        Value::String(s) => Ok(prompt::from_text(
            model,
            s,
            cfg.block_size,
            cfg.chars_per_token,
        )),
        Value::Array(items) => match items.as_slice() {
            [] => Err(ApiError::bad_request(format!(
                "{field}: prompt cannot be empty"
            ))),
            [Value::String(s)] => Ok(prompt::from_text(
                model,
                s,
                cfg.block_size,
                cfg.chars_per_token,
            )),
            [Value::Array(inner)] => ids(inner)
                .map(|ids| {
                    prompt::from_ids(
                        model,
                        &ids,
                        cfg.block_size,
                        &cfg.hash_seed,
                        cfg.lora_of(model),
                    )
                })
                .ok_or_else(|| ApiError::bad_request(format!("{field}: invalid token ids"))),
            items if items.iter().all(Value::is_u64) => Ok(prompt::from_ids(
                model,
                &ids(items).unwrap_or_default(),
                cfg.block_size,
                &cfg.hash_seed,
                cfg.lora_of(model),
            )),
            _ => Err(batch()),
        },
        _ => Err(ApiError::bad_request(format!(
            "{field}: Input should be a valid string or list"
        ))),
    }
}

/// Checks prompt and output lengths against the context, with each engine's message.
fn check_context(cfg: &SimConfig, prompt: &Prompt, max_tokens: u64) -> Result<(), ApiError> {
    let ctx = u64::from(cfg.context_length);
    let input = prompt.tokens as u64;
    match cfg.engine {
        EngineKind::Vllm if input > ctx => Err(ApiError::bad_request(format!(
            "This model's maximum context length is {ctx} tokens. However, your request has \
             {input} input tokens. Please reduce the length of the input messages."
        ))),
        EngineKind::Vllm if input + max_tokens > ctx => Err(ApiError::bad_request(format!(
            "'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's \
             maximum context length is {ctx} tokens and your request has {input} input tokens \
             ({max_tokens} > {ctx} - {input})."
        ))),
        EngineKind::Sglang if input >= ctx => Err(ApiError::bad_request(format!(
            "The input ({input} tokens) is longer than the model's context length ({ctx} tokens)."
        ))),
        EngineKind::Sglang if input + max_tokens > ctx => Err(ApiError::bad_request(format!(
            "Requested token count exceeds the model's maximum context length of {ctx} tokens. \
             You requested a total of {} tokens: {input} tokens from the input messages and \
             {max_tokens} tokens for the completion. Please reduce the number of tokens in the \
             input messages or the completion to fit within the limit.",
            input + max_tokens
        ))),
        _ => Ok(()),
    }
}

/// Parses `/v1/chat/completions` or `/v1/completions`.
pub fn parse_openai(
    cfg: &SimConfig,
    dialect: Dialect,
    body: &[u8],
) -> Result<GenRequest, ApiError> {
    let m = parse_object(body)?;
    let stream = opt_bool(&m, "stream")?;
    if cfg.engine == EngineKind::Vllm {
        if is_set(&m, "stream_options") && !stream {
            return Err(ApiError::bad_request(
                "Stream options can only be defined when `stream=True`.",
            ));
        }
        if is_set(&m, "prompt_logprobs") && stream {
            return Err(ApiError::bad_request(
                "`prompt_logprobs` are not available when `stream=True`.",
            ));
        }
    }
    if cfg.engine == EngineKind::Sglang && dialect == Dialect::Chat && is_set(&m, "chat_template") {
        return Err(ApiError::bad_request(
            "chat_template in the request is not allowed; the server's chat template is used.",
        ));
    }
    let model = resolve_model(cfg, &m)?;
    let route = match dialect {
        Dialect::Chat => ApiRoute::ChatCompletions,
        _ => ApiRoute::Completions,
    };
    let prompt = match tokenized(cfg, &model, route, body) {
        Some(p) => p,
        None => match dialect {
            Dialect::Chat => {
                let messages = m
                    .get("messages")
                    .and_then(Value::as_array)
                    .ok_or_else(|| ApiError::bad_request("messages: Field required"))?;
                let text = prompt::render_chat(messages).ok_or_else(|| {
                    ApiError::bad_request("messages: each message should be an object")
                })?;
                prompt::from_text(&model, &text, cfg.block_size, cfg.chars_per_token)
            }
            _ => {
                let v = m
                    .get("prompt")
                    .ok_or_else(|| ApiError::bad_request("prompt: Field required"))?;
                prompt_value(cfg, &model, v, "prompt")?
            }
        },
    };
    let max_completion = opt_u64(&m, "max_completion_tokens")?;
    let max_tokens = match max_completion {
        Some(v) => v,
        None => opt_u64(&m, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS),
    };
    if max_tokens < 1 {
        return Err(ApiError::bad_request(format!(
            "max_tokens must be at least 1, got {max_tokens}."
        )));
    }
    if cfg.engine == EngineKind::Sglang
        && max_completion.is_some_and(|v| v > u64::from(cfg.context_length))
    {
        return Err(ApiError::bad_request(format!(
            "max_completion_tokens is too large: {max_tokens}. This model supports at most {} \
             completion tokens.",
            cfg.context_length
        )));
    }
    opt_bool(&m, "ignore_eos")?;
    check_context(cfg, &prompt, max_tokens)?;
    let include_usage = stream
        && m.get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    Ok(GenRequest {
        dialect,
        model,
        prompt,
        max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
        stream,
        include_usage,
        rid: None,
    })
}

/// Parses SGLang's native `/generate`.
pub fn parse_generate(cfg: &SimConfig, body: &[u8]) -> Result<GenRequest, ApiError> {
    let m = parse_object(body)?;
    let model = cfg.primary_model().to_string();
    if let Some(prompt) = tokenized(cfg, &model, ApiRoute::Generate, body) {
        return generate_request(cfg, &m, model, prompt);
    }
    let prompt = match (m.get("text"), m.get("input_ids")) {
        (Some(t), _) if !t.is_null() => prompt_value(cfg, &model, t, "text")?,
        (_, Some(ids)) if !ids.is_null() => prompt_value(cfg, &model, ids, "input_ids")?,
        _ => {
            return Err(ApiError::bad_request(
                "Either text, input_ids or input_embeds should be provided.",
            ));
        }
    };
    generate_request(cfg, &m, model, prompt)
}

/// The prompt tokenized for real with `--tokenizer`, hashed like vLLM; `None` without a
/// tokenizer or when the body's prompt is not text.
fn tokenized(cfg: &SimConfig, model: &str, route: ApiRoute, body: &[u8]) -> Option<Prompt> {
    let ids = cfg
        .loaded_tokenizer
        .as_ref()?
        .tokenize_request(route, body)?;
    Some(prompt::from_token_ids(
        &ids,
        cfg.block_size,
        &cfg.hash_seed,
        cfg.lora_of(model),
    ))
}

/// The rest of `/generate` once the prompt is known.
fn generate_request(
    cfg: &SimConfig,
    m: &Map<String, Value>,
    model: String,
    prompt: Prompt,
) -> Result<GenRequest, ApiError> {
    let empty = Map::new();
    let sp = match m.get("sampling_params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::bad_request("sampling_params should be an object")),
    };
    let max_tokens = opt_u64(sp, "max_new_tokens")?.unwrap_or(SGLANG_DEFAULT_MAX_NEW_TOKENS);
    if max_tokens < 1 {
        return Err(ApiError::bad_request("max_new_tokens must be at least 1"));
    }
    opt_bool(sp, "ignore_eos")?;
    check_context(cfg, &prompt, max_tokens)?;
    Ok(GenRequest {
        dialect: Dialect::Generate,
        model,
        prompt,
        max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
        stream: opt_bool(m, "stream")?,
        include_usage: false,
        rid: m.get("rid").and_then(Value::as_str).map(str::to_string),
    })
}
