//! Engine load from a Prometheus text page (vLLM and SGLang metric names).
//!
//! Sans-IO: the shell fetches `/metrics` and hands the text to [`EngineMetrics::parse`], which
//! reads it in one pass, line by line, without allocating per line. It tolerates comments,
//! `# HELP`/`# TYPE` lines, labels in any order (quoted values with escapes), timestamps,
//! `NaN`/`+Inf` values, CRLF line ends and lines it does not understand (skipped, never an
//! error). Both engines' names are recognised whatever the worker's configured kind, so a
//! mislabelled worker still reports its load.
//!
//! | signal | vLLM | SGLang |
//! |---|---|---|
//! | waiting | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` |
//! | running | `vllm:num_requests_running` | `sglang:num_running_reqs` |
//! | KV-cache use | `vllm:kv_cache_usage_perc` (older: `vllm:gpu_cache_usage_perc`) | `sglang:token_usage` |
//! | cache config | `vllm:cache_config_info{block_size,num_gpu_blocks}` | `sglang:cache_config_info{page_size,num_pages}` |
//! | LoRA | `vllm:lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters}` | none |
//!
//! A page with several series of one gauge (data-parallel ranks, several models) sums the
//! queue and running counts and averages the KV-cache use.

use std::borrow::Cow;

use crate::worker::LoadReport;

/// What one `/metrics` page says about an engine's load and cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineMetrics {
    /// Requests waiting in the engine's queue (summed over series).
    pub waiting: Option<f64>,
    /// Requests running (summed over series).
    pub running: Option<f64>,
    /// KV-cache use, 0.0..=1.0 (mean over series).
    pub kv_cache_usage: Option<f64>,
    /// Tokens per KV block (vLLM `block_size`, SGLang `page_size`).
    pub block_size: Option<u32>,
    /// KV blocks on the device (vLLM `num_gpu_blocks`, SGLang `num_pages`).
    pub num_blocks: Option<u64>,
    /// LoRA state, from the most recent `vllm:lora_requests_info` sample.
    pub lora: Option<LoraInfo>,
    kv_series: u32,
    lora_stamp: f64,
}

/// The engine's LoRA adapters (vLLM `vllm:lora_requests_info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraInfo {
    /// Adapters the engine can hold at once.
    pub max_lora: u32,
    /// Adapters of running requests.
    pub running: Vec<String>,
    /// Adapters of waiting requests.
    pub waiting: Vec<String>,
}

impl LoraInfo {
    /// Whether `adapter` is active (running or waiting) on the engine.
    pub fn has(&self, adapter: &str) -> bool {
        self.running
            .iter()
            .chain(&self.waiting)
            .any(|a| a == adapter)
    }

    /// Whether the engine can load one more adapter without evicting an active one.
    pub fn has_free_slot(&self) -> bool {
        let mut active: Vec<&str> = self
            .running
            .iter()
            .chain(&self.waiting)
            .map(String::as_str)
            .collect();
        active.sort_unstable();
        active.dedup();
        (active.len() as u64) < u64::from(self.max_lora)
    }
}

/// Which signal a metric name carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Waiting,
    Running,
    KvUsage,
    CacheConfig,
    Lora,
}

fn signal_of(name: &str) -> Option<Signal> {
    Some(match name {
        "vllm:num_requests_waiting" | "sglang:num_queue_reqs" => Signal::Waiting,
        "vllm:num_requests_running" | "sglang:num_running_reqs" => Signal::Running,
        "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" | "sglang:token_usage" => {
            Signal::KvUsage
        }
        "vllm:cache_config_info" | "sglang:cache_config_info" => Signal::CacheConfig,
        "vllm:lora_requests_info" => Signal::Lora,
        _ => return None,
    })
}

