//! Command-line interface: kvroute's own flags and the endpoint-picker flags the Gateway API
//! Inference Extension's `inferencepool` Helm chart passes (`--pool-name`, `--config-file`,
//! `-v`, `--zap-encoder`, `--secure-serving`, ...), so the kvroute image drops into the chart.
//!
//! `kvroute [FLAGS]` and `kvroute serve [FLAGS]` both serve; `kvroute check-config FILE`
//! validates a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kvroute_core::PolicyConfig;

use crate::config::{Config, ConfigError, WorkerConfig};
use crate::discovery::{DiscoveryConfig, InferencePoolDiscovery, KubernetesDiscovery};
use crate::secret::Secret;
use crate::tls::TlsMode;

/// kvroute: LLM-aware endpoint picker for Envoy (ext_proc gRPC service).
#[derive(Debug, Parser)]
#[command(name = "kvroute", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The subcommand, `serve` when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(Box::new(self.serve)))
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ext_proc gRPC service, gRPC health, metrics and the admin API (the default).
    Serve(Box<ServeArgs>),
    /// Parse and validate a config file (kvroute YAML or an EndpointPickerConfig), print a
    /// summary.
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log encoders of the reference picker's `--zap-encoder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ZapEncoder {
    /// JSON lines.
    Json,
    /// Human-readable lines.
    Console,
}

/// API groups of the InferencePool (`--pool-group`).
pub const POOL_GROUPS: [&str; 2] = [
    crate::discovery::POOL_GROUP_V1,
    crate::discovery::POOL_GROUP_ALPHA,
];

/// `kvroute serve` flags; each overrides the config file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Config file: kvroute's YAML, or the reference picker's EndpointPickerConfig.
    #[arg(long, alias = "config-file", env = "KVROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The config as text (same formats as `--config`).
    #[arg(long, conflicts_with = "config")]
    pub config_text: Option<String>,
    /// ext_proc gRPC listen address (default [::]:9002).
    #[arg(long, env = "KVROUTE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// ext_proc gRPC port on every address (the chart's flag).
    #[arg(long, conflicts_with = "grpc_addr")]
    pub grpc_port: Option<u16>,
    /// Plaintext gRPC health listen address (default [::]:9003).
    #[arg(long, env = "KVROUTE_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// gRPC health port on every address (the chart's flag).
    #[arg(long, conflicts_with = "health_addr")]
    pub grpc_health_port: Option<u16>,
    /// Prometheus metrics listen address (default [::]:9090).
    #[arg(long, env = "KVROUTE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Metrics port on every address (the chart's flag).
    #[arg(long, conflicts_with = "metrics_addr")]
    pub metrics_port: Option<u16>,
    /// Admin HTTP listen address (default 127.0.0.1:9004).
    #[arg(long, env = "KVROUTE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Routing policy for every model (default cache_aware; an EndpointPickerConfig selects
    /// `scorer`).
    #[arg(long, env = "KVROUTE_POLICY")]
    pub policy: Option<String>,
    /// Endpoints named per request, the pick first then fallbacks (default 1). Raise it only
    /// for gateways that walk a list (kvroute's own override_host configs).
    #[arg(long, env = "KVROUTE_MAX_ENDPOINTS")]
    pub max_endpoints: Option<usize>,
    /// A worker URL (`http://ip:port` or `ip:port`) serving every model unless its
    /// /v1/models says otherwise. Repeatable.
    #[arg(long = "worker", env = "KVROUTE_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Health-check path (default /health).
    #[arg(long, env = "KVROUTE_HEALTH_PATH")]
    pub health_path: Option<String>,
    /// Health-check interval in milliseconds (default 1000).
    #[arg(long, env = "KVROUTE_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    /// Health-check timeout in milliseconds (default 1000).
    #[arg(long, env = "KVROUTE_HEALTH_TIMEOUT_MS")]
    pub health_timeout_ms: Option<u64>,
    /// Bearer token of the admin API (required when it listens beyond loopback).
    #[arg(long, env = "KVROUTE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// gRPC port TLS: auto (TLS and plaintext), required or off (default auto).
    #[arg(long, value_enum, env = "KVROUTE_TLS_MODE")]
    pub tls_mode: Option<TlsModeArg>,
    /// Log format.
    #[arg(long, env = "KVROUTE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// The reference picker's flags, as the `inferencepool` Helm chart passes them.
    #[command(flatten)]
    pub picker: PickerFlags,
}

