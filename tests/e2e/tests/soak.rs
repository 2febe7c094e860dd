//! Soak: steady load through Envoy + kvroute + engines with faults injected, checking that
//! nothing is lost, every request is counted exactly once, and kvroute's memory stays flat.
//!
//! `SOAK_SECS` sets the length (default 60; `SOAK_SECS=3600 make soak` for an hour). The run
//! has two phases:
//! - faults (30 %): an engine killed and restarted, kvroute killed and restarted, all under
//!   load; no client request may fail (fail-open, retries, health checks), except streams
//!   already answered 200 by the engine that dies (headers precede prefill, as on vLLM),
//!   which are counted as cut and must follow the kill;
//! - steady (70 %): load with streams cut mid-way and bad inputs mixed in; kvroute's RSS is
//!   sampled every second, and at the end the client's counts, kvroute's decision counters
//!   and the engines' request counters must balance exactly, with nothing left in flight.
//!
//! The figures are printed and written to `target/e2e-logs/soak/report.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kvroute_e2e::openai::{chat_with_system, completion_body, read_sse};
use kvroute_e2e::{BodyMode, MODEL, Stack};
use serde_json::{Value, json};

/// Concurrent client loops.
const CLIENTS: usize = 4;

/// What clients saw, by outcome.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    streamed: AtomicU64,
    disconnected: AtomicU64,
    rejected: AtomicU64,
    /// Streams that broke after their 200 (their engine died): cannot be retried.
    cut: AtomicU64,
    /// When each cut was seen, to check that cuts only follow an engine's death.
    cut_at: std::sync::Mutex<Vec<Instant>>,
    lost: AtomicU64,
}

impl Tally {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Notes a stream cut after its 200 and returns the counter to bump.
    fn record_cut(&self, c: usize, i: u64, e: &anyhow::Error) -> &AtomicU64 {
        eprintln!("stream cut (client {c}, #{i}): {e:#}");
        self.cut_at.lock().unwrap().push(Instant::now());
        &self.cut
    }

    fn snapshot(&self) -> Value {
        json!({
            "sent": Self::get(&self.sent),
            "ok": Self::get(&self.ok),
            "streamed_to_done": Self::get(&self.streamed),
            "disconnected_mid_stream": Self::get(&self.disconnected),
            "bad_inputs_rejected": Self::get(&self.rejected),
            "streams_cut_by_engine_death": Self::get(&self.cut),
            "lost": Self::get(&self.lost),
        })
    }
}

