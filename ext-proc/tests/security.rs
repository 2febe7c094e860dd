//! Security properties: client-supplied destinations are never honoured, TLS and mutual TLS
//! on the gRPC port, and the admin token never reaches logs, summaries or debug output.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::certs::TestPki;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use kvroute::proto::header_value;
use kvroute::tls::{TlsConfig, TlsMode};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DEST: &str = "x-gateway-destination-endpoint";

fn destination_of(r: &ProcessingResponse) -> Option<String> {
    let common = match r.response.as_ref()? {
        Response::RequestHeaders(h) => h.response.as_ref()?,
        Response::RequestBody(b) => b.response.as_ref()?,
        _ => return None,
    };
    common
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == DEST)
        .and_then(header_value)
        .map(str::to_owned)
}

fn metadata_destination(r: &ProcessingResponse) -> Option<String> {
    let ns = r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    let Some(Kind::StructValue(ns)) = ns.kind.as_ref() else {
        return None;
    };
    match ns.fields.get(DEST)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// Request metadata already carrying destination keys in the picker's namespace (and the
/// served key), as a hostile or misconfigured upstream filter could set.
fn forged_metadata() -> Metadata {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    };
    let mut md = Metadata::default();
    md.filter_metadata.insert(
        "envoy.lb".to_owned(),
        Struct {
            fields: [
                (DEST.to_owned(), s("10.6.6.6:80")),
                (format!("{DEST}-served"), s("10.6.6.6:80")),
            ]
            .into_iter()
            .collect(),
        },
    );
    md
}

#[tokio::test]
async fn forged_envoy_lb_metadata_is_ignored_in_every_body_mode() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1, &w2]), 2).await;
    let known = [w1.addr.to_string(), w2.addr.to_string()];
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        let mut s = Session::open(&running).await;
        s.send(request_headers(
            "POST",
            "/v1/completions",
            &[(DEST, "10.6.6.6:80")],
            false,
            mode,
            Some(forged_metadata()),
        ))
        .await;
        s.send(request_body(COMPLETION, true)).await;
        let mut decided = None;
        for _ in 0..3 {
            let r = s.recv().await;
            if let Some(dest) = destination_of(&r) {
                assert_eq!(metadata_destination(&r).as_deref(), Some(dest.as_str()));
                decided = Some(dest);
                break;
            }
        }
        let dest = decided.expect("a routing decision");
        for e in dest.split(',') {
            assert!(known.contains(&e.to_owned()), "{mode:?}: {e} is not ours");
        }
        drop(s);
    }
    wait_until(|| async { in_flight(&running).await == 0 }).await;
    running.shutdown().await;
}

/// Opens an ext_proc stream over `channel` and routes one buffered completion.
async fn route_once(channel: Channel) -> Result<String, tonic::Status> {
    let mut client = ExternalProcessorClient::new(channel);
    let msgs: Vec<ProcessingRequest> = vec![
        request_headers(
            "POST",
            "/v1/completions",
            &[],
            false,
            BodySendMode::Buffered,
            None,
        ),
        request_body(COMPLETION, true),
    ];
    let mut rx = client
        .process(futures_util::stream::iter(msgs))
        .await?
        .into_inner();
    while let Some(r) = rx.message().await? {
        if let Some(dest) = destination_of(&r) {
            return Ok(dest);
        }
    }
    Err(tonic::Status::unknown("no decision"))
}

async fn tls_channel(
    port: u16,
    pki: &TestPki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(TestPki::read(&pki.ca)))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(
            TestPki::read(&pki.client_cert),
            TestPki::read(&pki.client_key),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("valid uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

#[tokio::test]
async fn grpc_port_serves_tls_and_refuses_plaintext() {
    let pki = TestPki::generate("tls");
    let w = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w]);
    cfg.tls = TlsConfig {
        mode: TlsMode::Required,
        cert_file: Some(pki.server_cert.clone()),
        key_file: Some(pki.server_key.clone()),
        client_ca_file: None,
    };
    let running = start(cfg, 1).await;
    let port = running.grpc_addr.port();

    let channel = tls_channel(port, &pki, false).await.expect("TLS connect");
    assert_eq!(route_once(channel).await.unwrap(), w.addr.to_string());

    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => route_once(ch).await.is_err(),
    };
    assert!(refused, "a plaintext client must not be served");
    running.shutdown().await;
}