/// The reference endpoint picker's flags (the `inferencepool` Helm chart's arguments).
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Endpoint picker (inferencepool chart)")]
pub struct PickerFlags {
    /// Name of the InferencePool whose pods are the workers.
    #[arg(long)]
    pub pool_name: Option<String>,
    /// Namespace of the pool (default: $NAMESPACE, else `default`).
    #[arg(long, env = "NAMESPACE")]
    pub pool_namespace: Option<String>,
    /// API group of the pool: inference.networking.k8s.io (v1, default) or
    /// inference.networking.x-k8s.io (v1alpha2).
    #[arg(long)]
    pub pool_group: Option<String>,
    /// Without a pool: label selector of the engine pods (standalone mode).
    #[arg(long, conflicts_with = "pool_name")]
    pub endpoint_selector: Option<String>,
    /// Engine port of the pods chosen by `--endpoint-selector`.
    #[arg(long, value_delimiter = ',', requires = "endpoint_selector")]
    pub endpoint_target_ports: Vec<u16>,
    /// Log encoder: json or console.
    #[arg(long, value_enum)]
    pub zap_encoder: Option<ZapEncoder>,
    /// Log verbosity: 0-2 info, 3-4 debug, 5 and more trace (`RUST_LOG` wins).
    #[arg(short = 'v', long = "v")]
    pub verbosity: Option<u8>,
    /// Serve TLS on the gRPC port (`false` turns TLS off; default on, plaintext accepted
    /// too in mode auto).
    #[arg(long, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub secure_serving: Option<bool>,
    /// Directory holding `tls.crt` and `tls.key` (default: a self-signed certificate).
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// OpenTelemetry tracing on or off (accepted; kvroute logs).
    #[arg(long, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub tracing: Option<bool>,
    /// Leader election between replicas. kvroute replicas are active-active (each serves
    /// with its own state), so this is accepted and not needed.
    #[arg(long, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub ha_enable_leader_election: Option<bool>,
    /// Time between engine metric scrapes (Go duration: 50ms, 1s).
    #[arg(long, value_parser = go_duration_ms)]
    pub refresh_metrics_interval: Option<u64>,
    /// Engine metrics older than this are ignored (Go duration).
    #[arg(long, value_parser = go_duration_ms)]
    pub metrics_staleness_threshold: Option<u64>,
    /// Metrics path on the engines.
    #[arg(long)]
    pub model_server_metrics_path: Option<String>,
    /// Metrics scheme on the engines (only http is supported).
    #[arg(long)]
    pub model_server_metrics_scheme: Option<String>,
    /// Metrics port on the engines (0: the serving port; only 0 is supported).
    #[arg(long)]
    pub model_server_metrics_port: Option<u16>,
    /// Reference-picker flags with no effect on kvroute, accepted so the chart's arguments
    /// start it (each is named in a warning).
    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

/// `--tls-mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsModeArg {
    /// TLS and plaintext on the gRPC port.
    Auto,
    /// TLS only.
    Required,
    /// Plaintext only.
    Off,
}

impl From<TlsModeArg> for TlsMode {
    fn from(m: TlsModeArg) -> TlsMode {
        match m {
            TlsModeArg::Auto => TlsMode::Auto,
            TlsModeArg::Required => TlsMode::Required,
            TlsModeArg::Off => TlsMode::Off,
        }
    }
}

macro_rules! ignored_flags {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $name:literal ),* $(,)?) => {
        /// Reference-picker flags kvroute accepts without effect.
        #[derive(Debug, Default, Args)]
        pub struct IgnoredFlags {
            $(
                $(#[$doc])*
                #[arg(long = $name, hide = true, num_args = 0..=1,
                      default_missing_value = "true", action = ArgAction::Set)]
                pub $field: Option<$ty>,
            )*
        }

        impl IgnoredFlags {
            /// `--flag` names given on the command line.
            pub fn given(&self) -> Vec<&'static str> {
                let mut given = Vec::new();
                $( if self.$field.is_some() { given.push($name); } )*
                given
            }
        }
    };
}

