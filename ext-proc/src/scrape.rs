//! Engine metrics scraping: every worker's `/metrics`, parsed by the core into its load.
//!
//! One ticker task: on each tick (`interval_ms`, default 50 ms) it clears load reports older
//! than `stale_after_ms`, then starts one scrape per healthy vLLM/SGLang worker that is not
//! still being scraped, at most `max_concurrency` at once, over one keep-alive client. A slow
//! worker therefore never delays the others, and hundreds of workers cost `max_concurrency`
//! connections. A successful scrape records the engine's [`LoadReport`](kvroute_core::LoadReport)
//! with [`Router::set_load`](kvroute_core::Router::set_load); a failed one (timeout, connection
//! error, non-2xx status, a page without load metrics) clears it, so policies fall back to the
//! router's in-flight counts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvroute_core::engine_metrics::EngineMetrics;
use kvroute_core::{EngineKind, WorkerId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::state::Shared;

/// Scraping settings (the `scrape` section of the config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Scrape the engines at all.
    pub enabled: bool,
    /// Time between scrapes of one worker, in milliseconds.
    pub interval_ms: u64,
    /// Timeout of one scrape, in milliseconds.
    pub timeout_ms: u64,
    /// A load report older than this is dropped, in milliseconds.
    pub stale_after_ms: u64,
    /// Scrapes in progress at most, over all workers.
    pub max_concurrency: usize,
    /// Metrics path on the engines.
    pub path: String,
}

impl Default for ScrapeConfig {
    fn default() -> ScrapeConfig {
        ScrapeConfig {
            enabled: true,
            interval_ms: 50,
            timeout_ms: 1000,
            stale_after_ms: 2000,
            max_concurrency: 32,
            path: "/metrics".to_owned(),
        }
    }
}

impl ScrapeConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((format!("scrape.{f}"), m.to_owned()));
        if self.interval_ms < 5 {
            return err("interval_ms", "must be at least 5");
        }
        if self.timeout_ms == 0 {
            return err("timeout_ms", "must be positive");
        }
        if self.stale_after_ms < self.interval_ms {
            return err("stale_after_ms", "must be at least interval_ms");
        }
        if self.max_concurrency == 0 {
            return err("max_concurrency", "must be at least 1");
        }
        if !self.path.starts_with('/') || self.path.chars().any(char::is_whitespace) {
            return err("path", "must be an absolute path like /metrics");
        }
        Ok(())
    }
}

/// Labels of `kvroute_scrapes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeLabels {
    /// `ok`, `timeout`, `connect`, `status`, `no_load` or `other`.
    pub outcome: &'static str,
}

/// Metrics about scraping.
#[derive(Clone, Debug)]
pub struct ScrapeMetrics {
    scrapes: Family<ScrapeLabels, Counter>,
    duration: Histogram,
    stale: Counter,
}

impl Default for ScrapeMetrics {
    fn default() -> ScrapeMetrics {
        ScrapeMetrics {
            scrapes: Family::default(),
            // 0.25 ms .. ~4 s in x2 steps.
            duration: Histogram::new(exponential_buckets(2.5e-4, 2.0, 15)),
            stale: Counter::default(),
        }
    }
}

impl ScrapeMetrics {
    /// Registers every scrape metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kvroute_scrapes",
            "Engine metrics scrapes by outcome",
            self.scrapes.clone(),
        );
        registry.register(
            "kvroute_scrape_duration_seconds",
            "Time to fetch and parse one engine metrics page",
            self.duration.clone(),
        );
        registry.register(
            "kvroute_scrape_stale_reports",
            "Engine load reports dropped for being older than stale_after_ms",
            self.stale.clone(),
        );
    }

    fn record(&self, outcome: &'static str, seconds: f64) {
        self.scrapes.get_or_create(&ScrapeLabels { outcome }).inc();
        self.duration.observe(seconds);
    }

    /// Scrapes with `outcome` so far (for tests).
    pub fn count(&self, outcome: &'static str) -> u64 {
        self.scrapes.get_or_create(&ScrapeLabels { outcome }).get()
    }
}

/// Starts the scraper; `None` when disabled. Abort the handle to stop it.
pub fn spawn(shared: Arc<Shared>, config: ScrapeConfig) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !config.enabled {
        return Ok(None);
    }
    let client = crate::engine_http::client(2)?;
    let scraper = Scraper {
        shared,
        config,
        client,
        busy: Arc::new(Mutex::new(HashSet::new())),
    };
    Ok(Some(tokio::spawn(scraper.run())))
}

