//! End to end against two real `kvroute-sim` processes: interleaved targets, then a flushed
//! sequential run. The simulator binary comes from `KVROUTE_SIM_BIN`, or the workspace target
//! directory (`make test` builds it first).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use kvroute_bench::cli::{Cli, Command, run_command};
use kvroute_bench::overhead::overhead_command;
use kvroute_bench::report::{Report, TargetReport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

fn sim_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KVROUTE_SIM_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/kvroute-sim")
}

/// Starts a simulator on a free port; returns the process and its base URL.
async fn start_sim(id: &str) -> (Child, String) {
    let bin = sim_bin();
    assert!(
        bin.exists(),
        "kvroute-sim binary not found at {}: build it first (`cargo build -p kvroute-sim`) or set KVROUTE_SIM_BIN",
        bin.display()
    );
    let mut child = Process::new(&bin)
        .args([
            "--port",
            "0",
            "--engine",
            "vllm",
            "--model",
            "sim-model",
            "--id",
            id,
        ])
        .args([
            "--block-size",
            "16",
            "--kv-blocks",
            "8192",
            "--chars-per-token",
            "4",
        ])
        .args(["--prefill-overhead-ms", "1", "--prefill-us-per-token", "5"])
        .args([
            "--decode-us-per-token",
            "200",
            "--max-running",
            "64",
            "--time-scale",
            "1",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("kvroute-sim did not start within 30 s")
        .expect("reading kvroute-sim output")
        .expect("kvroute-sim exited");
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("unexpected kvroute-sim output: {line}"));
    (child, format!("http://{addr}"))
}

fn parse_run(args: &[&str]) -> kvroute_bench::cli::RunArgs {
    let mut argv = vec!["kvroute-bench", "run"];
    argv.extend_from_slice(args);
    match Cli::parse_from(argv).command {
        Command::Run(a) => a,
        other => panic!("expected `run`, got {other:?}"),
    }
}

const SHAPE: &[&str] = &[
    "--groups",
    "4",
    "--prompts-per-group",
    "4",
    "--system-tokens",
    "256",
    "--question-tokens",
    "32",
    "--output-tokens",
    "8",
    "--seed",
    "9",
    "--quiet",
    "--timeout",
    "30",
];

fn check_complete(t: &TargetReport, n: usize) {
    assert_eq!(t.requests, n, "{}", t.name);
    assert_eq!(t.succeeded, n, "{}: errors {:?}", t.name, t.errors);
    assert!(t.errors.is_empty());
    assert_eq!(t.ttft_ms.count, n);
    assert!(t.ttft_ms.p50 > 0.0 && t.ttft_ms.p50 <= t.ttft_ms.p99 && t.ttft_ms.p99 <= t.e2e_ms.max);
    assert!(t.requests_per_s > 0.0 && t.output_tokens_per_s > 0.0);
    assert_eq!(t.workers.len(), 1);
    assert_eq!(t.workers[0].requests, Some(n as f64));
    assert_eq!(t.share_max_over_mean, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simulated_engines() {
    let (_a, url_a) = start_sim("e1").await;
    let (_b, url_b) = start_sim("e2").await;
    let dir = std::env::temp_dir().join(format!("kvroute-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (json, plot) = (dir.join("report.json"), dir.join("plot.svg"));
    let (ta, tb) = (format!("a={url_a}"), format!("b={url_b}"));
    let mut args = vec![
        "--target",
        &ta,
        "--engines",
        &ta,
        "--target",
        &tb,
        "--engines",
        &tb,
    ];
    args.extend_from_slice(SHAPE);
    let (json_s, plot_s) = (json.to_string_lossy(), plot.to_string_lossy());
    args.extend_from_slice(&["--api", "completions", "--concurrency", "1", "--chunk", "4"]);
    args.extend_from_slice(&["--report", &json_s, "--plot", &plot_s]);
    let report = run_command(&parse_run(&args)).await.expect("run");

    let oracle = report.workload.oracle_hit_rate;
    assert_eq!(report.workload.requests, 16);
    assert_eq!(report.model, "sim-model");
    assert!(oracle > 0.6 && oracle < 0.7, "oracle {oracle}");
    assert_eq!(report.targets.len(), 2);
    for t in &report.targets {
        check_complete(t, 16);
        // One engine and one request at a time: the engine sees what the oracle predicts.
        let hit = t.engine_hit_rate.expect("engine hit rate");
        assert!(
            (hit - oracle).abs() < 0.03,
            "{}: engine hit {hit} vs oracle {oracle}",
            t.name
        );
        let client = t.client_hit_rate.expect("client hit rate");
        assert!(
            (client - hit).abs() < 0.03,
            "{}: client {client} vs engine {hit}",
            t.name
        );
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report file"))
            .expect("report JSON");
    assert_eq!(written["mode"], "interleaved");
    assert_eq!(written["targets"][1]["name"], "b");
    assert_eq!(written["targets"][0]["requests"], 16);
    assert_eq!(written["workload"]["oracle_hit_rate"], oracle);
    let svg = std::fs::read_to_string(&plot).expect("plot file");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // Same prompts again on engine a: without the flush nearly everything would hit.
    let mut again = vec![
        "--target",
        &ta,
        "--engines",
        &ta,
        "--flush",
        "--concurrency",
        "2",
    ];
    again.extend_from_slice(SHAPE);
    let report: Report = run_command(&parse_run(&again)).await.expect("flushed run");
    check_complete(&report.targets[0], 16);
    let hit = report.targets[0].engine_hit_rate.expect("engine hit rate");
    assert!(
        hit < oracle + 0.1 && hit > oracle - 0.3,
        "after flush: hit {hit} vs oracle {oracle}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overhead_alternates_targets_and_reports_every_cell() {
    let (a, url_a) = start_sim("o1").await;
    let (_b, url_b) = start_sim("o2").await;
    let pid = a.id().expect("pid").to_string();
    let (ta, tb, watch) = (
        format!("a={url_a}"),
        format!("b={url_b}"),
        format!("sim={pid}"),
    );
    let metrics = format!("sim={url_a}/metrics");
    let argv = [
        "kvroute-bench",
        "overhead",
        "--target",
        &ta,
        "--target",
        &tb,
        "--model",
        "sim-model",
        "--prompt-bytes",
        "256,2048",
        "--concurrency",
        "1,4",
        "--requests",
        "40",
        "--watch-pid",
        &watch,
        "--metrics",
        &metrics,
        "--quiet",
    ];
    let Command::Overhead(args) = Cli::parse_from(argv).command else {
        panic!("expected `overhead`");
    };
    let report = overhead_command(&args).await.expect("overhead");
    assert_eq!(report.targets, ["a", "b"]);
    assert_eq!(report.cells.len(), 4);
    for cell in &report.cells {
        assert_eq!(cell.targets.len(), 2);
        for t in &cell.targets {
            assert_eq!(t.latency_ms.count, 40, "{}: {:?}", t.name, t.errors);
            assert!(t.errors.is_empty());
            assert!(t.latency_ms.p50 > 0.0 && t.requests_per_sec > 0.0);
        }
        assert_eq!(cell.deltas.len(), 1);
        assert_eq!(cell.deltas[0].baseline, "a");
        // The simulator exports no kvroute decision histogram.
        assert!(cell.decisions.is_empty());
    }
    assert_eq!(report.max_throughput.len(), 2);
    assert!(report.max_throughput.iter().all(|m| m.share[0].1 > 0.0));
    if cfg!(target_os = "linux") {
        assert!(
            report.cells[0].targets[0]
                .cpu_us_per_request
                .contains_key("sim")
        );
        let mem = &report.memory[0];
        assert!(mem.rest_kib.is_some_and(|k| k > 0) && mem.peak_kib.is_some_and(|k| k > 0));
    }
}
