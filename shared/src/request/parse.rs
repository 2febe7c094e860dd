//! Request body parsing: one borrowing pass over the body into a typed view per API.
//!
//! The fast path deserializes the whole body once into the API's private struct of optional
//! fields. Fields the API does not define are skipped unread, never rejected (the body is
//! forwarded untouched). Only when that pass fails on a data error does [`diagnose`] re-read
//! the top-level fields one by one to name the offending field: errors cost extra work, the
//! common case does not.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::chat::{ChatMessage, ResponsesInput, render_chat, render_responses};
use super::de::{InputValue, LoraPath, PromptValue, SamplingParams, Text};
use super::{ApiRoute, ParsedRequest, Prompt, RequestError};

/// `/v1/chat/completions`
#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(borrow)]
    messages: Option<Vec<ChatMessage<'a>>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(borrow)]
    cache_salt: Option<Text<'a>>,
    #[serde(borrow)]
    user: Option<Text<'a>>,
}

/// `/v1/completions`
#[derive(Deserialize)]
struct CompletionsBody<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(borrow)]
    prompt: Option<PromptValue<'a>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(borrow)]
    cache_salt: Option<Text<'a>>,
    #[serde(borrow)]
    user: Option<Text<'a>>,
}

/// `/v1/embeddings`
#[derive(Deserialize)]
struct EmbeddingsBody<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(borrow)]
    input: Option<PromptValue<'a>>,
    #[serde(borrow)]
    cache_salt: Option<Text<'a>>,
    #[serde(borrow)]
    user: Option<Text<'a>>,
}

/// `/v1/responses`
#[derive(Deserialize)]
struct ResponsesBody<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(borrow)]
    input: Option<InputValue<'a>>,
    #[serde(borrow)]
    instructions: Option<Text<'a>>,
    stream: Option<bool>,
    max_output_tokens: Option<u64>,
    #[serde(borrow)]
    cache_salt: Option<Text<'a>>,
    #[serde(borrow)]
    user: Option<Text<'a>>,
}

/// SGLang `/generate`
#[derive(Deserialize)]
struct GenerateBody<'a> {
    #[serde(borrow)]
    model: Option<Text<'a>>,
    #[serde(borrow)]
    text: Option<PromptValue<'a>>,
    #[serde(borrow)]
    input_ids: Option<PromptValue<'a>>,
    sampling_params: Option<SamplingParams>,
    stream: Option<bool>,
    #[serde(borrow)]
    lora_path: Option<LoraPath<'a>>,
}

/// The top-level fields each API reads, in the order errors are reported.
fn fields_of(route: ApiRoute) -> &'static [&'static str] {
    match route {
        ApiRoute::ChatCompletions => &[
            "model",
            "messages",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "cache_salt",
            "user",
        ],
        ApiRoute::Completions => &[
            "model",
            "prompt",
            "stream",
            "max_tokens",
            "max_completion_tokens",
            "cache_salt",
            "user",
        ],
        ApiRoute::Embeddings => &["model", "input", "cache_salt", "user"],
        ApiRoute::Responses => &[
            "model",
            "input",
            "instructions",
            "stream",
            "max_output_tokens",
            "cache_salt",
            "user",
        ],
        ApiRoute::Generate => &[
            "model",
            "text",
            "input_ids",
            "sampling_params",
            "stream",
            "lora_path",
        ],
    }
}

/// Checks one top-level field's raw JSON against the type the route's struct gives it.
fn check_field(route: ApiRoute, name: &str, raw: &str) -> Result<(), serde_json::Error> {
    fn check<'a, T: Deserialize<'a>>(raw: &'a str) -> Result<(), serde_json::Error> {
        serde_json::from_str::<T>(raw).map(drop)
    }
    match name {
        "model" | "cache_salt" | "user" | "instructions" => check::<Option<Text>>(raw),
        "stream" => check::<Option<bool>>(raw),
        "max_tokens" | "max_completion_tokens" | "max_output_tokens" => check::<Option<u64>>(raw),
        "messages" => check::<Option<Vec<ChatMessage>>>(raw),
        "input" if route == ApiRoute::Responses => check::<Option<InputValue>>(raw),
        "prompt" | "text" | "input_ids" | "input" => check::<Option<PromptValue>>(raw),
        "sampling_params" => check::<Option<SamplingParams>>(raw),
        "lora_path" => check::<Option<LoraPath>>(raw),
        _ => Ok(()),
    }
}

/// Parses a request body for `route`.
///
/// Extracts the model, the prompt (rendered for chat and Responses, the first one of a batch
/// otherwise), `stream`, the output token limit, SGLang's `lora_path`, `cache_salt` and `user`.
///
/// The whole body is checked to be UTF-8 first, including fields that are not read: the engine
/// would reject it anyway, and `serde_json` does not validate strings it skips.
pub fn parse_request(route: ApiRoute, body: &[u8]) -> Result<ParsedRequest<'_>, RequestError> {
    let body = std::str::from_utf8(body).map_err(|e| {
        RequestError::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    if body.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(match serde_json::from_str::<IgnoredAny>(body) {
            Ok(_) => RequestError::NotAnObject,
            Err(e) => json_error(&e),
        });
    }
    let parsed = match route {
        ApiRoute::ChatCompletions => serde_json::from_str(body).map(ChatBody::into_request),
        ApiRoute::Completions => serde_json::from_str(body).map(CompletionsBody::into_request),
        ApiRoute::Embeddings => serde_json::from_str(body).map(EmbeddingsBody::into_request),
        ApiRoute::Responses => serde_json::from_str(body).map(ResponsesBody::into_request),
        ApiRoute::Generate => serde_json::from_str(body).map(GenerateBody::into_request),
    };
    match parsed {
        Ok(result) => result,
        Err(e) if e.is_data() => Err(diagnose(route, body).unwrap_or_else(|| json_error(&e))),
        Err(e) => Err(json_error(&e)),
    }
}

