//! Engine metrics scraping against a fake engine `/metrics`.

mod common;

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt;
use common::{FakeWorker, config, start, wait_until};
use kvroute::server::Running;
use kvroute_core::LoadReport;

const VLLM_PAGE: &str = "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 5.0\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.4375\n";

/// A fake engine: `/health` always 200, `/metrics` with a settable page, status and delay.
struct FakeEngine {
    addr: std::net::SocketAddr,
    page: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl FakeEngine {
    async fn start() -> FakeEngine {
        let page = Arc::new(Mutex::new(VLLM_PAGE.to_owned()));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (p, s, d) = (page.clone(), status.clone(), delay_ms.clone());
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (p, s, d) = (p.clone(), s.clone(), d.clone());
                    async move {
                        let delay = d.load(Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let status = axum::http::StatusCode::from_u16(s.load(Ordering::Relaxed))
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                        (status, p.lock().unwrap().clone())
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeEngine {
            addr,
            page,
            status,
            delay_ms,
        }
    }
}

fn load_of(running: &Running) -> Option<LoadReport> {
    running.shared.router().workers().iter().next()?.load
}

async fn start_with(
    engine: &FakeEngine,
    tweak: impl FnOnce(&mut kvroute::config::Config),
) -> Running {
    // The worker list is built from a FakeWorker-shaped address; only the address matters.
    let placeholder = FakeWorker {
        addr: engine.addr,
        health_status: Arc::new(AtomicU16::new(200)),
    };
    let mut cfg = config(&[&placeholder]);
    cfg.workers[0].models = vec!["m".into()];
    cfg.scrape.interval_ms = 20;
    tweak(&mut cfg);
    start(cfg, 1).await
}

#[tokio::test]
async fn scraped_load_reaches_the_router_and_failures_clear_it() {
    let engine = FakeEngine::start().await;
    let running = start_with(&engine, |_| {}).await;
    wait_until(|| async { load_of(&running).is_some() }).await;
    let l = load_of(&running).unwrap();
    assert_eq!((l.waiting, l.running), (5, 3));
    assert!((l.kv_cache_usage - 0.4375).abs() < 1e-6);

    // New values are picked up.
    *engine.page.lock().unwrap() = VLLM_PAGE.replace("} 5.0", "} 9.0");
    wait_until(|| async { load_of(&running).is_some_and(|l| l.waiting == 9) }).await;
    let text = running.shared.metrics.encode(&running.shared.router());
    let line = format!(
        "kvroute_worker_engine_waiting{{worker=\"{}\"}} 9",
        engine.addr
    );
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("kvroute_worker_engine_kv_cache_usage{"),
        "{text}"
    );

    // A failing scrape clears the load: policies fall back to in-flight counts.
    engine.status.store(500, Ordering::Relaxed);
    wait_until(|| async { load_of(&running).is_none() }).await;
    assert!(running.shared.metrics.scrape.count("status") >= 1);

    // A page without load metrics clears it too.
    engine.status.store(200, Ordering::Relaxed);
    wait_until(|| async { load_of(&running).is_some() }).await;
    *engine.page.lock().unwrap() = "process_cpu_seconds_total 1\n".into();
    wait_until(|| async { load_of(&running).is_none() }).await;
    assert!(running.shared.metrics.scrape.count("no_load") >= 1);
    assert!(running.shared.metrics.scrape.count("ok") >= 2);

    let text = running.shared.metrics.encode(&running.shared.router());
    assert!(
        text.contains("kvroute_scrapes_total{outcome=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("kvroute_scrape_duration_seconds_count"),
        "{text}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_report_older_than_stale_after_is_dropped_while_a_scrape_hangs() {
    let engine = FakeEngine::start().await;
    let running = start_with(&engine, |c| {
        c.scrape.stale_after_ms = 300;
        c.scrape.timeout_ms = 10_000;
    })
    .await;
    wait_until(|| async { load_of(&running).is_some() }).await;
    // Scrapes now take far longer than stale_after_ms, but finish within the timeout.
    engine.delay_ms.store(5_000, Ordering::Relaxed);
    wait_until(|| async { load_of(&running).is_none() }).await;
    let text = running.shared.metrics.encode(&running.shared.router());
    assert!(
        !text.contains("kvroute_scrape_stale_reports_total 0\n"),
        "{text}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn disabled_scraping_never_reports_load() {
    let engine = FakeEngine::start().await;
    let running = start_with(&engine, |c| c.scrape.enabled = false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load_of(&running).is_none());
    assert_eq!(running.shared.metrics.scrape.count("ok"), 0);
    running.shutdown().await;
}
