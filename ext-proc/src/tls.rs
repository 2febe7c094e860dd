//! TLS and mutual TLS on the ext_proc gRPC port.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// TLS settings of the gRPC listener (PEM files, read once at start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert_file: PathBuf,
    /// Private key of the certificate.
    pub key_file: PathBuf,
    /// CA bundle client certificates must chain to. When set, every client must present a
    /// valid certificate (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// Reads the files into tonic's server settings. Errors name the file, never its content.
    pub fn server_config(&self) -> anyhow::Result<ServerTlsConfig> {
        let cert = read(&self.cert_file, "tls.cert_file")?;
        let key = read(&self.key_file, "tls.key_file")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca_file {
            let ca = read(ca, "tls.client_ca_file")?;
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

fn read(path: &Path, field: &str) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(path).with_context(|| format!("{field}: cannot read {}", path.display()))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        anyhow::bail!("{field}: {} is not a PEM file", path.display());
    }
    Ok(pem)
}
