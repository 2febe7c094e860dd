//! The `kvroute` binary: check-config and serve.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kvroute");

#[test]
fn check_config_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/kvroute.example.yaml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("policy: cache_aware"), "{stdout}");
}

#[test]
fn check_config_reports_errors_with_location() {
    let dir = std::env::temp_dir().join(format!("kvroute-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "grpc_addr: 127.0.0.1:9002\nworkerz: []\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workerz") && stderr.contains("line 2"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_prints_the_ready_line_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--worker",
            "http://127.0.0.1:1",
            "--policy",
            "round_robin",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("kvroute ready ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let keys: Vec<&str> = rest
        .split(' ')
        .map(|kv| {
            let (key, addr) = kv.split_once('=').unwrap();
            addr.parse::<std::net::SocketAddr>().unwrap();
            key
        })
        .collect();
    assert_eq!(keys, ["grpc", "health", "metrics", "admin"]);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("kvroute did not exit within 10 s of SIGTERM");
}

#[test]
fn serve_rejects_unknown_policy() {
    let out = Command::new(BIN)
        .args(["serve", "--policy", "nope", "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unsupported_picker_plugin_is_a_one_line_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("kvroute-epp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plugins.yaml");
    std::fs::write(
        &file,
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n\
         plugins:\n- type: latency-scorer\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config-file")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("latency-scorer") && stderr.contains("supported"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_reads_the_charts_endpoint_picker_config() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/default-plugins.yaml"
    );
    let out = Command::new(BIN)
        .args(["check-config", fixture])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("policy: scorer"), "{stdout}");
}

#[test]
fn a_missing_certificate_directory_is_a_one_line_error_and_nothing_starts() {
    let out = Command::new(BIN)
        .args([
            "--cert-path",
            "/nonexistent/kvroute-certs",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.cert_file") && stderr.contains("/nonexistent/kvroute-certs/tls.crt"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty(), "nothing started");
}