impl EngineMetrics {
    /// Reads a Prometheus text page. Unknown, malformed and non-finite samples are skipped.
    pub fn parse(text: &str) -> EngineMetrics {
        let mut m = EngineMetrics::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(sample) = Sample::parse(line) else {
                continue;
            };
            let Some(signal) = signal_of(sample.name) else {
                continue;
            };
            m.record(signal, &sample);
        }
        if let Some(kv) = m.kv_cache_usage.as_mut()
            && m.kv_series > 1
        {
            *kv /= f64::from(m.kv_series);
        }
        m
    }

    fn record(&mut self, signal: Signal, s: &Sample<'_>) {
        let v = s.value;
        match signal {
            Signal::Waiting if v.is_finite() => add(&mut self.waiting, v.max(0.0)),
            Signal::Running if v.is_finite() => add(&mut self.running, v.max(0.0)),
            Signal::KvUsage if v.is_finite() => {
                add(&mut self.kv_cache_usage, v.clamp(0.0, 1.0));
                self.kv_series += 1;
            }
            Signal::CacheConfig => {
                for (k, val) in s.labels() {
                    match k {
                        "block_size" | "page_size" => {
                            self.block_size = val.parse().ok().or(self.block_size);
                        }
                        "num_gpu_blocks" | "num_pages" => {
                            self.num_blocks = val.parse().ok().or(self.num_blocks);
                        }
                        _ => {}
                    }
                }
            }
            // The gauge's value is the sample's creation time: the largest is the current one.
            Signal::Lora if v.is_finite() && (self.lora.is_none() || v >= self.lora_stamp) => {
                let mut info = LoraInfo::default();
                for (k, val) in s.labels() {
                    match k {
                        "max_lora" => info.max_lora = val.parse().unwrap_or(0),
                        "running_lora_adapters" => info.running = split_list(&val),
                        "waiting_lora_adapters" => info.waiting = split_list(&val),
                        _ => {}
                    }
                }
                self.lora = Some(info);
                self.lora_stamp = v;
            }
            _ => {}
        }
    }

    /// Whether the page carried any load signal (waiting, running or KV use).
    pub fn has_load(&self) -> bool {
        self.waiting.is_some() || self.running.is_some() || self.kv_cache_usage.is_some()
    }

    /// The router's load report, observed at `now_ms`; `None` when the page carried no load
    /// signal (not an engine, or an engine without metrics).
    pub fn load_report(&self, now_ms: u64) -> Option<LoadReport> {
        if !self.has_load() {
            return None;
        }
        let count = |v: Option<f64>| v.map_or(0, |v| v.round().min(f64::from(u32::MAX)) as u32);
        Some(LoadReport {
            waiting: count(self.waiting),
            running: count(self.running),
            kv_cache_usage: self.kv_cache_usage.unwrap_or(0.0) as f32,
            observed_at_ms: now_ms,
        })
    }
}

fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One sample line: `name{labels} value [timestamp]`, labels kept raw.
struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = "";
        if rest.starts_with('{') {
            let close = label_block_end(rest)?;
            labels = &rest[1..close];
            rest = &rest[close + 1..];
        }
        let value = rest.split_ascii_whitespace().next()?;
        Some(Sample {
            name,
            labels,
            value: parse_value(value)?,
        })
    }

    /// The labels as `(name, unescaped value)` pairs; a malformed pair ends the list.
    fn labels(&self) -> LabelIter<'a> {
        LabelIter { rest: self.labels }
    }
}

/// Index of the `}` closing a label block that starts at `s[0] == '{'`, skipping quoted values.
fn label_block_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate().skip(1) {
        if in_quotes {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b'}' {
            return Some(i);
        }
    }
    None
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

struct LabelIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self
            .rest
            .trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut escaped = false;
        let mut has_escape = false;
        let mut end = None;
        for (i, b) in after.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => {
                    escaped = true;
                    has_escape = true;
                }
                b'"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            self.rest = "";
            return None;
        };
        let raw = &after[..end];
        self.rest = &after[end + 1..];
        let value = if has_escape {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name, value))
    }
}

/// Undoes the exposition format's label escapes (`\\`, `\"`, `\n`).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests;
