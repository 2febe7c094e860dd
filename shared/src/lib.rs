//! `kvroute-core`: the sans-IO routing core of kvroute.
//!
//! This crate owns every routing decision. It performs no I/O, spawns no threads and reads no
//! clock or entropy of its own: the shells (the ext_proc gRPC service and the proxy-wasm filter)
//! feed it request bodies, worker events and the current time, and act on what it returns.
//! It compiles for `wasm32-unknown-unknown` as well as natively.
//!
//! The path of one request:
//! 1. [`request::parse_request`] turns the route and the body into a [`request::ParsedRequest`].
//! 2. [`router::Router::route`] filters the [`worker::WorkerSet`] down to healthy workers serving
//!    the model (and the proxy's subset hint), asks the model's [`policy::Policy`] to rank them,
//!    counts the request in flight and returns the ordered endpoint list with a [`router::Ticket`].
//! 3. When the response ends (or fails, or is reset) the shell hands the ticket back to
//!    [`router::Router::complete`], which releases the in-flight count exactly once.

pub mod circuit;
pub mod discovery;
pub mod engine_metrics;
pub mod error;
pub mod gateway;
pub mod kv_events;
pub mod limits;
pub mod normalize;
pub mod policy;
pub mod prefix_index;
pub mod request;
pub mod router;
pub mod shared_state;
#[cfg(feature = "tokenizer")]
pub mod tokenize;
pub mod worker;

pub use circuit::{CircuitConfig, CircuitState, ResponseOrigin};
pub use error::{OpenAiError, RouteError};
pub use gateway::{Forward, Gateway, GatewayConfig, LocalReply, Outcome, RequestKind};
pub use kv_events::{KvEvent, KvEventBatch};
pub use limits::{DeadlinePolicy, LimitsConfig};
pub use normalize::{NormalizeConfig, Normalizer};
pub use policy::{Pick, Policy, PolicyConfig, PolicyEnv};
pub use request::{ApiRoute, ParsedRequest, Prompt, RequestError, RouteRequest};
pub use router::{ResponseReport, Routed, Router, RouterConfig, Ticket};
pub use worker::{EngineKind, LoadReport, Worker, WorkerId, WorkerSet, WorkerSpec};
