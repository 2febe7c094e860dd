//! `kvroute-bench` command line.

use clap::Parser;
use kvroute_bench::cli::{Cli, Command, print_summary, run_command};
use kvroute_bench::envoy_config::envoy_config_command;
use kvroute_bench::explain::explanation;
use kvroute_bench::overhead::overhead_command;
use kvroute_bench::overhead::report::table;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_command(&args).await.map(|r| {
            print_summary(&r);
            if args.explain && !r.targets.is_empty() {
                print!("\n{}", explanation(&r));
            }
        }),
        Command::Overhead(args) => overhead_command(&args)
            .await
            .map(|r| print!("{}", table(&r))),
        Command::EnvoyConfig(args) => envoy_config_command(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvroute-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
