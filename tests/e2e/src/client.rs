//! The HTTP client of the tests.

use std::time::Duration;

use anyhow::Context;

/// A keep-alive HTTP client (HTTP/2 prior knowledge when `http2`).
pub fn http_client(http2: bool) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    let builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder
    };
    builder.build().context("cannot build the HTTP client")
}