ignored_flags! {
    /// The picker's own gRPC health service (kvroute always serves it).
    health_checking: String = "health-checking",
    /// Authentication on the metrics port (kvroute's metrics port has none).
    metrics_endpoint_auth: String = "metrics-endpoint-auth",
    /// Go profiling endpoints.
    enable_pprof: String = "enable-pprof",
    /// Certificate reload (kvroute reads certificates at start).
    enable_cert_reload: String = "enable-cert-reload",
    /// Pool-level metric computation interval.
    refresh_prometheus_metrics_interval: String = "refresh-prometheus-metrics-interval",
    /// Engine metric names (kvroute knows vLLM and SGLang names by engine kind).
    total_queued_requests_metric: String = "total-queued-requests-metric",
    /// As above.
    total_running_requests_metric: String = "total-running-requests-metric",
    /// As above.
    kv_cache_usage_percentage_metric: String = "kv-cache-usage-percentage-metric",
    /// As above.
    lora_info_metric: String = "lora-info-metric",
    /// As above.
    cache_info_metric: String = "cache-info-metric",
    /// TLS verification of engine metrics (only http is scraped).
    model_server_metrics_https_insecure_skip_verify: String =
        "model-server-metrics-https-insecure-skip-verify",
    /// Subset hint filtering (kvroute always honours the hint).
    disable_endpoint_subset_filter: String = "disable-endpoint-subset-filter",
    /// zap development mode.
    zap_devel: String = "zap-devel",
    /// zap level (use `-v` or `RUST_LOG`).
    zap_log_level: String = "zap-log-level",
    /// zap stack traces.
    zap_stacktrace_level: String = "zap-stacktrace-level",
    /// zap time format.
    zap_time_encoding: String = "zap-time-encoding",
}

/// Parses a Go duration (`50ms`, `1.5s`, `2m`, `1h`, `100us`) into whole milliseconds.
pub fn go_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration like 50ms, 2s or 1m");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ns" => 1e-6,
        "us" | "µs" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return Err(bad()),
    };
    let ms = (number * scale).round();
    if !ms.is_finite() || ms > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(ms as u64)
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The resolved configuration and what the flags did that the operator should know.
#[derive(Debug)]
pub struct Resolved {
    /// The validated config.
    pub config: Config,
    /// Warnings to log once logging is up (ignored flags and the like).
    pub warnings: Vec<String>,
}

impl ServeArgs {
    /// Log format from `--log-format` or `--zap-encoder` (default text).
    pub fn log_format(&self) -> LogFormat {
        match (self.log_format, self.picker.zap_encoder) {
            (Some(f), _) => f,
            (None, Some(ZapEncoder::Json)) => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }

    /// The default log filter from `-v` (`RUST_LOG` overrides it).
    pub fn log_filter(&self) -> &'static str {
        match self.picker.verbosity.unwrap_or(0) {
            0..=2 => "info",
            3..=4 => "debug",
            _ => "trace",
        }
    }

