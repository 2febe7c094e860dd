//! Prometheus text exposition of the engine counters, named like vLLM or SGLang.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::config::EngineKind;
use crate::engine::{Engine, FinishReason};

/// vLLM's buckets for `vllm:time_to_first_token_seconds`.
pub const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// SGLang's buckets for `sglang:time_to_first_token_seconds`.
pub const SGLANG_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    15.0, 20.0, 25.0, 30.0,
];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending; `+Inf` is implicit).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        for (bound, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *bound {
                *c += 1;
            }
        }
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Formats a sample value the way the Python client does (`1.0`, `0.25`, `+Inf`).
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v:?}")
    }
}

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Writer {
    out: String,
    labels: String,
}

impl Writer {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &str, v: f64) {
        let sep = if extra.is_empty() { "" } else { "," };
        let _ = writeln!(self.out, "{name}{{{}{sep}{extra}}} {}", self.labels, num(v));
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.header(name, kind, help);
        self.sample(name, "", v);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        for (bound, c) in h.bounds.iter().zip(&h.counts) {
            self.sample(
                &format!("{name}_bucket"),
                &format!("le=\"{}\"", num(*bound)),
                *c as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), "le=\"+Inf\"", h.count as f64);
        self.sample(&format!("{name}_count"), "", h.count as f64);
        self.sample(&format!("{name}_sum"), "", h.sum);
    }
}

/// Renders `/metrics` for the engine's dialect.
pub fn render(engine: &Engine) -> String {
    match engine.cfg.engine {
        EngineKind::Vllm => render_vllm(engine),
        EngineKind::Sglang => render_sglang(engine),
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

fn render_vllm(e: &Engine) -> String {
    let s = &e.stats;
    let model = esc(e.cfg.primary_model());
    let mut w = Writer {
        out: String::with_capacity(8192),
        labels: format!("engine=\"0\",model_name=\"{model}\""),
    };
    w.single(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        load(&s.running),
    );
    w.single(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        load(&s.waiting),
    );
    w.single(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        e.kv_usage(),
    );
    w.single(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        load(&s.prefix_queries),
    );
    w.single(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        load(&s.prefix_hits),
    );
    w.single(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        load(&s.prompt_tokens),
    );
    w.single(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        load(&s.generation_tokens),
    );
    w.header(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
    );
    for reason in [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
    ] {
        w.sample(
            "vllm:request_success_total",
            &format!("finished_reason=\"{}\"", reason.as_str()),
            s.finished(reason) as f64,
        );
    }
    let ttft = s.ttft().clone();
    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &ttft,
    );
    w.header(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
    );
    let info = format!(
        "block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",\
         gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"0\",num_gpu_blocks=\"{}\"",
        e.cfg.block_size, e.cfg.kv_blocks
    );
    let _ = writeln!(w.out, "vllm:cache_config_info{{{info},engine=\"0\"}} 1.0");
    w.out
}

fn render_sglang(e: &Engine) -> String {
    let s = &e.stats;
    let model = esc(e.cfg.primary_model());
    let mut w = Writer {
        out: String::with_capacity(8192),
        labels: format!(
            "engine_type=\"unified\",model_name=\"{model}\",pp_rank=\"0\",tp_rank=\"0\""
        ),
    };
    let prompt = load(&s.prompt_tokens);
    let cached = load(&s.prefix_hits);
    w.single(
        "sglang:num_running_reqs",
        "gauge",
        "The number of running requests.",
        load(&s.running),
    );
    w.single(
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        load(&s.waiting),
    );
    w.single(
        "sglang:token_usage",
        "gauge",
        "The token usage.",
        e.kv_usage(),
    );
    w.single(
        "sglang:cache_hit_rate",
        "gauge",
        "The prefix cache hit rate.",
        if prompt > 0.0 { cached / prompt } else { 0.0 },
    );
    w.single(
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        prompt,
    );
    w.single(
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        load(&s.generation_tokens),
    );
    w.single(
        "sglang:cached_tokens_total",
        "counter",
        "Number of cached prompt tokens.",
        cached,
    );
    let finished: u64 = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
    ]
    .iter()
    .map(|r| s.finished(*r))
    .sum();
    w.single(
        "sglang:num_requests_total",
        "counter",
        "Number of requests processed.",
        finished as f64,
    );
    let ttft = s.ttft().clone();
    w.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &ttft,
    );
    w.header(
        "sglang:cache_config_info",
        "gauge",
        "Information of the cache configuration.",
    );
    let _ = writeln!(
        w.out,
        "sglang:cache_config_info{{{},num_pages=\"{}\",page_size=\"{}\"}} 1.0",
        w.labels, e.cfg.kv_blocks, e.cfg.block_size
    );
    w.out
}