struct Scraper {
    shared: Arc<Shared>,
    config: ScrapeConfig,
    client: reqwest::Client,
    busy: Arc<Mutex<HashSet<WorkerId>>>,
}

impl Scraper {
    async fn run(self) {
        let sem = Arc::new(Semaphore::new(self.config.max_concurrency));
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Dropping the set (the task aborted) aborts the scrapes in progress.
        let mut tasks = JoinSet::new();
        loop {
            ticker.tick().await;
            while tasks.try_join_next().is_some() {}
            for (id, address) in self.due() {
                let Ok(permit) = Arc::clone(&sem).try_acquire_owned() else {
                    break;
                };
                lock(&self.busy).insert(id);
                let job = Job {
                    shared: Arc::clone(&self.shared),
                    client: self.client.clone(),
                    busy: Arc::clone(&self.busy),
                    url: format!("http://{address}{}", self.config.path),
                    timeout: Duration::from_millis(self.config.timeout_ms),
                    id,
                };
                tasks.spawn(async move {
                    job.run().await;
                    drop(permit);
                });
            }
        }
    }

    /// Drops stale reports and lists the workers to scrape now.
    fn due(&self) -> Vec<(WorkerId, String)> {
        let now = self.shared.now_ms();
        let busy = lock(&self.busy).clone();
        let mut router = self.shared.router();
        let mut clear = Vec::new();
        let mut due = Vec::new();
        for w in router.workers().iter() {
            let stale = w
                .load
                .is_some_and(|l| now.saturating_sub(l.observed_at_ms) > self.config.stale_after_ms);
            if stale || (w.load.is_some() && !w.healthy) {
                clear.push((w.id, stale));
            }
            if w.healthy && w.spec.engine != EngineKind::Other && !busy.contains(&w.id) {
                due.push((w.id, w.spec.address.clone()));
            }
        }
        for (id, stale) in clear {
            router.set_load(id, None);
            if stale {
                self.shared.metrics.scrape.stale.inc();
            }
        }
        due
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One scrape of one worker.
struct Job {
    shared: Arc<Shared>,
    client: reqwest::Client,
    busy: Arc<Mutex<HashSet<WorkerId>>>,
    url: String,
    timeout: Duration,
    id: WorkerId,
}

impl Job {
    async fn run(self) {
        let started = Instant::now();
        let result = self.fetch().await;
        let now = self.shared.now_ms();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(o) => o,
        };
        self.shared
            .metrics
            .scrape
            .record(outcome, started.elapsed().as_secs_f64());
        let report = result.ok().and_then(|m| m.load_report(now));
        if report.is_none() {
            debug!(url = %self.url, outcome, "engine metrics scrape failed");
        }
        self.shared.router().set_load(self.id, report);
        lock(&self.busy).remove(&self.id);
    }

    async fn fetch(&self) -> Result<EngineMetrics, &'static str> {
        let resp = self
            .client
            .get(&self.url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(classify)?;
        if !resp.status().is_success() {
            return Err("status");
        }
        let body = crate::engine_http::read_capped(resp, crate::engine_http::MAX_METRICS_BYTES)
            .await
            .map_err(|e| match e {
                crate::engine_http::ReadError::TooLarge => "too_large",
                crate::engine_http::ReadError::Failed => "other",
            })?;
        let m = EngineMetrics::parse(&String::from_utf8_lossy(&body));
        if m.has_load() { Ok(m) } else { Err("no_load") }
    }
}

fn classify(e: reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c: ScrapeConfig = serde_yaml_ng::from_str("interval_ms: 100\n").unwrap();
        assert_eq!(c.interval_ms, 100);
        assert_eq!(c.stale_after_ms, 2000);
        assert!(c.enabled);
        c.validate().unwrap();
        ScrapeConfig::default().validate().unwrap();
        assert!(serde_yaml_ng::from_str::<ScrapeConfig>("bogus: 1\n").is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            ScrapeConfig {
                interval_ms: 1,
                ..ScrapeConfig::default()
            },
            ScrapeConfig {
                timeout_ms: 0,
                ..ScrapeConfig::default()
            },
            ScrapeConfig {
                stale_after_ms: 10,
                ..ScrapeConfig::default()
            },
            ScrapeConfig {
                max_concurrency: 0,
                ..ScrapeConfig::default()
            },
            ScrapeConfig {
                path: "metrics".into(),
                ..ScrapeConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
