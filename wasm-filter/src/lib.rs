//! kvroute as a proxy-wasm HTTP filter: decides inside Envoy, with no extra hop, through the
//! same policy core (`kvroute-core`) as the ext_proc service.
//!
//! The filter only translates proxy-wasm callbacks into core calls and the core's
//! [`kvroute_core::Outcome`] back into a destination header or a local reply. One Wasm VM runs
//! per Envoy worker thread; [`sharing`] keeps their routers converged (shared in-flight counts
//! and replayed decisions).

pub mod config;
pub mod discovery;
pub mod filter;
pub mod metrics;
pub mod root;
pub mod sharing;
pub mod vm;

pub use config::{ConfigError, DiscoveryConfig, PluginConfig, SharingConfig};

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
