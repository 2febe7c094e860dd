//! A small Prometheus text-format parser and the engine counters the benchmark reads.

use std::collections::HashMap;

use serde::Serialize;

/// Metric samples by name, summed over all label sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(HashMap<String, f64>);

impl Samples {
    /// Sum of all samples named `name`, if any was present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
}

/// Parses Prometheus text exposition: `name{labels} value [timestamp]` lines; comments, blank
/// and malformed lines are skipped; samples with the same name are summed over their labels.
pub fn parse(text: &str) -> Samples {
    let mut map: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some((name, value)) = parse_line(line) {
            *map.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    Samples(map)
}

fn parse_line(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        rest = &rest[label_block_end(rest)?..];
    }
    let value = rest.split_whitespace().next()?;
    Some((name, parse_value(value)?))
}

/// Byte offset just past the `}` closing the label block that `s` starts with.
fn label_block_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// The engine families whose metrics are understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM names (`vllm:*`).
    Vllm,
    /// SGLang names (`sglang:*`).
    Sglang,
}

impl EngineKind {
    /// Path of the engine's prefix-cache flush endpoint (POST).
    pub fn flush_path(self) -> &'static str {
        match self {
            EngineKind::Vllm => "/reset_prefix_cache",
            EngineKind::Sglang => "/flush_cache",
        }
    }
}

/// Cumulative counters of one engine at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EngineCounters {
    /// Detected engine family (`None` if neither family's counters are exposed).
    pub kind: Option<EngineKind>,
    /// Prompt tokens found in the prefix cache.
    pub cache_hit_tokens: f64,
    /// Prompt tokens looked up in the prefix cache.
    pub cache_query_tokens: f64,
    /// Requests the engine has finished.
    pub requests: f64,
}

impl EngineCounters {
    /// Reads vLLM's or SGLang's counters from parsed samples.
    pub fn from_samples(s: &Samples) -> Self {
        if let Some(queries) = s.get("vllm:prefix_cache_queries_total") {
            EngineCounters {
                kind: Some(EngineKind::Vllm),
                cache_hit_tokens: s.get("vllm:prefix_cache_hits_total").unwrap_or(0.0),
                cache_query_tokens: queries,
                requests: s.get("vllm:request_success_total").unwrap_or(0.0),
            }
        } else if let Some(prompt) = s.get("sglang:prompt_tokens_total") {
            EngineCounters {
                kind: Some(EngineKind::Sglang),
                cache_hit_tokens: s.get("sglang:cached_tokens_total").unwrap_or(0.0),
                cache_query_tokens: prompt,
                requests: s.get("sglang:num_requests_total").unwrap_or(0.0),
            }
        } else {
            EngineCounters::default()
        }
    }

    /// Counter increase from `before` to `self` (negative differences, from a restart, clamp to 0).
    pub fn delta_since(&self, before: &EngineCounters) -> EngineCounters {
        EngineCounters {
            kind: self.kind.or(before.kind),
            cache_hit_tokens: (self.cache_hit_tokens - before.cache_hit_tokens).max(0.0),
            cache_query_tokens: (self.cache_query_tokens - before.cache_query_tokens).max(0.0),
            requests: (self.requests - before.requests).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_quotes_braces_and_timestamps() {
        let text = "# HELP x help text\n# TYPE x counter\n\
            x{a=\"}{ \\\" y\",b=\"2\"} 3 1700000000000\n\
            x 4\n\
            y_bucket{le=\"+Inf\"} +Inf\n\
            broken{a=\"1\" 5\n\
            z NaN\n\
            \n";
        let s = parse(text);
        assert_eq!(s.get("x"), Some(7.0));
        assert_eq!(s.get("y_bucket"), Some(f64::INFINITY));
        assert_eq!(s.get("broken"), None);
        assert!(s.get("z").is_some_and(f64::is_nan));
        assert_eq!(s.get("missing"), None);
    }
}