#[tokio::test]
async fn auto_mode_serves_tls_and_plaintext_on_one_port() {
    let pki = TestPki::generate("auto");
    let w = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w]);
    cfg.tls = TlsConfig {
        cert_file: Some(pki.server_cert.clone()),
        key_file: Some(pki.server_key.clone()),
        ..TlsConfig::default()
    };
    assert_eq!(cfg.tls.mode, TlsMode::Auto, "auto is the default");
    let running = start(cfg, 1).await;
    let port = running.grpc_addr.port();
    for _ in 0..2 {
        let tls = tls_channel(port, &pki, false).await.expect("TLS connect");
        assert_eq!(route_once(tls).await.unwrap(), w.addr.to_string());
        let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .expect("plaintext connect");
        assert_eq!(route_once(plain).await.unwrap(), w.addr.to_string());
    }
    running.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_rejects_clients_without_a_certificate() {
    let pki = TestPki::generate("mtls");
    let w = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w]);
    cfg.tls = TlsConfig {
        mode: TlsMode::Auto,
        cert_file: Some(pki.server_cert.clone()),
        key_file: Some(pki.server_key.clone()),
        client_ca_file: Some(pki.ca.clone()),
    };
    let running = start(cfg, 1).await;
    let port = running.grpc_addr.port();

    let with_cert = tls_channel(port, &pki, true).await.expect("mTLS connect");
    assert_eq!(route_once(with_cert).await.unwrap(), w.addr.to_string());

    // With TLS 1.3 the client may finish its handshake before the server checks for a
    // certificate: the refusal then shows on the first call.
    let rejected = match tls_channel(port, &pki, false).await {
        Err(_) => true,
        Ok(ch) => route_once(ch).await.is_err(),
    };
    assert!(rejected, "a client without a certificate must be rejected");
    assert_eq!(running.shared.router().outstanding(), 0);
    running.shutdown().await;
}

#[test]
fn bad_tls_files_fail_validation_and_start() {
    let mut cfg = kvroute::config::Config {
        tls: TlsConfig {
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            ..TlsConfig::default()
        },
        ..kvroute::config::Config::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
    let not_pem = std::env::temp_dir().join(format!("kvroute-not-pem-{}", std::process::id()));
    std::fs::write(&not_pem, "hello").unwrap();
    cfg.tls = TlsConfig {
        cert_file: Some(not_pem.clone()),
        key_file: Some(not_pem.clone()),
        ..TlsConfig::default()
    };
    let err = cfg.tls.server_tls().unwrap_err();
    assert!(err.to_string().contains("not a PEM file"), "{err}");
    let _ = std::fs::remove_file(not_pem);
}

const TOKEN: &str = "tok-4f9c2b7e-never-log-me";

#[test]
fn admin_token_never_appears_in_summary_or_debug_output() {
    let yaml = format!("admin_addr: 0.0.0.0:9004\nadmin_token: {TOKEN}\n");
    let cfg = kvroute::config::Config::from_yaml(&yaml, "t.yaml").unwrap();
    cfg.validate().unwrap();
    assert!(!cfg.summary().contains(TOKEN));
    assert!(!format!("{cfg:?}").contains(TOKEN));
    assert!(!format!("{cfg:#?}").contains(TOKEN));
    assert_eq!(cfg.admin_token.as_deref(), Some(TOKEN));

    let dir = std::env::temp_dir().join(format!("kvroute-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("token set") && !text.contains(TOKEN),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_token_never_appears_in_debug_logs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("KVROUTE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    let admin = ready
        .split_whitespace()
        .find_map(|p| p.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no ready line: {ready}"))
        .to_owned();

    let http = reqwest::Client::new();
    let ok = http
        .get(format!("http://{admin}/workers"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let wrong = http
        .get(format!("http://{admin}/workers"))
        .bearer_auth(format!("{TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let added = http
        .post(format!("http://{admin}/workers"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"address": "127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success(), "{}", added.status());

    child.kill().unwrap();
    let _ = child.wait();
    let mut logs = ready;
    stdout.read_to_string(&mut logs).unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.len() > 200, "trace logging produced output: {logs}");
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
}
