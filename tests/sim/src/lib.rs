//! `kvroute-sim`: a stand-in for a GPU inference engine. It speaks vLLM's or
//! SGLang's HTTP API (OpenAI routes, SGLang `/generate`, health, Prometheus
//! metrics) and models a prefix-cached KV store with an
//! llm-d-inference-sim-style latency model: time to first token grows with
//! uncached prompt tokens, decode runs at a fixed inter-token latency, both
//! stretched by load, and requests beyond `--max-running` wait in a FIFO queue.

pub mod cache;
pub mod config;
pub mod engine;
pub mod errors;
pub mod fault;
pub mod kv_publisher;
pub mod metrics;
pub mod prompt;
pub mod request;
pub mod respond;
pub mod routes;
pub mod server;

pub use cache::{KvEvent, KvEventSink, NoopSink};
pub use config::{Cli, EngineKind, EventEncoding, SimConfig};
pub use server::{RunningSim, engine, serve, spawn};
