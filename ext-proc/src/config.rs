//! The service configuration: the YAML file, its validation, and worker address handling.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use kvroute_core::{EngineKind, GatewayConfig, LimitsConfig, RouterConfig, WorkerSpec};
use serde::{Deserialize, Serialize};

use crate::kv_events::KvEventsConfig;
use crate::secret::Secret;
use crate::tls::TlsConfig;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown or mistyped fields (the message carries the
    /// line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// serde's message with its location.
        message: String,
    },
    /// A value is out of range or inconsistent; `field` is the path to it.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Active health-check settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed on every worker without its own `health_path`; any 2xx is healthy.
    pub path: String,
    /// Time between probes of one worker, in milliseconds.
    pub interval_ms: u64,
    /// Probe timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy worker healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy worker unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            path: "/health".to_owned(),
            interval_ms: 1000,
            timeout_ms: 1000,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// A worker as written in the config file or posted to the admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// `ip:port`, optionally with an `http://` scheme.
    pub address: String,
    /// Engine kind (default vllm).
    #[serde(default)]
    pub engine: EngineKind,
    /// Models served; empty means "ask the worker's `/v1/models`, else every model".
    #[serde(default)]
    pub models: Vec<String>,
    /// LoRA adapters loaded on the worker.
    #[serde(default)]
    pub lora_adapters: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Health-check path overriding `health.path`.
    #[serde(default)]
    pub health_path: Option<String>,
}

impl WorkerConfig {
    /// A worker at `address` serving every model.
    pub fn new(address: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            address: address.into(),
            ..WorkerConfig::default()
        }
    }

    /// The normalized socket address (scheme and trailing slash removed).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        normalize_address(&self.address)
    }

    /// The core's view of this worker, with the address normalized.
    pub fn spec(&self) -> Result<WorkerSpec, String> {
        Ok(WorkerSpec {
            address: self.socket_addr()?.to_string(),
            engine: self.engine,
            models: self.models.clone(),
            lora_adapters: self.lora_adapters.clone(),
            labels: self.labels.clone(),
        })
    }
}

/// Parses `ip:port`, `http://ip:port` or `http://ip:port/` into a socket address.
pub fn normalize_address(raw: &str) -> Result<SocketAddr, String> {
    let trimmed = raw.trim();
    let without_scheme = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if without_scheme.starts_with("https://") {
        return Err(format!("`{raw}`: https workers are not supported"));
    }
    let bare = without_scheme.trim_end_matches('/');
    bare.parse::<SocketAddr>()
        .map_err(|_| format!("`{raw}` is not an ip:port address"))
}

/// ext_proc port of the endpoint-picker protocol (and the Helm chart's).
pub const DEFAULT_GRPC_PORT: u16 = 9002;
/// Plaintext gRPC health port the `inferencepool` chart probes.
pub const DEFAULT_HEALTH_PORT: u16 = 9003;
/// Prometheus metrics port of the chart's Service.
pub const DEFAULT_METRICS_PORT: u16 = 9090;
/// Admin API port (loopback by default).
pub const DEFAULT_ADMIN_PORT: u16 = 9004;

/// The whole service configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ext_proc gRPC listen address (TLS and plaintext, see `tls`; also serves gRPC health).
    pub grpc_addr: SocketAddr,
    /// Plaintext gRPC health listen address (`liveness`, `readiness`, `inference-extension`,
    /// `envoy.service.ext_proc.v3.ExternalProcessor`), where Kubernetes probes.
    pub health_addr: SocketAddr,
    /// Prometheus metrics listen address (`GET /metrics`, no token).
    pub metrics_addr: SocketAddr,
    /// Admin HTTP API listen address.
    pub admin_addr: SocketAddr,
    /// Bearer token for the admin API; required when it listens beyond loopback.
    pub admin_token: Option<Secret>,
    /// TLS on the gRPC port: TLS and plaintext by default, a self-signed certificate when none
    /// is configured; `mode: required` or mutual TLS refuse plaintext, `mode: off` is
    /// plaintext only.
    pub tls: TlsConfig,
    /// Request-flow settings.
    pub gateway: GatewayConfig,
    /// Router and policy settings.
    pub router: RouterConfig,
    /// Active health checks.
    pub health: HealthConfig,
    /// Engine metrics scraping.
    pub scrape: crate::scrape::ScrapeConfig,
    /// Static workers.
    pub workers: Vec<WorkerConfig>,
    /// Kubernetes discovery of further workers, if any.
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    /// Admission limits: global in-flight cap (429), decision deadline.
    pub limits: LimitsConfig,
    /// How long in-flight streams may take to finish after SIGTERM, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Subscriptions to the workers' KV-cache events (for `precise_prefix`).
    pub kv_events: KvEventsConfig,
    /// Local tokenizer giving policies the prompt's token ids; never fetched.
    pub tokenizer: Option<TokenizerConfig>,
}

