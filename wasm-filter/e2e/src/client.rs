//! Minimal OpenAI client calls for the tests.

use std::time::Duration;

use serde_json::{Value, json};

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

/// A pooled keep-alive client with generous timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

/// A chat request body.
pub fn chat_body(model: &str, system: &str, question: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "stream": stream,
    })
}

/// A completions request body.
pub fn completion_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": 4, "stream": stream})
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
        header("x-kvroute-sim-id"),
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
