//! The plugin configuration JSON: workers, router and gateway settings, cross-VM sharing.

use std::collections::HashSet;
use std::net::SocketAddr;

use kvroute_core::{GatewayConfig, Router, RouterConfig, WorkerSpec};
use serde::Deserialize;

/// The filter's configuration, read from the plugin configuration JSON at `on_configure`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The engines requests may be sent to; each `address` must also be an endpoint of the
    /// upstream cluster.
    pub workers: Vec<WorkerSpec>,
    /// Policy and its parameters, per-model overrides, fallback list length.
    #[serde(default)]
    pub router: RouterConfig,
    /// Destination header, session header, body size limit.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// State shared between the VMs of Envoy's worker threads.
    #[serde(default)]
    pub sharing: SharingConfig,
    /// Optional refresh of the worker list from a `kvroute` admin API.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
}

/// Refreshing the worker list from a `kvroute` admin API (`GET /workers`) on a timer. The
/// listed workers replace the configured ones (health and draining included); an empty or
/// unreadable answer keeps the last known list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The Envoy cluster that reaches the admin API.
    pub cluster: String,
    /// Path of the worker list.
    #[serde(default = "default_workers_path")]
    pub path: String,
    /// `:authority` of the calls.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Time between two refreshes, in milliseconds (at least 100).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Timeout of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Bearer token, when the admin API requires one.
    #[serde(default)]
    pub bearer_token: Option<String>,
}

fn default_workers_path() -> String {
    "/workers".to_owned()
}

fn default_authority() -> String {
    "kvroute-admin".to_owned()
}

fn default_interval_ms() -> u64 {
    5_000
}

fn default_timeout_ms() -> u64 {
    1_000
}

/// How the VMs of Envoy's worker threads share state.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharingConfig {
    /// Share in-flight counts and replay cache-aware decisions across VMs.
    pub enabled: bool,
    /// Prefix of every shared-data key and queue name (one per filter instance).
    pub namespace: String,
    /// Bytes of the prompt carried by a decision event (longer prompts are cut).
    pub max_event_prompt_bytes: usize,
}

impl Default for SharingConfig {
    fn default() -> SharingConfig {
        SharingConfig {
            enabled: true,
            namespace: "kvroute".to_owned(),
            max_event_prompt_bytes: 64 * 1024,
        }
    }
}

