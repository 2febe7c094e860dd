//! The load itself: request bodies of a given size, and batches of requests sent with a fixed
//! number of requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::ErrorKind;
use crate::text::{derive_seed, synthetic_text};

/// Distinct shared prefixes the prompts are built from (a shared-prefix mix, as a router sees).
pub const PREFIXES: usize = 16;
/// Bytes of the unique tail that ends every prompt.
const TAIL_BYTES: usize = 12;

/// Builds `/v1/completions` bodies whose prompt is exactly `prompt_bytes` long: one of
/// [`PREFIXES`] pseudo-word prefixes plus a unique numbered tail. One output token.
#[derive(Debug)]
pub struct Bodies {
    head: String,
    tail: String,
    prefixes: Vec<String>,
    next: AtomicU64,
}

impl Bodies {
    /// Bodies for `model` with prompts of `prompt_bytes` bytes (at least the tail's length).
    pub fn new(model: &str, prompt_bytes: usize, stream: bool, seed: u64) -> Bodies {
        let prefix_len = prompt_bytes.saturating_sub(TAIL_BYTES);
        let prefixes = (0..PREFIXES as u64)
            .map(|i| synthetic_text(derive_seed(seed, "overhead", i), prefix_len, 1))
            .collect();
        let model = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned());
        Bodies {
            head: format!("{{\"model\":{model},\"prompt\":\""),
            tail: format!(
                "\",\"max_tokens\":1,\"temperature\":0,\"ignore_eos\":true,\"stream\":{stream}}}"
            ),
            prefixes,
            next: AtomicU64::new(0),
        }
    }

    /// The next body: prefixes in turn, each prompt unique.
    pub fn next(&self) -> Bytes {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let prefix = &self.prefixes[(n % PREFIXES as u64) as usize];
        let unique = format!("{:>width$}", n % 10u64.pow(11), width = TAIL_BYTES);
        let mut out = Vec::with_capacity(self.head.len() + prefix.len() + 32 + self.tail.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(unique.as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
        Bytes::from(out)
    }
}

/// What one batch measured.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Latency of every successful request, milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Failures by kind.
    pub errors: Vec<ErrorKind>,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

/// Sends `n` requests to `url` with `concurrency` in flight (closed loop) and times each, from
/// sending to the last byte of the response.
pub async fn batch(
    client: &reqwest::Client,
    url: &str,
    bodies: &Arc<Bodies>,
    n: usize,
    concurrency: usize,
) -> BatchResult {
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (client, url, bodies, issued) = (
            client.clone(),
            url.to_owned(),
            bodies.clone(),
            issued.clone(),
        );
        set.spawn(async move {
            let mut out = BatchResult::default();
            while issued.fetch_add(1, Ordering::Relaxed) < n {
                let body = bodies.next();
                let t = Instant::now();
                match one(&client, &url, body).await {
                    Ok(()) => out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(kind) => out.errors.push(kind),
                }
            }
            out
        });
    }
    let mut total = BatchResult::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(part) => {
                total.latencies_ms.extend(part.latencies_ms);
                total.errors.extend(part.errors);
            }
            Err(_) => total.errors.push(ErrorKind::Other),
        }
    }
    total.elapsed = started.elapsed();
    total
}

async fn one(client: &reqwest::Client, url: &str, body: Bytes) -> Result<(), ErrorKind> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let status = resp.status();
    // Read the whole body either way, so the connection goes back to the pool.
    resp.bytes().await.map_err(|e| classify(&e))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(ErrorKind::Http(status.as_u16()))
    }
}

fn classify(err: &reqwest::Error) -> ErrorKind {
    if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_prompt_size_and_are_unique() {
        let bodies = Bodies::new("m", 1024, false, 7);
        let a: serde_json::Value = serde_json::from_slice(&bodies.next()).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&bodies.next()).unwrap();
        let (pa, pb) = (a["prompt"].as_str().unwrap(), b["prompt"].as_str().unwrap());
        assert_eq!(pa.len(), 1024);
        assert_eq!(pb.len(), 1024);
        assert_ne!(pa, pb);
        assert_eq!(a["model"], "m");
        assert_eq!(a["max_tokens"], 1);
        assert_eq!(a["stream"], false);
        // Every PREFIXES-th body shares the first one's prefix.
        for _ in 2..PREFIXES {
            bodies.next();
        }
        let c: serde_json::Value = serde_json::from_slice(&bodies.next()).unwrap();
        let pc = c["prompt"].as_str().unwrap();
        assert_eq!(pc[..1000], pa[..1000]);
        assert_ne!(pc, pa);
    }
}
