//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvroute_core::PolicyConfig;

use crate::config::{Config, ConfigError, WorkerConfig};
use crate::secret::Secret;

/// kvroute: LLM-aware endpoint picker for Envoy (ext_proc gRPC service).
#[derive(Debug, Parser)]
#[command(name = "kvroute", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ext_proc gRPC service and the admin API.
    Serve(ServeArgs),
    /// Parse and validate a config file, print a summary.
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

/// `kvroute serve` flags; each overrides the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML config file.
    #[arg(long, env = "KVROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    /// ext_proc gRPC listen address (default 127.0.0.1:9002).
    #[arg(long, env = "KVROUTE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Admin HTTP listen address (default 127.0.0.1:9003).
    #[arg(long, env = "KVROUTE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Routing policy for every model (default cache_aware).
    #[arg(long, env = "KVROUTE_POLICY")]
    pub policy: Option<String>,
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
    /// Log format.
    #[arg(long, env = "KVROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The config file (or defaults) with the flags applied, validated.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(a) = self.grpc_addr {
            config.grpc_addr = a;
        }
        if let Some(a) = self.admin_addr {
            config.admin_addr = a;
        }
        if let Some(name) = &self.policy {
            config.router.policy =
                PolicyConfig::from_name(name).ok_or_else(|| ConfigError::Invalid {
                    field: "--policy".to_owned(),
                    message: format!(
                        "unknown policy `{name}` (one of: {})",
                        PolicyConfig::NAMES.join(", ")
                    ),
                })?;
        }
        for w in &self.workers {
            let w = WorkerConfig::new(w.as_str());
            let addr = w.socket_addr().map_err(|message| ConfigError::Invalid {
                field: "--worker".to_owned(),
                message,
            })?;
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
        if let Some(t) = &self.admin_token {
            config.admin_token = Some(t.clone());
        }
        config.validate()?;
        Ok(config)
    }
}
