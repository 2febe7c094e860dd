//! Envoy reaches kvroute over mutual TLS: the kvroute cluster gets a TLS `transport_socket`
//! with a client certificate, kvroute requires one, and routing works as over plaintext.

use std::collections::BTreeSet;
use std::time::Duration;

use kvroute_e2e::openai::{completion_body, sim_id};
use kvroute_e2e::{MODEL, Stack};

#[tokio::test]
async fn envoy_routes_through_kvroute_over_mutual_tls() -> anyhow::Result<()> {
    let stack = Stack::builder("envoy_routes_through_kvroute_over_mutual_tls")
        .engines(2)
        .policy("round_robin")
        .kvroute_tls()
        .start()
        .await?;
    // Envoy sends traffic to kvroute once its gRPC health check (over mutual TLS) passes.
    let mut healthy = false;
    for _ in 0..150 {
        if stack.envoy_cluster_healthy("kvroute").await? {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ssl_stats = stack
        .client()
        .get(stack.envoy_admin_url("/stats?filter=cluster.kvroute.ssl"))
        .send()
        .await?
        .text()
        .await?;
    anyhow::ensure!(
        healthy,
        "Envoy never saw kvroute healthy over TLS: {ssl_stats}"
    );
    let mut engines = BTreeSet::new();
    for i in 0..6 {
        let resp = stack
            .post(
                "/v1/completions",
                &completion_body(MODEL, &format!("tls {i}"), false, 2),
            )
            .await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        engines.insert(sim_id(&resp));
    }
    anyhow::ensure!(engines.len() == 2, "served by {engines:?}");
    // The requests were decided by kvroute (not fail-open round robin): its decision counter
    // moved, and Envoy's TLS handshakes to the kvroute cluster succeeded.
    let decisions = stack.kvroute_metric("kvroute_decisions_total", &[]).await?;
    anyhow::ensure!(decisions >= 6.0, "kvroute decided {decisions} requests");
    let stats = stack
        .client()
        .get(stack.envoy_admin_url("/stats?filter=cluster.kvroute.ssl.handshake"))
        .send()
        .await?
        .text()
        .await?;
    let handshakes: f64 = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cluster.kvroute.ssl.handshake: "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    anyhow::ensure!(handshakes >= 1.0, "no TLS handshake to kvroute: {stats}");
    Ok(())
}
