//! `kvroute-sim` binary: a simulated vLLM or SGLang engine.

use clap::Parser;
use kvroute_sim::kv_publisher::{self, PublisherConfig};
use kvroute_sim::{Cli, KvEventSink, NoopSink};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// How long open connections may run on after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut cli = Cli::parse();
    if let Err(e) = cli.sim.load_tokenizer() {
        eprintln!("kvroute-sim: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let listener = match TcpListener::bind((cli.host.as_str(), cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kvroute-sim: cannot bind {}:{}: {e}", cli.host, cli.port);
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvroute-sim: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut kv_line = String::new();
    let sink: Box<dyn KvEventSink> = match &cli.sim.kv_events_endpoint {
        None => Box::new(NoopSink),
        Some(endpoint) => {
            let topic = cli
                .sim
                .kv_events_topic
                .clone()
                .unwrap_or_else(|| format!("kv@{addr}@{}", cli.sim.primary_model()));
            let config = PublisherConfig {
                endpoint: endpoint.clone(),
                replay_endpoint: cli.sim.kv_events_replay_endpoint.clone(),
                topic,
                encoding: cli.sim.kv_events_encoding.wire(),
            };
            match kv_publisher::start(config).await {
                Ok((sink, bound)) => {
                    kv_line = format!(" kv_events={}", bound.endpoint);
                    if let Some(r) = &bound.replay_endpoint {
                        kv_line.push_str(&format!(" kv_replay={r}"));
                    }
                    Box::new(sink)
                }
                Err(e) => {
                    eprintln!("kvroute-sim: cannot bind kv events {endpoint}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    println!(
        "kvroute-sim listening on {addr} engine={}{kv_line}",
        cli.sim.engine.name()
    );
    let engine = kvroute_sim::engine(cli.sim, sink);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let graceful = async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
    };
    // Open streams get a short grace period after the signal, then are cut.
    let mut deadline_rx = stop_rx;
    let deadline = async move {
        let _ = deadline_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        r = kvroute_sim::serve(listener, engine, graceful) => r,
        () = deadline => Ok(()),
    };
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvroute-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