/// Why a plugin configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration is missing or empty.
    #[error("the plugin configuration is empty: a JSON object with `workers` is required")]
    Empty,
    /// Not valid JSON, an unknown field, or a value of the wrong type.
    #[error("the plugin configuration is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// No workers listed.
    #[error("`workers` is empty: at least one worker is required")]
    NoWorkers,
    /// A worker address is not `ip:port`.
    #[error("worker address `{0}` is not an `ip:port` socket address")]
    BadAddress(String),
    /// Two workers share an address.
    #[error("worker address `{0}` is listed twice")]
    DuplicateAddress(String),
    /// The destination header name is empty or not lower-case ASCII.
    #[error("`gateway.destination_header` must be a non-empty lower-case header name")]
    BadDestinationHeader,
    /// The sharing namespace is empty.
    #[error("`sharing.namespace` must not be empty")]
    EmptyNamespace,
    /// A router setting is out of range (the core's [`RouterConfig::validate`]).
    #[error("`{field}`: {message}")]
    BadRouter {
        /// Dotted path of the setting.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The discovery settings are unusable.
    #[error("`discovery` is invalid: {0}")]
    BadDiscovery(&'static str),
}

impl PluginConfig {
    /// Parses and validates the configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let config: PluginConfig = serde_json::from_slice(bytes)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers.is_empty() {
            return Err(ConfigError::NoWorkers);
        }
        let mut seen = HashSet::new();
        for w in &self.workers {
            if w.address.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::BadAddress(w.address.clone()));
            }
            if !seen.insert(w.address.as_str()) {
                return Err(ConfigError::DuplicateAddress(w.address.clone()));
            }
        }
        self.router
            .validate()
            .map_err(|(field, message)| ConfigError::BadRouter { field, message })?;
        let header = &self.gateway.destination_header;
        let header_ok = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !header_ok {
            return Err(ConfigError::BadDestinationHeader);
        }
        if self.sharing.namespace.is_empty() {
            return Err(ConfigError::EmptyNamespace);
        }
        if let Some(d) = &self.discovery {
            if d.cluster.is_empty() {
                return Err(ConfigError::BadDiscovery("`cluster` must not be empty"));
            }
            if !d.path.starts_with('/') {
                return Err(ConfigError::BadDiscovery("`path` must start with `/`"));
            }
            if d.interval_ms < 100 {
                return Err(ConfigError::BadDiscovery(
                    "`interval_ms` must be at least 100",
                ));
            }
            if d.timeout_ms == 0 {
                return Err(ConfigError::BadDiscovery("`timeout_ms` must not be 0"));
            }
        }
        Ok(())
    }

    /// A router over the configured workers; `seed` seeds its random choices.
    pub fn build_router(&self, seed: u64) -> Router {
        let mut router = Router::new(self.router.clone(), seed);
        for spec in &self.workers {
            router.upsert_worker(spec.clone());
        }
        router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "workers": [
            {"address": "127.0.0.1:8001", "engine": "vllm", "models": ["m"]},
            {"address": "127.0.0.1:8002", "engine": "sglang", "models": ["m"]}
        ],
        "router": {"policy": {"name": "cache_aware"}, "max_endpoints": 2},
        "gateway": {"max_body_bytes": 1024},
        "sharing": {"max_event_prompt_bytes": 4096},
        "discovery": {"cluster": "kvroute_admin", "interval_ms": 500}
    }"#;

    #[test]
    fn parses_a_full_configuration() {
        let c = PluginConfig::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.workers.len(), 2);
        assert_eq!(c.router.max_endpoints, 2);
        assert_eq!(c.gateway.max_body_bytes, 1024);
        assert_eq!(
            c.gateway.destination_header,
            "x-gateway-destination-endpoint"
        );
        assert!(c.sharing.enabled);
        assert_eq!(c.sharing.max_event_prompt_bytes, 4096);
        let d = c.discovery.as_ref().unwrap();
        assert_eq!((d.path.as_str(), d.interval_ms), ("/workers", 500));
        let router = c.build_router(1);
        assert_eq!(router.workers().len(), 2);
    }

    #[test]
    fn minimal_configuration_takes_defaults() {
        let c = PluginConfig::parse(br#"{"workers":[{"address":"10.0.0.1:80"}]}"#).unwrap();
        assert_eq!(c.router, RouterConfig::default());
        assert_eq!(c.sharing, SharingConfig::default());
        assert!(c.discovery.is_none());
    }

    #[test]
    fn refuses_invalid_configurations() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("{", "not valid"),
            (r#"{"workers":[]}"#, "at least one worker"),
            (r#"{"workers":[{"address":"localhost:80"}]}"#, "ip:port"),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"},{"address":"1.2.3.4:80"}]}"#,
                "twice",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"router":{"max_endpoints":0}}"#,
                "max_endpoints",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"router":{"policy":{"name":"nope"}}}"#,
                "not valid",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"router":{"policy":{"name":"cache_aware","balance_rel_threshold":0.1}}}"#,
                "router.policy.balance_rel_threshold",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"router":{"circuit":{"panic_threshold":2.0}}}"#,
                "router.circuit.panic_threshold",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"gateway":{"destination_header":"X Y"}}"#,
                "destination_header",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"extra":1}"#,
                "extra",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"sharing":{"namespace":""}}"#,
                "namespace",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"discovery":{"cluster":"a","interval_ms":5}}"#,
                "interval_ms",
            ),
            (
                r#"{"workers":[{"address":"1.2.3.4:80"}],"discovery":{"cluster":"a","path":"x"}}"#,
                "path",
            ),
        ];
        for (json, needle) in cases {
            let err = PluginConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