/// Names the field the fast path tripped on, reading the top level again field by field.
fn diagnose(route: ApiRoute, body: &str) -> Option<RequestError> {
    let top: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(body).ok()?;
    fields_of(route).iter().find_map(|&field| {
        let raw = top.get(field)?;
        check_field(route, field, raw.get())
            .err()
            .map(|e| invalid(field, reason(&e)))
    })
}

/// The serde error message without its position (which is relative to the field's value).
fn reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

fn json_error(e: &serde_json::Error) -> RequestError {
    RequestError::InvalidJson(e.to_string())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// What every API contributes besides the prompt.
struct Meta<'a> {
    model: Option<Text<'a>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    lora: Option<Cow<'a, str>>,
    cache_salt: Option<Text<'a>>,
    user: Option<Text<'a>>,
}

impl<'a> Meta<'a> {
    fn require_model(&self) -> Result<(), RequestError> {
        match self.model {
            Some(_) => Ok(()),
            None => Err(RequestError::MissingField("model")),
        }
    }

    fn finish(self, route: ApiRoute, prompt: Prompt<'a>) -> ParsedRequest<'a> {
        ParsedRequest {
            route,
            model: self.model.map(|t| t.0),
            prompt,
            stream: self.stream.unwrap_or(false),
            max_tokens: self.max_tokens,
            lora: self.lora,
            cache_salt: self.cache_salt.map(|t| t.0),
            user: self.user.map(|t| t.0),
            top_level: None,
        }
    }
}

impl<'a> ChatBody<'a> {
    fn into_request(self) -> Result<ParsedRequest<'a>, RequestError> {
        let meta = Meta {
            model: self.model,
            stream: self.stream,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            lora: None,
            cache_salt: self.cache_salt,
            user: self.user,
        };
        meta.require_model()?;
        let messages = self
            .messages
            .ok_or(RequestError::MissingField("messages"))?;
        if messages.is_empty() {
            return Err(invalid("messages", "must contain at least one message"));
        }
        let prompt = Prompt::Text(Cow::Owned(render_chat(&messages)));
        Ok(meta.finish(ApiRoute::ChatCompletions, prompt))
    }
}

impl<'a> CompletionsBody<'a> {
    fn into_request(self) -> Result<ParsedRequest<'a>, RequestError> {
        let meta = Meta {
            model: self.model,
            stream: self.stream,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            lora: None,
            cache_salt: self.cache_salt,
            user: self.user,
        };
        meta.require_model()?;
        let prompt = self.prompt.ok_or(RequestError::MissingField("prompt"))?;
        Ok(meta.finish(ApiRoute::Completions, prompt.0))
    }
}

impl<'a> EmbeddingsBody<'a> {
    fn into_request(self) -> Result<ParsedRequest<'a>, RequestError> {
        let meta = Meta {
            model: self.model,
            stream: None,
            max_tokens: None,
            lora: None,
            cache_salt: self.cache_salt,
            user: self.user,
        };
        meta.require_model()?;
        let input = self.input.ok_or(RequestError::MissingField("input"))?;
        Ok(meta.finish(ApiRoute::Embeddings, input.0))
    }
}

impl<'a> ResponsesBody<'a> {
    fn into_request(self) -> Result<ParsedRequest<'a>, RequestError> {
        let meta = Meta {
            model: self.model,
            stream: self.stream,
            max_tokens: self.max_output_tokens,
            lora: None,
            cache_salt: self.cache_salt,
            user: self.user,
        };
        meta.require_model()?;
        let input = match self.input {
            None => return Err(RequestError::MissingField("input")),
            Some(InputValue::Items(items)) => ResponsesInput::Items(items),
            Some(InputValue::Prompt(Prompt::Text(t))) => ResponsesInput::Text(t),
            Some(InputValue::Prompt(Prompt::Tokens(_))) => {
                return Err(invalid(
                    "input",
                    "expected a string or a list of input items",
                ));
            }
        };
        let instructions = self.instructions.as_ref().map(|t| &*t.0);
        let prompt = Prompt::Text(Cow::Owned(render_responses(instructions, &input)));
        Ok(meta.finish(ApiRoute::Responses, prompt))
    }
}

impl<'a> GenerateBody<'a> {
    fn into_request(self) -> Result<ParsedRequest<'a>, RequestError> {
        let prompt = match (self.text, self.input_ids) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "input_ids",
                    "give either `text` or `input_ids`, not both",
                ));
            }
            (Some(PromptValue(Prompt::Text(t))), None) => Prompt::Text(t),
            (Some(_), None) => {
                return Err(invalid("text", "expected a string or a list of strings"));
            }
            (None, Some(PromptValue(Prompt::Tokens(ids)))) => Prompt::Tokens(ids),
            (None, Some(_)) => return Err(invalid("input_ids", "expected a list of token ids")),
            (None, None) => return Err(RequestError::MissingField("text")),
        };
        let meta = Meta {
            model: self.model,
            stream: self.stream,
            max_tokens: self.sampling_params.and_then(|s| s.0),
            lora: self.lora_path.and_then(|l| l.0),
            cache_salt: None,
            user: None,
        };
        Ok(meta.finish(ApiRoute::Generate, prompt))
    }
}
