//! End-to-end harness for the proxy-wasm filter: the real Envoy loading the built module with
//! the shipped `envoy/envoy-wasm.yaml` (re-addressed), in front of `kvroute-sim` engines.
//! Every process is killed when its handle drops; output goes to `target/e2e-logs/wasm/<test>/`.

pub mod admin;
pub mod client;
pub mod envoy;
pub mod paths;
pub mod process;
pub mod sim;
pub mod workload;

pub use admin::FakeAdmin;
pub use client::{Reply, chat_body, client, completion_body, post};
pub use envoy::{Envoy, EnvoyOptions};
pub use sim::Sim;

/// The model every simulated engine serves.
pub const MODEL: &str = "qwen3-0.6b";
