//! `kvroute-bench`: drives shared-prefix LLM traffic through OpenAI-compatible gateways and
//! reports what users notice: time to first token, latency, throughput and prefix-cache hits
//! (measured by the engines, reported to the client, and the oracle of perfect routing).

pub mod cli;
pub mod client;
pub mod engines;
pub mod envoy_config;
pub mod explain;
pub mod oracle;
pub mod overhead;
pub mod plot;
pub mod progress;
pub mod prom;
pub mod report;
pub mod runner;
pub mod sse;
pub mod stats;
pub mod text;
pub mod workload;