/// `tokenizer` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// A local HF `tokenizer.json`, or a directory holding it (and `tokenizer_config.json`,
    /// whose chat template renders chat requests like the engine).
    pub path: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_GRPC_PORT)),
            health_addr: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_HEALTH_PORT)),
            metrics_addr: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_METRICS_PORT)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            admin_token: None,
            tls: TlsConfig::default(),
            gateway: GatewayConfig::default(),
            router: RouterConfig::default(),
            health: HealthConfig::default(),
            scrape: crate::scrape::ScrapeConfig::default(),
            workers: Vec::new(),
            discovery: None,
            limits: LimitsConfig::default(),
            shutdown_grace_ms: 10_000,
            kv_events: KvEventsConfig::default(),
            tokenizer: None,
        }
    }
}

/// Reads a config file in either format; see [`parse_any`].
pub fn load_any(path: &Path, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    parse_any(&text, &origin, warnings)
}

/// Parses kvroute's YAML, or the reference picker's `EndpointPickerConfig` (told apart by its
/// `kind`), which becomes the defaults with the `scorer` policy it describes. Settings of the
/// latter without effect are pushed to `warnings`.
pub fn parse_any(
    text: &str,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap_or_default();
    if !crate::picker_config::is_picker_config(&doc) {
        return Config::from_yaml(text, origin);
    }
    let t = crate::picker_config::translate(text).map_err(|message| ConfigError::Parse {
        path: origin.to_owned(),
        message,
    })?;
    let mut config = Config::default();
    config.router.policy = t.policy;
    if let Some(n) = t.max_endpoints {
        config.router.max_endpoints = n;
    }
    if let Some(path) = t.metrics_path {
        config.scrape.path = path;
    }
    warnings.extend(t.warnings);
    Ok(config)
}

impl Config {
    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a YAML file, kvroute's format or an EndpointPickerConfig (not yet
    /// validated; warnings about the latter are dropped, see [`load_any`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_any(path, &mut Vec::new())
    }

    /// Checks every value for range and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.admin_addr.ip().is_loopback()
            && self.admin_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "admin_token",
                "an admin token is required when admin_addr is not a loopback address",
            ));
        }
        self.tls
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        let listeners = [
            ("grpc_addr", self.grpc_addr),
            ("health_addr", self.health_addr),
            ("metrics_addr", self.metrics_addr),
            ("admin_addr", self.admin_addr),
        ];
        for (i, (field, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a.port() == addr.port()) {
                return Err(invalid(
                    *field,
                    format!("port {} is already {other}'s", addr.port()),
                ));
            }
        }
        for (i, rule) in self.gateway.normalize.rules.iter().enumerate() {
            rule.validate()
                .map_err(|m| invalid(format!("gateway.normalize.rules[{i}]"), m))?;
        }
        self.validate_gateway()?;
        self.validate_router()?;
        self.validate_health()?;
        if let Some(d) = &self.discovery {
            d.validate()
                .map_err(|(field, message)| invalid(field, message))?;
        }
        self.scrape
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        self.validate_limits()?;
        self.kv_events
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        if let Some(t) = &self.tokenizer
            && !t.path.exists()
        {
            return Err(invalid(
                "tokenizer.path",
                format!("{} does not exist", t.path.display()),
            ));
        }
        let mut seen = HashSet::new();
        for (i, w) in self.workers.iter().enumerate() {
            let addr = w
                .socket_addr()
                .map_err(|m| invalid(format!("workers[{i}].address"), m))?;
            if !seen.insert(addr) {
                return Err(invalid(
                    format!("workers[{i}].address"),
                    format!("duplicate worker {addr}"),
                ));
            }
            if let Some(p) = &w.health_path {
                check_path(&format!("workers[{i}].health_path"), p)?;
            }
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        for (field, value) in [
            ("gateway.destination_header", &g.destination_header),
            ("gateway.session_header", &g.session_header),
        ] {
            let ok = !value.is_empty()
                && value.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                return Err(invalid(field, "must be a non-empty lower-case header name"));
            }
        }
        if g.metadata_namespace.is_empty() {
            return Err(invalid("gateway.metadata_namespace", "must not be empty"));
        }
        if g.max_body_bytes == 0 {
            return Err(invalid("gateway.max_body_bytes", "must be positive"));
        }
        Ok(())
    }

    fn validate_router(&self) -> Result<(), ConfigError> {
        self.router
            .validate()
            .map_err(|(field, message)| invalid(field, message))
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_in_flight == Some(0) {
            return Err(invalid(
                "limits.max_in_flight",
                "must be at least 1 (omit it for no limit)",
            ));
        }
        if l.decision_timeout_ms == Some(0) {
            return Err(invalid(
                "limits.decision_timeout_ms",
                "must be positive (omit it for no deadline)",
            ));
        }
        let largest = 2 * self.gateway.max_body_bytes as u64;
        if l.max_buffered_bytes < largest {
            return Err(invalid(
                "limits.max_buffered_bytes",
                format!(
                    "must be at least twice gateway.max_body_bytes ({largest}), or the largest \
                     accepted body could never be buffered"
                ),
            ));
        }
        Ok(())
    }

    fn validate_health(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        check_path("health.path", &h.path)?;
        if h.interval_ms < 10 {
            return Err(invalid("health.interval_ms", "must be at least 10"));
        }
        if h.timeout_ms == 0 {
            return Err(invalid("health.timeout_ms", "must be positive"));
        }
        if h.healthy_threshold == 0 {
            return Err(invalid("health.healthy_threshold", "must be at least 1"));
        }
        if h.unhealthy_threshold == 0 {
            return Err(invalid("health.unhealthy_threshold", "must be at least 1"));
        }
        Ok(())
    }

    /// A one-paragraph human summary, printed by `check-config`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "grpc_addr: {} ({})\nhealth_addr: {}\nmetrics_addr: {}\nadmin_addr: {} (token {})\npolicy: {}\n",
            self.grpc_addr,
            match self.tls.effective_mode() {
                crate::tls::TlsMode::Off => "plaintext",
                crate::tls::TlsMode::Required if self.tls.is_mutual() => "mutual TLS",
                crate::tls::TlsMode::Required => "TLS",
                crate::tls::TlsMode::Auto => "TLS and plaintext",
            },
            self.health_addr,
            self.metrics_addr,
            self.admin_addr,
            if self.admin_token.is_some() {
                "set"
            } else {
                "not set"
            },
            self.router.policy.name(),
        );
        for (model, p) in &self.router.model_policies {
            out.push_str(&format!("  model {model}: {}\n", p.name()));
        }
        out.push_str(&format!(
            "max_endpoints: {}\nhealth: {} every {} ms (timeout {} ms)\nworkers: {}\n",
            self.router.max_endpoints,
            self.health.path,
            self.health.interval_ms,
            self.health.timeout_ms,
            self.workers.len()
        ));
        match self.discovery.as_ref().and_then(|d| d.source()) {
            Some(crate::discovery::Source::Kubernetes(k)) => out.push_str(&format!(
                "discovery: pods `{}` in {} (port {})\n",
                k.label_selector,
                k.namespaces.join(","),
                k.port
            )),
            Some(crate::discovery::Source::InferencePool(p)) => out.push_str(&format!(
                "discovery: InferencePool {}/{}\n",
                p.namespace, p.name
            )),
            None => {}
        }
        for w in &self.workers {
            let models = if w.models.is_empty() {
                "discovered".to_owned()
            } else {
                w.models.join(",")
            };
            out.push_str(&format!(
                "  {} ({}, models: {models})\n",
                w.address,
                w.engine.as_str()
            ));
        }
        out
    }
}

