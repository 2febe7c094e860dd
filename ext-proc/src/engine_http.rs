//! The HTTP client kvroute uses to talk to engines (health probes, metrics scrapes).
//!
//! Engines are addressed directly: no redirects are followed (a 3xx is an answer, not a
//! pointer elsewhere), `HTTP_PROXY` and friends are ignored (a proxy would answer for every
//! engine), and response bodies are read up to a cap, so an engine cannot make kvroute
//! buffer without bound.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// Largest metrics page read, in bytes (a vLLM page with many LoRA series is ~100 KiB).
pub const MAX_METRICS_BYTES: usize = 4 << 20;
/// Largest health-check body read, in bytes; the rest is not read.
pub const MAX_HEALTH_BYTES: usize = 64 << 10;

/// A client for engine endpoints keeping at most `max_idle_per_host` idle connections.
pub fn client(max_idle_per_host: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// Why a capped read failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The body is longer than the cap.
    TooLarge,
    /// The connection failed or timed out mid-body.
    Failed,
}

/// Reads `resp`'s body, failing as soon as it passes `limit` bytes.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| ReadError::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `response` (raw HTTP) to every connection; returns the base URL.
    async fn serve(response: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&response).await;
                });
            }
        });
        url
    }

    fn response(status: &str, extra: &str, body: &[u8], chunked: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\n{extra}connection: close\r\n").into_bytes();
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for c in body.chunks(8192) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_cap_declared_or_not() {
        let c = client(1).unwrap();
        let big = vec![b'x'; 100_000];
        for chunked in [false, true] {
            let url = serve(response("200 OK", "", &big, chunked)).await;
            let resp = c.get(&url).send().await.unwrap();
            assert_eq!(read_capped(resp, 10_000).await, Err(ReadError::TooLarge));
            let resp = c.get(&url).send().await.unwrap();
            assert_eq!(read_capped(resp, 100_000).await.unwrap().len(), 100_000);
        }
    }

    #[tokio::test]
    async fn redirects_are_answers_not_pointers() {
        let target = serve(response("200 OK", "", b"ok", false)).await;
        let location = format!("location: {target}/\r\n");
        let url = serve(response("302 Found", &location, b"", false)).await;
        let resp = client(1).unwrap().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 302);
    }

    /// Re-runs this binary's `proxied_child` test with proxy variables naming a proxy that
    /// does not exist: following them would fail the child's request.
    #[test]
    fn proxy_variables_are_ignored() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "engine_http::tests::proxied_child",
                "--exact",
                "--nocapture",
            ])
            .env("KVROUTE_PROXY_CHILD", "1")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9")
            .env("ALL_PROXY", "http://127.0.0.1:9")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the child's request went through the proxy"
        );
    }

    #[tokio::test]
    async fn proxied_child() {
        if std::env::var_os("KVROUTE_PROXY_CHILD").is_none() {
            return;
        }
        let url = serve(response("200 OK", "", b"ok", false)).await;
        let resp = client(1).unwrap().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}
