//! The command-line binary: dry runs and bad input.

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvroute-bench"))
}

#[test]
fn dry_run_writes_the_workload_and_oracle() {
    let path = std::env::temp_dir().join(format!("kvroute-bench-dry-{}.json", std::process::id()));
    let out = bench()
        .args([
            "run",
            "--target",
            "a=http://127.0.0.1:9",
            "--workload",
            "gie-low-cache",
        ])
        .args([
            "--scale",
            "0.02",
            "--prompts-per-group",
            "2",
            "--dry-run",
            "--report",
        ])
        .arg(&path)
        .output()
        .expect("run kvroute-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("oracle hit rate"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("report")).expect("JSON");
    std::fs::remove_file(&path).ok();
    // 256 groups x 0.02 = 5 groups, 2 prompts each; system 256 / question 2048 tokens.
    assert_eq!(report["workload"]["requests"], 10);
    assert_eq!(report["workload"]["shape"]["system_tokens"], 256);
    let oracle = report["workload"]["oracle_hit_rate"]
        .as_f64()
        .expect("oracle");
    // One of two prompts per group hits the 256-token system prompt: 5 * 256 / (10 * 2305).
    assert!(
        (oracle - 5.0 * 256.0 / (10.0 * 2305.0)).abs() < 1e-3,
        "{oracle}"
    );
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = bench()
        .args(["run", "--target", "no-equals-sign", "--dry-run"])
        .output()
        .expect("run kvroute-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=VALUE"));
    let out = bench()
        .args([
            "run",
            "--target",
            "a=http://x",
            "--engines",
            "b=http://y",
            "--dry-run",
        ])
        .output()
        .expect("run kvroute-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a --target"));
}

#[test]
fn envoy_config_renders_the_shipped_file_with_a_plain_listener() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../../envoy/envoy.yaml");
    let path = std::env::temp_dir().join(format!("kvroute-envoy-{}.yaml", std::process::id()));
    let out = bench()
        .args(["envoy-config", "--template", template])
        .args([
            "--listen",
            "127.0.0.1:10101",
            "--kvroute",
            "127.0.0.1:19002",
        ])
        .args([
            "--engine",
            "127.0.0.1:18001",
            "--plain-listen",
            "127.0.0.1:10100",
        ])
        .arg("--output")
        .arg(&path)
        .output()
        .expect("run kvroute-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&path).expect("rendered config");
    std::fs::remove_file(&path).ok();
    assert!(yaml.contains("name: roundrobin"), "{yaml}");
    assert!(yaml.contains("port_value: 10100") && yaml.contains("port_value: 18001"));
    assert!(yaml.contains("envoy.filters.http.ext_proc"));
}

#[test]
fn overhead_rejects_zero_concurrency() {
    let out = bench()
        .args([
            "overhead",
            "--target",
            "a=http://127.0.0.1:9",
            "--concurrency",
            "0",
        ])
        .output()
        .expect("run kvroute-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--concurrency"));
}
