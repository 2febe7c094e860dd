//! Prometheus parsing on real-format vLLM and SGLang metrics.

use kvroute_bench::prom::{EngineCounters, EngineKind, parse};

const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 24576.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7446e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 20480.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 16.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 16.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="4096",prefix_caching_hash_algo="builtin"} 1.0
"#;

const SGLANG: &str = r#"# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 8.128902e+06
# HELP sglang:cached_tokens_total Number of cached prompt tokens.
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 7.0e+06
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 3000.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="Qwen/Qwen2.5-7B-Instruct"} 0.86
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
"#;

#[test]
fn vllm_counters() {
    let s = parse(VLLM);
    assert_eq!(s.get("vllm:time_to_first_token_seconds_bucket"), Some(16.0));
    assert_eq!(s.get("vllm:num_requests_running"), Some(2.0));
    let c = EngineCounters::from_samples(&s);
    assert_eq!(c.kind, Some(EngineKind::Vllm));
    assert_eq!(c.cache_query_tokens, 24576.0);
    assert_eq!(c.cache_hit_tokens, 20480.0);
    assert_eq!(c.requests, 16.0);
}

#[test]
fn sglang_counters() {
    let c = EngineCounters::from_samples(&parse(SGLANG));
    assert_eq!(c.kind, Some(EngineKind::Sglang));
    assert_eq!(c.cache_query_tokens, 8_128_902.0);
    assert_eq!(c.cache_hit_tokens, 7_000_000.0);
    assert_eq!(c.requests, 3000.0);
    assert_eq!(EngineKind::Sglang.flush_path(), "/flush_cache");
}

#[test]
fn deltas_and_unknown_engines() {
    let before = EngineCounters::from_samples(&parse(VLLM));
    let later = VLLM
        .replace("} 24576.0", "} 30000.0")
        .replace("} 20480.0", "} 25000.0")
        .replace("} 6.0", "} 9.0");
    let d = EngineCounters::from_samples(&parse(&later)).delta_since(&before);
    assert_eq!(
        (d.cache_query_tokens, d.cache_hit_tokens, d.requests),
        (5424.0, 4520.0, 3.0)
    );
    // A restarted engine (counters went down) gives no negative delta.
    assert_eq!(
        before
            .delta_since(&EngineCounters::from_samples(&parse(&later)))
            .requests,
        0.0
    );
    let none = EngineCounters::from_samples(&parse("up 1\n"));
    assert_eq!(none.kind, None);
}
