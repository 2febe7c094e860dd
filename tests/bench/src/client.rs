//! Sending one streaming request to an OpenAI-compatible server and timing it.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::sse::{Chunk, SseDecoder, Usage, parse_chunk};
use crate::workload::Request;

/// Which OpenAI endpoint to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/chat/completions` with the request's messages.
    Chat,
    /// `/v1/completions` with the messages rendered as one prompt.
    Completions,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The server answered with a non-success HTTP status.
    Http(u16),
    /// The connection could not be established.
    Connect,
    /// The request did not finish within the timeout.
    Timeout,
    /// The stream was malformed, carried an error, or ended without `[DONE]` or any text.
    BadStream,
    /// Any other transport failure.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Http(code) => write!(f, "http_{code}"),
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::BadStream => f.write_str("bad_stream"),
            ErrorKind::Other => f.write_str("other"),
        }
    }
}

/// Result and timings of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Time from sending to the first non-empty text chunk.
    pub ttft: Option<Duration>,
    /// Time from sending to the end of the stream (or the failure).
    pub e2e: Duration,
    /// Usage from the final chunk, when the server sent it.
    pub usage: Option<Usage>,
    /// Number of chunks that carried text (a fallback count of output tokens).
    pub content_chunks: u64,
    /// The failure, if any.
    pub error: Option<ErrorKind>,
}

impl Outcome {
    /// Output tokens: from usage, else the number of text chunks.
    pub fn output_tokens(&self) -> u64 {
        self.usage
            .map(|u| u.completion_tokens)
            .unwrap_or(self.content_chunks)
    }
}

/// Joins an OpenAI base URL (with or without a trailing `/v1`) and an endpoint path.
pub fn endpoint_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/v1/{}", path.trim_start_matches('/'))
}

/// The JSON body of a streaming request.
pub fn request_body(api: Api, model: &str, req: &Request) -> Value {
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": req.max_tokens,
        "ignore_eos": true,
        "temperature": 0.0,
    });
    match api {
        Api::Chat => body["messages"] = json!(req.messages),
        Api::Completions => body["prompt"] = json!(req.prompt()),
    }
    body
}

fn classify(err: &reqwest::Error) -> ErrorKind {
    if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_connect() {
        ErrorKind::Connect
    } else if let Some(status) = err.status() {
        ErrorKind::Http(status.as_u16())
    } else if err.is_body() || err.is_decode() {
        ErrorKind::BadStream
    } else {
        ErrorKind::Other
    }
}

/// Sends `req` to `base` and reads the whole stream. Never fails: errors are in the outcome.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    api: Api,
    model: &str,
    req: &Request,
) -> Outcome {
    let path = match api {
        Api::Chat => "chat/completions",
        Api::Completions => "completions",
    };
    let start = Instant::now();
    let mut outcome = Outcome {
        ttft: None,
        e2e: Duration::ZERO,
        usage: None,
        content_chunks: 0,
        error: None,
    };
    let result = stream(
        client,
        &endpoint_url(base, path),
        &request_body(api, model, req),
        start,
        &mut outcome,
    )
    .await;
    outcome.e2e = start.elapsed();
    outcome.error = result.err();
    outcome
}

async fn stream(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    start: Instant,
    out: &mut Outcome,
) -> Result<(), ErrorKind> {
    let mut resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    if !resp.status().is_success() {
        return Err(ErrorKind::Http(resp.status().as_u16()));
    }
    let mut decoder = SseDecoder::new();
    let mut done = false;
    // Read to the end even after `[DONE]`, so the connection goes back to the pool.
    loop {
        let (events, eof) = match resp.chunk().await.map_err(|e| classify(&e))? {
            Some(bytes) => (decoder.feed(&bytes), false),
            None => (decoder.finish(), true),
        };
        for data in events {
            match parse_chunk(&data).map_err(|_| ErrorKind::BadStream)? {
                Chunk::Done => done = true,
                Chunk::Error(_) => return Err(ErrorKind::BadStream),
                Chunk::Data { content, usage } => {
                    if !content.is_empty() {
                        out.content_chunks += 1;
                        out.ttft.get_or_insert_with(|| start.elapsed());
                    }
                    if usage.is_some() {
                        out.usage = usage;
                    }
                }
            }
        }
        if eof {
            break;
        }
    }
    if !done || out.ttft.is_none() {
        return Err(ErrorKind::BadStream);
    }
    Ok(())
}
