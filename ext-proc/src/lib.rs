//! kvroute: the ext_proc endpoint picker for Envoy.
//!
//! Envoy asks this service, over the ext_proc gRPC protocol, where to send each inference
//! request. Every routing decision is taken by `kvroute-core`; this crate only translates
//! ext_proc messages, runs health checks and serves the admin API.

pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod engine_http;
pub mod extproc;
pub mod health;
pub mod kv_events;
pub mod listener;
pub mod metrics;
pub mod picker_config;
pub mod proto;
pub mod scrape;
pub mod secret;
pub mod server;
pub mod state;
pub mod tls;
pub mod zmtp;
