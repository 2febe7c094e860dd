//! `kvroute-bench` command line.

use clap::Parser;
use kvroute_bench::cli::{Cli, Command, print_summary, run_command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run_command(&args).await {
            Ok(report) => {
                print_summary(&report);
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvroute-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
