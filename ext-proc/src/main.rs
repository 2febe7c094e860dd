//! The `kvroute` binary.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kvroute::cli::{Cli, Command, LogFormat};
use kvroute::config::Config;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let mut warnings = Vec::new();
    match kvroute::config::load_any(path, &mut warnings).and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT. Call before announcing readiness: the handlers are installed
/// when this returns, not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut running = kvroute::server::start(config).await?;
    let stop = shutdown_signal()?;
    tracing::info!(
        grpc = %running.grpc_addr,
        health = %running.health_addr,
        metrics = %running.metrics_addr,
        admin = %running.admin_addr,
        "kvroute listening"
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", running.ready_line())?;
        out.flush()?;
    }
    tokio::select! {
        () = stop => {}
        r = running.wait_failure() => return r,
    }
    tracing::info!("shutting down");
    if !running.shutdown().await {
        tracing::warn!("grace period over, in-flight streams cut");
    }
    Ok(())
}

/// Exit status of a configuration error (as clap's usage errors).
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve(args) => {
            let resolved = match args.resolve() {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(CONFIG_ERROR);
                }
            };
            init_tracing(args.log_format(), args.log_filter());
            for w in &resolved.warnings {
                tracing::warn!("{w}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("error: cannot start the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(resolved.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
