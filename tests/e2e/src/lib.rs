//! End-to-end test harness: starts simulated engines, kvroute and the real Envoy (with the
//! shipped config, re-addressed) on free ports, captures their output under
//! `target/e2e-logs/<test>/`, and kills everything when dropped.
//!
//! Binaries: `KVROUTE_BIN`, `KVROUTE_SIM_BIN` (default `<target>/debug/...`) and
//! `KVROUTE_ENVOY` (default `<workspace>/.venv/bin/envoy`); `make test` provides them all.
//!
//! ```no_run
//! use kvroute_e2e::openai::{chat_body, sim_id};
//! use kvroute_e2e::{MODEL, Stack};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let stack = Stack::builder("my_test").policy("cache_aware").start().await?;
//! let resp = stack.post("/v1/chat/completions", &chat_body(MODEL, "hi", false, 4)).await?;
//! println!("{} answered by {}", resp.status(), sim_id(&resp));
//! # Ok(())
//! # }
//! ```

pub mod certs;
pub mod client;
pub mod config;
pub mod envoy;
pub mod fake_kube;
pub mod load;
pub mod openai;
pub mod paths;
pub mod process;
pub mod sim;
pub mod stack;

pub use client::http_client;
pub use config::{BodyMode, EnvoyConfig, EnvoyLayout, render_envoy_config, set_failure_mode_allow};
pub use envoy::{Envoy, EnvoyRun};
pub use sim::{DEFAULT_TIME_SCALE, EngineSpec, MODEL, Sim};
pub use stack::{Replica, Stack, StackBuilder};
