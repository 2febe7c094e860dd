//! TLS on the ext_proc gRPC port: TLS and plaintext on one listener by default, a generated
//! self-signed certificate when none is configured, configured certificates and mutual TLS.
//!
//! The gateways that implement InferencePool connect to the picker over TLS without checking
//! its certificate (Envoy AI Gateway, kgateway, the Gateway API Inference Extension's test
//! Envoy, Istio through the chart's DestinationRule), while kvroute's own Envoy configs and
//! local set-ups speak plaintext. [`TlsMode::Auto`] serves both on the same port: each
//! connection's first byte tells a TLS ClientHello (0x16) from the HTTP/2 preface.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which connections the gRPC port accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// TLS and plaintext HTTP/2 on the same port (the default).
    #[default]
    Auto,
    /// TLS only: plaintext connections are closed. Implied by `client_ca_file`.
    Required,
    /// Plaintext only.
    Off,
}

/// TLS settings of the gRPC listener (PEM files, read once at start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Which connections are accepted.
    pub mode: TlsMode,
    /// Server certificate chain. With neither this nor `key_file`, a self-signed certificate
    /// is generated at start (its SHA-256 fingerprint is logged), as the reference endpoint
    /// picker does: the gateways connect without checking it.
    pub cert_file: Option<PathBuf>,
    /// Private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// CA bundle client certificates must chain to. When set, every client must present a
    /// valid certificate (mutual TLS) and plaintext is refused.
    pub client_ca_file: Option<PathBuf>,
}

/// The TLS side of the listener, ready to accept.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// rustls settings (ALPN h2).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether plaintext connections are served too.
    pub plaintext_too: bool,
    /// SHA-256 fingerprint of the served certificate, hex with colons.
    pub fingerprint: String,
    /// Whether the certificate was generated at start.
    pub self_signed: bool,
}

impl TlsConfig {
    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_file.is_some()
    }

    /// The mode in force: mutual TLS never accepts plaintext.
    pub fn effective_mode(&self) -> TlsMode {
        if self.is_mutual() && self.mode != TlsMode::Off {
            TlsMode::Required
        } else {
            self.mode
        }
    }

    /// Checks the settings; the error is `(field, message)` under `tls.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("tls.{f}");
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err((field("key_file"), "required with cert_file".into())),
            (None, Some(_)) => return Err((field("cert_file"), "required with key_file".into())),
            _ => {}
        }
        if self.mode == TlsMode::Off && self.is_mutual() {
            return Err((
                field("client_ca_file"),
                "mutual TLS needs TLS: remove it or set tls.mode to required".into(),
            ));
        }
        for (name, path) in [
            ("cert_file", self.cert_file.as_ref()),
            ("key_file", self.key_file.as_ref()),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err((field(name), format!("{} is not a file", path.display())));
            }
        }
        Ok(())
    }

    /// Reads the files (or generates a certificate) into the listener's TLS side; `None` in
    /// mode `off`. Errors name the file, never its content.
    pub fn server_tls(&self) -> anyhow::Result<Option<ServerTls>> {
        let mode = self.effective_mode();
        if mode == TlsMode::Off {
            return Ok(None);
        }
        let (chain, key, self_signed) = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?, false),
            _ => {
                let (chain, key) = self_signed_certificate()?;
                (chain, key, true)
            }
        };
        let fingerprint = fingerprint(&chain[0]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_chain(ca).context("tls.client_ca_file")? {
                    roots
                        .add(cert)
                        .with_context(|| format!("tls.client_ca_file: {}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .context("tls.client_ca_file: client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .context("tls: the certificate does not match its key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(ServerTls {
            config: Arc::new(config),
            plaintext_too: mode == TlsMode::Auto,
            fingerprint,
            self_signed,
        }))
    }
}

/// A certificate for `localhost` and the host's name, valid from now for ten years, with an
/// ECDSA P-256 key.
fn self_signed_certificate()
-> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut names = vec!["localhost".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    let mut params = rcgen::CertificateParams::new(names).context("self-signed certificate")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kvroute");
    let key = rcgen::KeyPair::generate().context("self-signed certificate key")?;
    let cert = params
        .self_signed(&key)
        .context("self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

/// SHA-256 of a certificate, as `AB:CD:...`.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        anyhow::bail!("{what}: {} is not a PEM file", path.display());
    }
    Ok(pem)
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, "tls.cert_file")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls: {} holds no valid certificate", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("tls: {} holds no certificate", path.display());
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, "tls.key_file")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("tls.key_file: {} holds no private key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_by_default_with_a_fingerprint() {
        let tls = TlsConfig::default().server_tls().unwrap().unwrap();
        assert!(tls.self_signed && tls.plaintext_too);
        assert_eq!(tls.fingerprint.len(), 32 * 3 - 1);
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);
        let off = TlsConfig {
            mode: TlsMode::Off,
            ..TlsConfig::default()
        };
        assert!(off.server_tls().unwrap().is_none());
    }

    #[test]
    fn half_a_pair_and_mutual_without_tls_are_refused() {
        let half = TlsConfig {
            cert_file: Some("/etc/hostname".into()),
            ..TlsConfig::default()
        };
        assert_eq!(half.validate().unwrap_err().0, "tls.key_file");
        let contradiction = TlsConfig {
            mode: TlsMode::Off,
            client_ca_file: Some("/etc/hostname".into()),
            ..TlsConfig::default()
        };
        assert_eq!(
            contradiction.validate().unwrap_err().0,
            "tls.client_ca_file"
        );
        let mutual = TlsConfig {
            client_ca_file: Some("/etc/hostname".into()),
            ..TlsConfig::default()
        };
        assert_eq!(mutual.effective_mode(), TlsMode::Required);
    }
}
