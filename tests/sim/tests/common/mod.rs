//! Helpers shared by the integration tests: in-process servers, SSE reading and
//! a strict parser of the Prometheus text format.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kvroute_sim::{EngineKind, RunningSim, SimConfig};
use serde_json::Value;

/// A fast configuration: tiny simulated costs unless a test overrides them.
pub fn fast_config(engine: EngineKind) -> SimConfig {
    SimConfig {
        engine,
        models: vec!["sim-model".to_string()],
        prefill_overhead_ms: 0.5,
        prefill_us_per_token: 1.0,
        decode_us_per_token: 100.0,
        load_factor: 0.0,
        ..SimConfig::default()
    }
}

/// Starts a simulator on a free port.
pub async fn start(cfg: SimConfig) -> RunningSim {
    kvroute_sim::spawn("127.0.0.1:0", cfg)
        .await
        .expect("simulator binds a free port")
}

/// A keep-alive HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client builds")
}

/// POSTs JSON and returns status and parsed body.
pub async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.expect("request sent");
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.expect("json body");
    (status, v)
}

/// Reads a whole SSE body and returns the `data:` payloads in order (including `[DONE]`),
/// checking the `data: ...\n\n` framing.
pub async fn sse_events(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.expect("sse body");
    assert!(text.ends_with("\n\n"), "SSE body ends with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is a data line: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Streams a request and returns (time to the first body chunk, all data payloads).
pub async fn timed_stream(c: &reqwest::Client, url: &str, body: &Value) -> (Duration, Vec<String>) {
    let t0 = Instant::now();
    let mut r = c.post(url).json(body).send().await.expect("request sent");
    assert_eq!(r.status().as_u16(), 200);
    let mut text = String::new();
    let first = r
        .chunk()
        .await
        .expect("first chunk")
        .expect("non-empty body");
    let ttft = t0.elapsed();
    text.push_str(&String::from_utf8_lossy(&first));
    while let Some(c) = r.chunk().await.expect("chunk") {
        text.push_str(&String::from_utf8_lossy(&c));
    }
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_start_matches("data: ").to_string())
        .collect();
    (ttft, events)
}

/// One parsed sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: metric family types and samples.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Sum of the samples named `name` whose labels include `with`.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses Prometheus text format 0.0.4 strictly enough to catch malformed output:
/// every sample belongs to a declared family whose type matches its suffix.
pub fn parse_prometheus(text: &str) -> Exposition {
    let mut exp = Exposition::default();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has name and kind");
            assert!(valid_name(name), "metric name {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "type {kind:?}"
            );
            assert!(
                exp.types
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value {v:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(valid_name(name), "sample name {name:?}");
        let mut map = HashMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
            assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        let family = exp
            .types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no TYPE"))
            .clone();
        if name != family {
            assert_eq!(exp.types[&family], "histogram", "suffix only on histograms");
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    exp
}

/// Fetches and parses `/metrics`.
pub async fn scrape(c: &reqwest::Client, base: &str) -> Exposition {
    let r = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics request");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    parse_prometheus(&r.text().await.expect("metrics body"))
}

/// Median of durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
