//! `tutti-bench`: measures what the shard costs per forwarded packet on this machine.
//!
//! ```text
//! cargo run --release --bin tutti-bench -- fanout   --publishers 1 --subscribers 50 --seconds 20 [--pin]
//! cargo run --release --bin tutti-bench -- baseline --publishers 1 --subscribers 50 --seconds 20 [--pin]
//! ```
//!
//! Progress goes to stderr; the last line on stdout is one JSON object with the figures.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tutti_sfu::config::ShardArgs;
use tutti_tests::bench::{RunArgs, baseline, fanout};

#[derive(Parser)]
#[command(name = "tutti-bench", about = "Benchmarks of the Tutti SFU shard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P publishers and N subscribers, real WebRTC peers, through a shard child process.
    Fanout(RunArgs),
    /// The same packets through a plain UDP relay child process.
    Baseline(RunArgs),
    /// Runs a shard (the child process of `fanout`).
    #[command(hide = true)]
    ServeShard(Box<ShardArgs>),
    /// Runs the plain relay (the child process of `baseline`).
    #[command(hide = true)]
    Relay,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::ServeShard(args) => {
            tutti_sfu::cli::init_logging(args.log_format);
            tutti_sfu::cli::run(*args)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        Command::Relay => baseline::relay().await,
        Command::Fanout(args) => fanout::run(&args).await.map(print),
        Command::Baseline(args) => baseline::run(&args).await.map(print),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tutti-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(report: tutti_tests::bench::report::Report) {
    match serde_json::to_string(&report) {
        Ok(line) => println!("{line}"),
        Err(err) => eprintln!("tutti-bench: cannot encode the report: {err}"),
    }
}
