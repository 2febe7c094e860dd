//! End-to-end harness for the proxy-wasm filter: the real Envoy loading the built module with
//! the shipped `envoy/envoy-wasm.yaml` (re-addressed), in front of `kvroute-sim` engines.
//!
//! Process management, binary paths, engines and Envoy start-up come from the shared e2e
//! harness (`kvroute-e2e`); this crate adds the filter's config rendering, a stand-in for
//! kvroute's admin API and the shared-prefix workload. Every process is killed when its
//! handle drops; output goes to `target/e2e-logs/wasm/<test>/`.

pub mod admin;
pub mod client;
pub mod envoy;
pub mod workload;

pub use admin::FakeAdmin;
pub use client::{Reply, chat_body, completion_body, post};
pub use envoy::{EnvoyOptions, start_envoy, start_envoy_expecting_failure};
pub use kvroute_e2e::{DEFAULT_TIME_SCALE, Envoy, MODEL, Sim, http_client};

/// A fresh `<target>/e2e-logs/wasm/<test>/` directory.
pub fn log_dir(test: &str) -> anyhow::Result<std::path::PathBuf> {
    kvroute_e2e::paths::log_dir(&format!("wasm/{test}"))
}

/// Starts `count` engines `engine-0..` for a test (vLLM dialect, default time scale).
pub async fn start_sims(count: usize, log_dir: &std::path::Path) -> anyhow::Result<Vec<Sim>> {
    Sim::start_many("engine", count, DEFAULT_TIME_SCALE, log_dir).await
}

/// The `ip:port` of each engine, as the plugin configuration lists workers.
pub fn addresses(sims: &[Sim]) -> Vec<String> {
    sims.iter().map(|s| s.addr.to_string()).collect()
}
