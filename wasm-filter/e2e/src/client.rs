//! OpenAI calls of the tests: short requests, responses read to the end.

use kvroute_e2e::openai::{self, SIM_ID_HEADER};
use serde_json::Value;

/// `max_tokens` of the requests built here.
const MAX_TOKENS: u32 = 4;

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `x-kvroute-sim-id`: the engine that served it.
    pub engine: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `retry-after`.
    pub retry_after: Option<String>,
    /// The whole body.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A chat request body with a system prompt and a question (4 tokens at most).
pub fn chat_body(model: &str, system: &str, question: &str, stream: bool) -> Value {
    openai::chat_with_system(model, system, question, stream, MAX_TOKENS)
}

/// A completions request body (4 tokens at most).
pub fn completion_body(model: &str, prompt: &str, stream: bool) -> Value {
    openai::completion_body(model, prompt, stream, MAX_TOKENS)
}

/// POSTs raw `body` to `url` with extra `headers`, reading the response to the end.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (engine, content_type, retry_after) = (
        header(SIM_ID_HEADER),
        header("content-type"),
        header("retry-after"),
    );
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok(Reply {
        status,
        engine,
        content_type,
        retry_after,
        body,
    })
}
