use super::*;

/// A vLLM v1 page in the layout of vLLM's own exporter (prometheus_client), trimmed.
const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4375
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters=""} 1.7321e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.7320e+09
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 123456.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 42.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",gpu_memory_utilization="0.9",num_cpu_blocks="0",num_gpu_blocks="27264"} 1.0
"#;

/// An SGLang page in the layout of SGLang's exporter, trimmed.
const SGLANG: &str = r#"# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",pp_rank="0",tp_rank="0"} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",pp_rank="0",tp_rank="0"} 7.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen3-8B",pp_rank="0",tp_rank="0"} 0.28
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{engine_type="unified",model_name="Qwen/Qwen3-8B",pp_rank="0",tp_rank="0"} 0.5
# HELP sglang:cache_config_info Information of the cache configuration.
# TYPE sglang:cache_config_info gauge
sglang:cache_config_info{engine_type="unified",model_name="Qwen/Qwen3-8B",num_pages="32768",page_size="1",pp_rank="0",tp_rank="0"} 1.0
"#;

#[test]
fn parses_a_vllm_page() {
    let m = EngineMetrics::parse(VLLM);
    assert_eq!(m.waiting, Some(5.0));
    assert_eq!(m.running, Some(3.0));
    assert_eq!(m.kv_cache_usage, Some(0.4375));
    assert_eq!(m.block_size, Some(16));
    assert_eq!(m.num_blocks, Some(27264));
    let lora = m.lora.as_ref().unwrap();
    assert_eq!(lora.max_lora, 2);
    assert_eq!(lora.running, vec!["sql-lora", "chat-lora"]);
    assert!(lora.waiting.is_empty());
    assert!(lora.has("chat-lora") && !lora.has("old"));
    assert!(!lora.has_free_slot());
    let r = m.load_report(1234).unwrap();
    assert_eq!(
        r,
        LoadReport {
            waiting: 5,
            running: 3,
            kv_cache_usage: 0.4375,
            observed_at_ms: 1234,
        }
    );
}

#[test]
fn parses_an_sglang_page() {
    let m = EngineMetrics::parse(SGLANG);
    assert_eq!(m.waiting, Some(7.0));
    assert_eq!(m.running, Some(2.0));
    assert_eq!(m.kv_cache_usage, Some(0.28));
    assert_eq!(m.block_size, Some(1));
    assert_eq!(m.num_blocks, Some(32768));
    assert!(m.lora.is_none());
    let r = m.load_report(9).unwrap();
    assert_eq!((r.waiting, r.running), (7, 2));
}

#[test]
fn sums_counts_and_averages_kv_over_series() {
    let page = "vllm:num_requests_waiting{engine=\"0\"} 2\n\
                vllm:num_requests_waiting{engine=\"1\"} 3\n\
                vllm:num_requests_running{engine=\"0\"} 1\n\
                vllm:num_requests_running{engine=\"1\"} 4\n\
                vllm:kv_cache_usage_perc{engine=\"0\"} 0.2\n\
                vllm:kv_cache_usage_perc{engine=\"1\"} 0.6\n";
    let m = EngineMetrics::parse(page);
    assert_eq!(m.waiting, Some(5.0));
    assert_eq!(m.running, Some(5.0));
    assert!((m.kv_cache_usage.unwrap() - 0.4).abs() < 1e-9);
}

#[test]
fn tolerates_timestamps_nan_crlf_escapes_and_garbage() {
    let page = "# a comment\r\n\
                \r\n\
                vllm:num_requests_waiting 4 1712345678000\r\n\
                vllm:num_requests_running{model_name=\"a \\\"quoted\\\" } name\"} NaN\r\n\
                vllm:kv_cache_usage_perc{x=\"1\"} +Inf\r\n\
                this is not a sample\r\n\
                vllm:num_requests_running{unterminated=\"x} 9\r\n\
                {} 3\r\n\
                sglang:token_usage{a=\"b\"} 1.5e-1\r\n";
    let m = EngineMetrics::parse(page);
    assert_eq!(m.waiting, Some(4.0));
    // NaN is skipped; the unterminated label block is skipped.
    assert_eq!(m.running, None);
    // +Inf is skipped too: only the SGLang series counts.
    assert!((m.kv_cache_usage.unwrap() - 0.15).abs() < 1e-9);
}

#[test]
fn label_values_are_unescaped() {
    let page = "vllm:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"a\\\\b, c\",\
                waiting_lora_adapters=\"d\\\"e\"} 5\n";
    let lora = EngineMetrics::parse(page).lora.unwrap();
    assert_eq!(lora.running, vec!["a\\b", "c"]);
    assert_eq!(lora.waiting, vec!["d\"e"]);
    assert!(!lora.has_free_slot());
    let page = "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a,a\",\
                waiting_lora_adapters=\"b\"} 5\n";
    assert!(EngineMetrics::parse(page).lora.unwrap().has_free_slot());
}

#[test]
fn a_page_without_load_gives_no_report() {
    assert_eq!(EngineMetrics::parse("").load_report(1), None);
    let other = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n";
    assert_eq!(EngineMetrics::parse(other).load_report(1), None);
    let cfg_only = "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"8\"} 1.0\n";
    let m = EngineMetrics::parse(cfg_only);
    assert_eq!((m.block_size, m.num_blocks), (Some(16), Some(8)));
    assert_eq!(m.load_report(1), None);
}

#[test]
fn negative_and_huge_counts_are_clamped() {
    let page = "vllm:num_requests_waiting -3\nvllm:num_requests_running 1e30\n";
    let r = EngineMetrics::parse(page).load_report(0).unwrap();
    assert_eq!((r.waiting, r.running), (0, u32::MAX));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let m = EngineMetrics::parse(&text);
        if let Some(r) = m.load_report(0) {
            proptest::prop_assert!((0.0..=1.0).contains(&r.kv_cache_usage));
        }
    }

    #[test]
    fn never_panics_on_near_miss_lines(
        name in "(vllm:num_requests_waiting|sglang:token_usage|vllm:lora_requests_info)",
        labels in "[{}\"=,a-z\\\\ ]{0,30}",
        value in "(1|NaN|-Inf|x|1e400| )",
    ) {
        let _ = EngineMetrics::parse(&format!("{name}{labels} {value}\n"));
    }
}
