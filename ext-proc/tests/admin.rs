//! Admin API, health checks, metrics and gRPC health of an in-process kvroute.

mod common;

use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use kvroute::config::Config;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn admin_adds_drains_and_removes_workers() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    let client = reqwest::Client::new();

    // Add: new workers start unhealthy and become healthy after their first probe.
    let resp = client
        .post(admin_url(&running, "/workers"))
        .json(&serde_json::json!({"address": format!("http://{}", w2.addr), "engine": "sglang"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let added: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(added["address"], w2.addr.to_string());
    assert_eq!(added["engine"], "sglang");
    wait_until(|| async {
        workers(&running)
            .await
            .iter()
            .filter(|w| w["healthy"] == true)
            .count()
            == 2
    })
    .await;

    // Update keeps it.
    let resp = client
        .post(admin_url(&running, "/workers"))
        .json(&serde_json::json!({"address": w2.addr.to_string(), "models": ["m"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Bad specs are refused.
    let resp = client
        .post(admin_url(&running, "/workers"))
        .json(&serde_json::json!({"address": "not-an-address"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Drain w1: every request goes to w2.
    let resp = client
        .post(admin_url(&running, &format!("/workers/{}/drain", w1.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let w1_view = workers(&running)
        .await
        .into_iter()
        .find(|w| w["address"] == w1.addr.to_string())
        .unwrap();
    assert_eq!(w1_view["draining"], true);
    for _ in 0..5 {
        let mut s = Session::open(&running).await;
        s.send(request_headers(
            "POST",
            "/v1/completions",
            &[],
            false,
            BodySendMode::FullDuplexStreamed,
            None,
        ))
        .await;
        s.send(request_body(COMPLETION, true)).await;
        let r = s.recv().await;
        let dbg = format!("{r:?}");
        assert!(dbg.contains(&w2.addr.to_string()));
        assert!(
            !dbg.contains(&w1.addr.to_string()),
            "a draining worker is never listed"
        );
    }

    // Remove w2, then w1: 404 for unknown ones.
    let resp = client
        .delete(admin_url(&running, &format!("/workers/{}", w2.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = client
        .delete(admin_url(&running, &format!("/workers/{}", w2.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let left = workers(&running).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["address"], w1.addr.to_string());
    // Only a draining worker is left: not ready.
    let resp = client
        .get(admin_url(&running, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    running.shutdown().await;
}

#[tokio::test]
async fn admin_token_is_required_when_set() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.admin_token = Some("s3cret".into());
    let running = kvroute::server::start(cfg).await.unwrap();
    let client = reqwest::Client::new();
    let url = admin_url(&running, "/workers");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let healthz = client
        .get(admin_url(&running, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    running.shutdown().await;
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let mut cfg = Config {
        admin_addr: "0.0.0.0:0".parse().unwrap(),
        ..Config::default()
    };
    assert!(cfg.validate().is_err());
    cfg.admin_token = Some("t".into());
    assert!(cfg.validate().is_ok());
}

#[tokio::test]
async fn health_check_flips_a_failing_worker_within_two_intervals() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.health.interval_ms = 200;
    let running = start(cfg, 1).await;
    w1.set_health(500);
    let t0 = Instant::now();
    wait_until(|| async { workers(&running).await[0]["healthy"] == false }).await;
    // Two intervals plus generous slack for a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_millis(2 * 200 + 1500),
        "took {:?}",
        t0.elapsed()
    );
    w1.set_health(204);
    wait_until(|| async { workers(&running).await[0]["healthy"] == true }).await;
    running.shutdown().await;
}

#[tokio::test]
async fn grpc_health_reports_liveness_readiness_and_ext_proc() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    for service in [
        "liveness",
        "readiness",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    ] {
        let r = client.check(status(service)).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    w1.set_health(503);
    let mut ready = true;
    for _ in 0..250 {
        let r = client
            .check(status("readiness"))
            .await
            .unwrap()
            .into_inner();
        ready = r.status == ServingStatus::Serving as i32;
        if !ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!ready, "readiness must drop with the last healthy worker");
    let r = client.check(status("liveness")).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    running.shutdown().await;
}

/// Parses Prometheus/OpenMetrics text: every sample line is `name{labels} value`.
fn parse_samples(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("numeric value");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_text_parses_and_counts_decisions() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    wait_until(|| async { workers(&running).await[0]["models"][0] == "m" }).await;
    // Sessions stay open (requests in flight) until the metrics are read.
    let mut open = Vec::new();
    for body in [COMPLETION, br#"{"model":"nope","prompt":"x"}"#.as_slice()] {
        let mut s = Session::open(&running).await;
        s.send(request_headers(
            "POST",
            "/v1/completions",
            &[],
            false,
            BodySendMode::FullDuplexStreamed,
            None,
        ))
        .await;
        s.send(request_body(body, true)).await;
        let _ = s.recv().await;
        open.push(s);
    }
    let text = reqwest::get(admin_url(&running, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_samples(&text);
    let value = |prefix: &str| {
        samples
            .iter()
            .filter(|(s, _)| s.starts_with(prefix))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!(
        value("kvroute_decisions_total{policy=\"cache_aware\",outcome=\"forwarded\"}"),
        1.0
    );
    assert_eq!(
        value("kvroute_decisions_total{policy=\"\",outcome=\"4xx\"}"),
        1.0
    );
    assert_eq!(value("kvroute_decision_duration_seconds_count"), 2.0);
    assert_eq!(value("kvroute_requests_in_flight"), 1.0);
    assert_eq!(
        value(&format!("kvroute_worker_healthy{{worker=\"{}\"}}", w1.addr)),
        1.0
    );
    assert_eq!(
        value(&format!(
            "kvroute_worker_in_flight{{worker=\"{}\"}}",
            w1.addr
        )),
        1.0
    );
    assert!(text.contains("kvroute_prefix_match_ratio"));
    drop(open);
    running.shutdown().await;
}
