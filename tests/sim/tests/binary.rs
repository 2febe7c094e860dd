//! The `kvroute-sim` binary: prints its real port, serves, exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(unix)]
#[tokio::test]
async fn binary_prints_port_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvroute-sim"))
        .args([
            "--port", "0", "--engine", "sglang", "--model", "m1", "--model", "m2", "--id", "s-1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader")
    .expect("listening line");
    assert!(
        line.starts_with("kvroute-sim listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(line.trim_end().ends_with("engine=sglang"), "{line}");
    let port: u16 = line
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port in line");
    assert_ne!(port, 0);

    let r = reqwest::get(format!("http://127.0.0.1:{port}/v1/models"))
        .await
        .expect("models");
    assert_eq!(
        r.headers()
            .get("x-kvroute-sim-id")
            .and_then(|v| v.to_str().ok()),
        Some("s-1")
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = child.try_wait().expect("wait") {
            break code;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("simulator did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvroute-sim"))
        .args(["--port", "0", "--engine", "tgi", "--model", "m"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_kvroute-sim"))
        .args(["--port", "0"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success(), "a model name is required");
}