/// Bad inputs mixed into the load; each must get a 4xx from kvroute.
fn bad_input(n: u64) -> (&'static str, Vec<u8>) {
    match n % 4 {
        0 => (
            "/v1/chat/completions",
            br#"{"model": "sim-model", "messages": ["#.to_vec(),
        ),
        1 => (
            "/v1/chat/completions",
            br#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
        ),
        2 => (
            "/v1/completions",
            format!(
                r#"{{"model":"sim-model","prompt":{}1{}}}"#,
                "[".repeat(500),
                "]".repeat(500)
            )
            .into_bytes(),
        ),
        _ => {
            let mut b = br#"{"model":"sim-model","prompt":""#.to_vec();
            b.extend_from_slice(&[0xc3, 0x28, 0xff]);
            b.extend_from_slice(br#""}"#);
            ("/v1/completions", b)
        }
    }
}

/// One request of the mix; records its outcome in `tally`.
async fn one_request(client: &reqwest::Client, base: &str, c: usize, i: u64, tally: &Tally) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    let system: String = (0..20)
        .map(|k| format!("Tenant {} instructions, clause {k}. ", (i + c as u64) % 16))
        .collect();
    let user = format!("client {c} question {i}");
    let url = |path: &str| format!("{base}{path}");
    let result: anyhow::Result<&AtomicU64> = async {
        match i % 10 {
            0..=5 => {
                let body = chat_with_system(MODEL, &system, &user, false, 4);
                let resp = client
                    .post(url("/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "chat: {}", resp.status());
                resp.bytes().await?;
                Ok(&tally.ok)
            }
            6 => {
                let body = chat_with_system(MODEL, &system, &user, true, 40);
                let resp = client
                    .post(url("/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "stream: {}", resp.status());
                match read_sse(resp).await {
                    Ok(_) => Ok(&tally.streamed),
                    Err(e) => Ok(tally.record_cut(c, i, &e)),
                }
            }
            7 => {
                // A client that hangs up after the first chunk of a long stream.
                let body = chat_with_system(MODEL, &system, &user, true, 2000);
                let resp = client
                    .post(url("/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "stream: {}", resp.status());
                // Headers go out before prefill, as on vLLM: an engine that dies during
                // prefill cuts the stream before its first chunk.
                let mut stream = resp.bytes_stream();
                match stream.next().await {
                    Some(Ok(_)) => Ok(&tally.disconnected),
                    Some(Err(e)) => Ok(tally.record_cut(c, i, &e.into())),
                    None => Ok(tally.record_cut(c, i, &anyhow::anyhow!("ended before a chunk"))),
                }
            }
            8 => {
                let (path, body) = bad_input(i / 10);
                let resp = client
                    .post(url(path))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let json: Value = resp.json().await?;
                // kvroute's OpenAI error, or (while kvroute is down and the gateway fails
                // open) the engine's own, vLLM-shaped error.
                let message = json["error"]["message"]
                    .as_str()
                    .or_else(|| json["message"].as_str());
                anyhow::ensure!(
                    (400..500).contains(&status) && message.is_some(),
                    "bad input {path}: {status} {json}"
                );
                Ok(&tally.rejected)
            }
            _ => {
                let body = completion_body(MODEL, &format!("{system} {user}"), false, 4);
                let resp = client
                    .post(url("/v1/completions"))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "completion: {}", resp.status());
                resp.bytes().await?;
                Ok(&tally.ok)
            }
        }
    }
    .await;
    match result {
        Ok(counter) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tally.lost.fetch_add(1, Ordering::Relaxed);
            eprintln!("lost request (client {c}, #{i}): {e:#}");
        }
    }
}

/// Runs the mix from `CLIENTS` loops until `stop`.
fn start_load(
    stack: &Stack,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let client = stack.client().clone();
            let base = stack.gateway_url("");
            let tally = tally.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    one_request(&client, &base, c, i, &tally).await;
                    i += 1;
                }
            })
        })
        .collect()
}

async fn stop_load(
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await?;
    }
    Ok(())
}

/// kvroute's resident memory in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counters the balance is checked on.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    forwarded: f64,
    rejected: f64,
    engine_requests: f64,
}

async fn counters(stack: &Stack) -> anyhow::Result<Counters> {
    let forwarded = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "forwarded")])
        .await?;
    let rejected = stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "4xx")])
        .await?;
    let mut engine_requests = 0.0;
    for i in 0..stack.sims().len() {
        engine_requests += stack.sim_counters(i).await?["requests"]
            .as_f64()
            .unwrap_or(0.0);
    }
    Ok(Counters {
        forwarded,
        rejected,
        engine_requests,
    })
}

