//! OpenAI request bodies, SSE reading and Prometheus text helpers for the tests.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Response header naming the engine that answered.
pub const SIM_ID_HEADER: &str = "x-kvroute-sim-id";
/// The destination header of the endpoint-picker protocol.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";

/// A chat completion request with one user message.
pub fn chat_body(model: &str, prompt: &str, stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{ "role": "user", "content": prompt }],
        "stream": stream,
        "max_tokens": max_tokens,
    })
}

/// A chat completion request with a system prompt and a user message.
pub fn chat_with_system(
    model: &str,
    system: &str,
    user: &str,
    stream: bool,
    max_tokens: u32,
) -> Value {
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": system },
            { "role": "user", "content": user },
        ],
        "stream": stream,
        "max_tokens": max_tokens,
    })
}

/// A text completion request.
pub fn completion_body(model: &str, prompt: &str, stream: bool, max_tokens: u32) -> Value {
    json!({ "model": model, "prompt": prompt, "stream": stream, "max_tokens": max_tokens })
}

/// The `x-kvroute-sim-id` of a response (empty when absent).
pub fn sim_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(SIM_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `usage.prompt_tokens_details.cached_tokens` of a response body (0 when absent).
pub fn cached_tokens(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
}

/// Reads a whole SSE response: the JSON of every `data:` frame before `data: [DONE]`.
/// Fails if the stream ends without `[DONE]`.
pub async fn read_sse(resp: reqwest::Response) -> anyhow::Result<Vec<Value>> {
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("SSE stream broke")?);
        while let Some(end) = find_frame_end(&buf) {
            let frame: Vec<u8> = buf.drain(..end).collect();
            let frame = String::from_utf8_lossy(&frame);
            for line in frame.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(events);
                }
                events.push(
                    serde_json::from_str(data).with_context(|| format!("bad SSE data {data:?}"))?,
                );
            }
        }
    }
    bail!(
        "SSE stream ended without [DONE] after {} events",
        events.len()
    )
}

/// Index just past the first blank line (`\n\n`) in `buf`.
fn find_frame_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Concatenated generated text of chat or completion chunks.
pub fn sse_text(events: &[Value]) -> String {
    events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| {
            c["delta"]["content"]
                .as_str()
                .or_else(|| c["text"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Sum of all samples of metric `name` in Prometheus text format.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    metric_sum_matching(text, name, &[])
}

/// Sum of the samples of metric `name` whose labels include every `labels` pair.
pub fn metric_sum_matching(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.find('}')?;
                (&inner[..end], &inner[end + 1..])
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            let wanted = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair.trim() == format!("{k}=\"{v}\""))
            });
            if !wanted {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}