    /// The config file (or defaults) with the flags applied, validated.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let mut warnings = Vec::new();
        let mut config = match (&self.config, &self.config_text) {
            (Some(path), _) => crate::config::load_any(path, &mut warnings)?,
            (None, Some(text)) => crate::config::parse_any(text, "--config-text", &mut warnings)?,
            (None, None) => Config::default(),
        };
        self.apply_listeners(&mut config, &mut warnings)?;
        self.apply_routing(&mut config)?;
        self.apply_discovery(&mut config)?;
        self.apply_metrics(&mut config)?;
        for flag in self.picker.ignored.given() {
            warnings.push(format!("--{flag} has no effect on kvroute; ignored"));
        }
        if self.picker.ha_enable_leader_election == Some(true) {
            warnings.push(
                "--ha-enable-leader-election: kvroute replicas are active-active, every \
                 replica serves; no leader is elected"
                    .to_owned(),
            );
        }
        config.validate()?;
        Ok(Resolved { config, warnings })
    }

    fn apply_listeners(
        &self,
        config: &mut Config,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let port_on = |addr: SocketAddr, port: u16| SocketAddr::new(addr.ip(), port);
        if let Some(a) = self.grpc_addr {
            config.grpc_addr = a;
        }
        if let Some(p) = self.grpc_port {
            config.grpc_addr = port_on(config.grpc_addr, p);
        }
        if let Some(a) = self.health_addr {
            config.health_addr = a;
        }
        if let Some(p) = self.grpc_health_port {
            config.health_addr = port_on(config.health_addr, p);
        }
        if let Some(a) = self.metrics_addr {
            config.metrics_addr = a;
        }
        if let Some(p) = self.metrics_port {
            config.metrics_addr = port_on(config.metrics_addr, p);
        }
        if let Some(a) = self.admin_addr {
            config.admin_addr = a;
        }
        if let Some(t) = &self.admin_token {
            config.admin_token = Some(t.clone());
        }
        if let Some(m) = self.tls_mode {
            config.tls.mode = m.into();
        }
        match self.picker.secure_serving {
            Some(false) => config.tls.mode = TlsMode::Off,
            Some(true) if config.tls.mode == TlsMode::Off => config.tls.mode = TlsMode::Auto,
            _ => {}
        }
        if let Some(dir) = &self.picker.cert_path {
            if config.tls.mode == TlsMode::Off {
                warnings.push("--cert-path is unused: TLS is off".to_owned());
            }
            config.tls.cert_file = Some(dir.join("tls.crt"));
            config.tls.key_file = Some(dir.join("tls.key"));
        }
        if self.picker.tracing == Some(true) {
            warnings.push("--tracing: kvroute does not export traces yet; logging only".into());
        }
        Ok(())
    }

    fn apply_routing(&self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(name) = &self.policy {
            config.router.policy = PolicyConfig::from_name(name).ok_or_else(|| {
                invalid(
                    "--policy",
                    format!(
                        "unknown policy `{name}` (one of: {})",
                        PolicyConfig::NAMES.join(", ")
                    ),
                )
            })?;
        }
        if let Some(n) = self.max_endpoints {
            config.router.max_endpoints = n;
        }
        for w in &self.workers {
            let w = WorkerConfig::new(w.as_str());
            let addr = w.socket_addr().map_err(|m| invalid("--worker", m))?;
            let known = config
                .workers
                .iter()
                .any(|c| c.socket_addr().is_ok_and(|a| a == addr));
            if !known {
                config.workers.push(w);
            }
        }
        if let Some(p) = &self.health_path {
            config.health.path.clone_from(p);
        }
        if let Some(ms) = self.health_interval_ms {
            config.health.interval_ms = ms;
        }
        if let Some(ms) = self.health_timeout_ms {
            config.health.timeout_ms = ms;
        }
        Ok(())
    }

    fn apply_discovery(&self, config: &mut Config) -> Result<(), ConfigError> {
        let namespace = self
            .picker
            .pool_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        if let Some(name) = &self.picker.pool_name {
            let group = self
                .picker
                .pool_group
                .clone()
                .unwrap_or_else(|| POOL_GROUPS[0].to_owned());
            if !POOL_GROUPS.contains(&group.as_str()) {
                return Err(invalid(
                    "--pool-group",
                    format!("`{group}` is not one of {}", POOL_GROUPS.join(", ")),
                ));
            }
            let mut pool = InferencePoolDiscovery::new(name, &namespace);
            pool.api_group = group;
            config.discovery = Some(DiscoveryConfig {
                inference_pool: Some(pool),
                ..DiscoveryConfig::default()
            });
        } else if let Some(selector) = &self.picker.endpoint_selector {
            let port = match self.picker.endpoint_target_ports.as_slice() {
                [] => 8000,
                [p] => *p,
                _ => {
                    return Err(invalid(
                        "--endpoint-target-ports",
                        "one port with --endpoint-selector; use an InferencePool for several",
                    ));
                }
            };
            let mut pods = KubernetesDiscovery::new(&namespace, selector);
            pods.port = port;
            config.discovery = Some(DiscoveryConfig {
                kubernetes: Some(pods),
                ..DiscoveryConfig::default()
            });
        } else if self.picker.pool_group.is_some() {
            return Err(invalid("--pool-group", "needs --pool-name"));
        }
        Ok(())
    }

    fn apply_metrics(&self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(ms) = self.picker.refresh_metrics_interval {
            config.scrape.interval_ms = ms;
        }
        if let Some(ms) = self.picker.metrics_staleness_threshold {
            config.scrape.stale_after_ms = ms;
        }
        if let Some(p) = &self.picker.model_server_metrics_path {
            config.scrape.path.clone_from(p);
        }
        if let Some(s) = &self.picker.model_server_metrics_scheme
            && s != "http"
        {
            return Err(invalid(
                "--model-server-metrics-scheme",
                format!("`{s}` is not supported: kvroute scrapes engines over http"),
            ));
        }
        if let Some(p) = self.picker.model_server_metrics_port
            && p != 0
        {
            return Err(invalid(
                "--model-server-metrics-port",
                "kvroute scrapes each engine on its serving port; only 0 is supported",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvroute").chain(args.iter().copied()))
            .map(Cli::into_command)
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args).unwrap() {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_charts_arguments_parse_without_a_subcommand() {
        let a = serve(&[
            "--pool-name",
            "vllm-qwen",
            "--pool-namespace",
            "llm",
            "--pool-group",
            "inference.networking.k8s.io",
            "--zap-encoder",
            "json",
            "--config-file",
            "/config/default-plugins.yaml",
            "-v",
            "1",
            "--tracing=false",
            "--metrics-endpoint-auth",
            "false",
            "--secure-serving",
            "false",
            "--enable-pprof",
        ]);
        assert_eq!(a.picker.pool_name.as_deref(), Some("vllm-qwen"));
        assert_eq!(
            a.config.as_deref(),
            Some("/config/default-plugins.yaml".as_ref())
        );
        assert_eq!(a.log_format(), LogFormat::Json);
        assert_eq!(a.picker.verbosity, Some(1));
        assert_eq!(a.picker.tracing, Some(false));
        assert_eq!(a.picker.secure_serving, Some(false));
        assert_eq!(
            a.picker.ignored.given(),
            vec!["metrics-endpoint-auth", "enable-pprof"]
        );
    }

    #[test]
    fn serve_subcommand_and_long_v_still_work() {
        let a = serve(&[
            "serve",
            "--v",
            "4",
            "--secure-serving",
            "--max-endpoints",
            "3",
        ]);
        assert_eq!(a.picker.verbosity, Some(4));
        assert_eq!(a.log_filter(), "debug");
        assert_eq!(a.picker.secure_serving, Some(true));
        assert_eq!(a.max_endpoints, Some(3));
        assert!(matches!(
            parse(&["check-config", "x.yaml"]).unwrap(),
            Command::CheckConfig { .. }
        ));
    }

    #[test]
    fn unknown_flags_are_errors() {
        let err = parse(&["--pool-nmae", "x"]).unwrap_err().to_string();
        assert!(err.contains("--pool-nmae"), "{err}");
    }

    #[test]
    fn pool_flags_become_inference_pool_discovery() {
        let r = serve(&[
            "--pool-name",
            "p",
            "--pool-namespace",
            "llm",
            "--pool-group",
            "inference.networking.x-k8s.io",
            "--secure-serving=false",
            "--grpc-port",
            "19002",
        ])
        .resolve()
        .unwrap();
        let pool = r.config.discovery.unwrap().inference_pool.unwrap();
        assert_eq!((pool.name.as_str(), pool.namespace.as_str()), ("p", "llm"));
        assert_eq!(pool.api_group, "inference.networking.x-k8s.io");
        assert_eq!(r.config.tls.mode, TlsMode::Off);
        assert_eq!(r.config.grpc_addr.port(), 19002);
        let err = serve(&["--pool-name", "p", "--pool-group", "example.com"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--pool-group"), "{err}");
    }

    #[test]
    fn unsupported_values_fail_with_the_flag_named() {
        for (args, flag) in [
            (&["--model-server-metrics-scheme", "https"][..], "scheme"),
            (&["--model-server-metrics-port", "9400"][..], "metrics-port"),
            (&["--policy", "nope"][..], "--policy"),
        ] {
            let err = serve(args).resolve().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("50ms"), Ok(50));
        assert_eq!(go_duration_ms("1.5s"), Ok(1500));
        assert_eq!(go_duration_ms("2m"), Ok(120_000));
        assert!(go_duration_ms("5").is_err());
        assert!(go_duration_ms("fast").is_err());
        let a = serve(&["--refresh-metrics-interval", "100ms"]);
        assert_eq!(a.resolve().unwrap().config.scrape.interval_ms, 100);
    }
}