/// Waits until nothing is in flight in kvroute or on any engine.
async fn quiesce(stack: &Stack) -> anyhow::Result<()> {
    stack
        .wait_workers(Duration::from_secs(30), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for sim in stack.sims() {
        loop {
            let busy = stack.sim_metric(sim, "vllm:num_requests_running").await?
                + stack.sim_metric(sim, "vllm:num_requests_waiting").await?;
            if busy == 0.0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{} still busy", sim.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_faults_loses_nothing_and_stays_flat() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(20);
    let fault_phase = Duration::from_secs(secs * 3 / 10);
    let steady_phase = Duration::from_secs(secs) - fault_phase;
    // A small prefix-index bound, reached within seconds: after that, growth is a leak.
    let config =
        "router:\n  model_policies:\n    sim-model: {name: cache_aware, max_index_bytes: 262144}\n";
    // Losing nothing across a picker crash needs BUFFERED: in FULL_DUPLEX_STREAMED Envoy
    // cannot fail open once a body has streamed to the dead picker (envoy/README.md).
    let mut stack = Stack::builder("soak")
        .policy("cache_aware")
        .body_mode(BodyMode::Buffered)
        .kvroute_config(config)
        .health_interval_ms(200)
        .start()
        .await?;

    // Phase 1: faults under load.
    let faults_tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&stack, faults_tally.clone(), stop.clone());
    let step = fault_phase / 5;
    tokio::time::sleep(step).await;
    let engine_killed = Instant::now();
    stack.kill_sim(3);
    tokio::time::sleep(step).await;
    stack.restart_sim(3).await?;
    tokio::time::sleep(step).await;
    stack.kill_kvroute();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.restart_kvroute().await?;
    tokio::time::sleep(step).await;
    stop_load(&stop, load).await?;
    quiesce(&stack).await?;
    println!("fault phase: {}", faults_tally.snapshot());

    // Phase 2: steady load, one kvroute process, exact accounting.
    let before = counters(&stack).await?;
    let pid = stack
        .kvroute_pid()
        .ok_or_else(|| anyhow::anyhow!("no kvroute"))?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&stack, tally.clone(), stop.clone());
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < steady_phase {
        if let Some(kib) = rss_kib(pid) {
            rss.push(kib);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_load(&stop, load).await?;
    let elapsed = started.elapsed().as_secs_f64();
    quiesce(&stack).await?;
    let after = counters(&stack).await?;

    let sent = Tally::get(&tally.sent);
    let routed =
        Tally::get(&tally.ok) + Tally::get(&tally.streamed) + Tally::get(&tally.disconnected);
    let forwarded = after.forwarded - before.forwarded;
    let rejected = after.rejected - before.rejected;
    let engines = after.engine_requests - before.engine_requests;
    let quarter = (rss.len() / 4).max(1);
    let first = mean(&rss[..quarter.min(rss.len())]);
    let last = mean(&rss[rss.len().saturating_sub(quarter)..]);
    let in_flight = stack
        .kvroute_metric("kvroute_requests_in_flight", &[])
        .await?;
    let report = json!({
        "soak_secs": secs,
        "clients": CLIENTS,
        "fault_phase": faults_tally.snapshot(),
        "faults_injected": ["engine sim-3 killed and restarted", "kvroute killed and restarted",
            "streams cut after the first chunk (1 in 10)", "bad inputs (1 in 10)"],
        "steady_phase": tally.snapshot(),
        "steady_requests_per_sec": sent as f64 / elapsed,
        "kvroute_forwarded": forwarded,
        "kvroute_rejected_4xx": rejected,
        "engine_requests": engines,
        "in_flight_at_end": in_flight,
        "kvroute_rss_kib": { "first_quarter_mean": first, "last_quarter_mean": last,
            "min": rss.iter().min(), "max": rss.iter().max(), "samples": rss.len() },
    });
    println!("soak report: {report:#}");
    let dir = stack.log_dir().to_path_buf();
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;

    assert_eq!(
        Tally::get(&faults_tally.lost),
        0,
        "requests lost during faults"
    );
    assert!(
        Tally::get(&faults_tally.cut) <= CLIENTS as u64,
        "more streams cut than were in flight on the killed engine"
    );
    for at in faults_tally.cut_at.lock().unwrap().iter() {
        let after_kill = at.saturating_duration_since(engine_killed);
        assert!(
            *at >= engine_killed && after_kill < Duration::from_secs(2),
            "a stream was cut {after_kill:?} after the engine was killed: not by its death"
        );
    }
    assert_eq!(Tally::get(&tally.cut), 0, "streams cut in the steady phase");
    assert!(
        Tally::get(&faults_tally.sent) > 50,
        "too little load in the fault phase"
    );
    assert_eq!(
        Tally::get(&tally.lost),
        0,
        "requests lost in the steady phase"
    );
    assert!(sent > 100, "too little load: {sent}");
    assert_eq!(
        sent,
        routed + Tally::get(&tally.rejected) + Tally::get(&tally.cut),
        "every request has one outcome"
    );
    assert_eq!(
        forwarded, routed as f64,
        "kvroute forwarded exactly what clients got routed"
    );
    assert_eq!(
        rejected,
        Tally::get(&tally.rejected) as f64,
        "kvroute rejected the bad inputs"
    );
    assert_eq!(
        engines, forwarded,
        "engines received exactly what kvroute forwarded"
    );
    assert_eq!(in_flight, 0.0, "in flight at the end");
    assert!(rss.len() >= 8, "too few memory samples: {}", rss.len());
    // Flat: the last quarter within 25 % + 8 MiB of the first (allocator and buffer warm-up).
    assert!(
        last <= first * 1.25 + 8192.0,
        "kvroute RSS grew from {first:.0} KiB to {last:.0} KiB"
    );
    Ok(())
}
