//! The request model: what kvroute reads from an inference request body.
//!
//! [`parse_request`] reads the body once, borrowing strings from it where JSON escapes allow,
//! and keeps every field it does not know about untouched (the body is forwarded as is).

mod chat;
mod de;
mod error;
mod parse;
pub mod path;
pub mod top_level;

use std::borrow::Cow;

pub use error::RequestError;
pub use parse::parse_request;
pub use top_level::TopLevel;

/// The inference API a request path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiRoute {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// SGLang `POST /generate`
    Generate,
}

impl ApiRoute {
    /// Maps a request path (query string allowed) to its API, or `None` for paths kvroute does
    /// not route by content (`/v1/models`, `/health`, ...).
    /// The path is read in canonical form ([`path::canonical_path`]): `/v1//chat%2Fcompletions/`
    /// is chat.
    pub fn from_path(path: &str) -> Option<ApiRoute> {
        match path::canonical_path(path).as_ref() {
            "/v1/chat/completions" => Some(ApiRoute::ChatCompletions),
            "/v1/completions" => Some(ApiRoute::Completions),
            "/v1/embeddings" => Some(ApiRoute::Embeddings),
            "/v1/responses" => Some(ApiRoute::Responses),
            "/generate" => Some(ApiRoute::Generate),
            _ => None,
        }
    }

    /// Short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRoute::ChatCompletions => "chat_completions",
            ApiRoute::Completions => "completions",
            ApiRoute::Embeddings => "embeddings",
            ApiRoute::Responses => "responses",
            ApiRoute::Generate => "generate",
        }
    }
}

/// The prompt as the engine will see it first: text, or token ids when the client sent ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt<'a> {
    /// Prompt text. For chat, the messages rendered in order with their roles.
    Text(Cow<'a, str>),
    /// Token ids sent by the client (`/v1/completions` id lists, SGLang `input_ids`).
    Tokens(Vec<u32>),
}

impl Prompt<'_> {
    /// Length in bytes (text) or tokens.
    pub fn len(&self) -> usize {
        match self {
            Prompt::Text(t) => t.len(),
            Prompt::Tokens(t) => t.len(),
        }
    }

    /// Empty prompt.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What kvroute extracted from one request body.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest<'a> {
    /// The API the body was parsed as.
    pub route: ApiRoute,
    /// `model` field. SGLang `/generate` has none; then `None`.
    pub model: Option<Cow<'a, str>>,
    /// The prompt the engine sees first (the first one of a batch).
    pub prompt: Prompt<'a>,
    /// `stream` flag.
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens`, `max_output_tokens` or SGLang `max_new_tokens`.
    pub max_tokens: Option<u64>,
    /// LoRA adapter named by SGLang's `lora_path` (vLLM names adapters through `model`).
    pub lora: Option<Cow<'a, str>>,
    /// `cache_salt` (vLLM): requests with different salts never share cached prefixes.
    pub cache_salt: Option<Cow<'a, str>>,
    /// `user` field, a fallback session key.
    pub user: Option<Cow<'a, str>>,
    /// The body's top-level fields, read when some normalization rule may rewrite the body
    /// ([`crate::Gateway::parse_inference`] fills it); `None` otherwise.
    pub top_level: Option<TopLevel<'a>>,
}

impl<'a> ParsedRequest<'a> {
    /// The view policies route on. `session_header` is the value of the configured session
    /// header, which wins over the `user` field.
    pub fn route_request<'b>(&'b self, session_header: Option<&'b str>) -> RouteRequest<'b> {
        RouteRequest {
            model: self.model.as_deref().unwrap_or(""),
            prompt: &self.prompt,
            lora: self.lora.as_deref(),
            cache_salt: self.cache_salt.as_deref(),
            session_key: session_header.or(self.user.as_deref()),
            tokens: None,
        }
    }
}

/// What a routing policy sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// Requested model (empty when the API has none).
    pub model: &'a str,
    /// The prompt.
    pub prompt: &'a Prompt<'a>,
    /// LoRA adapter, part of the cache key.
    pub lora: Option<&'a str>,
    /// Cache salt, part of the cache key.
    pub cache_salt: Option<&'a str>,
    /// Session key (configured header, else `user`), for affinity policies.
    pub session_key: Option<&'a str>,
    /// The prompt as the engine's tokenizer sees it, when the shell tokenized it (chat
    /// template applied). `None`: not tokenized.
    pub tokens: Option<&'a [u32]>,
}

impl<'a> RouteRequest<'a> {
    /// The same request with the shell's tokenization of the prompt attached.
    pub fn with_tokens(self, tokens: Option<&'a [u32]>) -> RouteRequest<'a> {
        RouteRequest { tokens, ..self }
    }

    /// The prompt's token ids: the shell's tokenization, else ids the client sent.
    pub fn token_ids(&self) -> Option<&'a [u32]> {
        match (self.tokens, self.prompt) {
            (Some(t), _) => Some(t),
            (None, Prompt::Tokens(t)) => Some(t.as_slice()),
            (None, Prompt::Text(_)) => None,
        }
    }
}