fn check_path(field: &str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(invalid(field, "must be an absolute path like /health"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_addresses() {
        assert_eq!(
            normalize_address("http://127.0.0.1:8001/").unwrap(),
            "127.0.0.1:8001".parse::<SocketAddr>().unwrap()
        );
        assert!(normalize_address("127.0.0.1:8001").is_ok());
        assert!(normalize_address("localhost").is_err());
        assert!(normalize_address("https://1.2.3.4:1").is_err());
    }

    #[test]
    fn rejects_unknown_fields_with_location() {
        let err = Config::from_yaml("grpc_addr: 127.0.0.1:1\nbogus: 1\n", "t.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bogus") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn limits_and_circuit_parse_and_validate() {
        let c = Config::from_yaml(
            "limits: {max_in_flight: 10, decision_timeout_ms: 50, on_decision_timeout: reject}\n\
             router:\n  circuit: {consecutive_failures: 2, cooldown_ms: 100}\n",
            "t",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.max_in_flight, Some(10));
        assert_eq!(c.router.circuit.consecutive_failures, 2);
        for bad in [
            "limits: {max_in_flight: 0}\n",
            "limits: {decision_timeout_ms: 0}\n",
        ] {
            let c = Config::from_yaml(bad, "t").unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(Config::from_yaml("limits: {on_decision_timeout: maybe}\n", "t").is_err());
    }

    #[test]
    fn rejects_unknown_policy_and_bad_thresholds() {
        let err = Config::from_yaml("router:\n  policy: {name: nope}\n", "t").unwrap_err();
        assert!(err.to_string().contains("nope"));
        let c = Config::from_yaml("health:\n  unhealthy_threshold: 0\n", "t").unwrap();
        assert!(c.validate().is_err());
        // Policy parameters are checked by the core's RouterConfig::validate.
        let c = Config::from_yaml(
            "router:\n  model_policies:\n    m: {name: scorer, picker: {kind: softmax, temperature: 0}}\n",
            "t",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("router.model_policies.m.picker.temperature"),
            "{err}"
        );
        let c = Config::from_yaml("admin_addr: 0.0.0.0:9004\n", "t").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("admin_token")
        );
        let c = Config::from_yaml("workers: [{address: 'x:1'}]\n", "t").unwrap();
        assert!(c.validate().is_err());
    }
}
