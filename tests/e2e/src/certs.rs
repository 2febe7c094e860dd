//! Test certificates made at test time with `rcgen`: a CA, a server certificate for
//! `localhost`/127.0.0.1 (kvroute's gRPC port) and a client certificate (Envoy), as PEM files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde::Serialize;

/// The PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// kvroute's certificate (SANs `localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// kvroute's key.
    pub server_key: PathBuf,
    /// Envoy's client certificate.
    pub client_cert: PathBuf,
    /// Envoy's client key.
    pub client_key: PathBuf,
}

/// kvroute's `tls:` config section.
#[derive(Debug, Clone, Serialize)]
pub struct ServerTls {
    /// Server certificate file.
    pub cert_file: PathBuf,
    /// Server key file.
    pub key_file: PathBuf,
    /// CA of accepted client certificates.
    pub client_ca_file: PathBuf,
}

/// What Envoy needs to reach kvroute over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// CA that signed kvroute's certificate.
    pub ca: PathBuf,
    /// Envoy's certificate.
    pub cert: PathBuf,
    /// Envoy's key.
    pub key: PathBuf,
}

impl TestPki {
    /// Generates fresh keys and certificates into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = common_name("kvroute test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |sans: Vec<String>, usage| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans.clone())?;
            // A subject distinct from the CA's: verifiers treat issuer == subject as self-signed.
            params.distinguished_name = common_name(&sans[0]);
            params.extended_key_usages = vec![usage];
            Ok((params.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            vec!["envoy.test".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |file: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(file);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }

    /// kvroute's `tls:` section: its certificate, and mutual TLS against the CA.
    pub fn kvroute_server(&self) -> ServerTls {
        ServerTls {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            client_ca_file: self.ca.clone(),
        }
    }

    /// Envoy's side of the connection to kvroute.
    pub fn envoy_client(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}
