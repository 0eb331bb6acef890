//! `tutti-bench`: measures what the shard costs per forwarded packet on this machine.
//!
//! ```text
//! cargo run --release --bin tutti-bench -- fanout   --publishers 1 --subscribers 50 --seconds 20 [--pin] [--sfu janus]
//! cargo run --release --bin tutti-bench -- baseline --publishers 1 --subscribers 50 --seconds 20 [--pin]
//! cargo run --release --bin tutti-bench -- broadcast --viewers 200 --edges 3 --seconds 20 [--pli-every-ms 1000]
//! ```
//!
//! Progress goes to stderr; the last line on stdout is one JSON object with the figures.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tutti_sfu::config::ShardArgs;
use tutti_tests::bench::broadcast::{self, BroadcastArgs};
use tutti_tests::bench::fanout::FanoutArgs;
use tutti_tests::bench::{RunArgs, baseline, fanout, side_by_side};

#[derive(Parser)]
#[command(name = "tutti-bench", about = "Benchmarks of the Tutti SFU shard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P publishers and N subscribers, real WebRTC peers, through a shard child process
    /// (or Janus VideoRoom with `--sfu janus`).
    Fanout(FanoutArgs),
    /// The same packets through a plain UDP relay child process.
    Baseline(RunArgs),
    /// `fanout` with lean subscribers and `baseline` at the same time, both children on
    /// one core: one machine speed for both, and the ratio of their CPU per packet.
    SideBySide(RunArgs),
    /// A presenter on an origin shard relayed by edge shards to many viewers, in-process.
    Broadcast(BroadcastArgs),
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
            tutti_service::process::init_logging(args.log_format);
            tutti_sfu::cli::run(*args)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        Command::Relay => baseline::relay().await,
        Command::Fanout(args) => fanout::run(&args).await.map(print),
        Command::Baseline(args) => baseline::run(&args).await.map(print),
        Command::SideBySide(args) => side_by_side::run(&args).await.map(print_json),
        Command::Broadcast(args) => {
            tutti_service::process::init_logging(tutti_service::process::LogFormat::Text);
            broadcast::run(&args).await.map(print_json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tutti-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: serde::Serialize>(report: T) {
    match serde_json::to_string(&report) {
        Ok(line) => println!("{line}"),
        Err(err) => eprintln!("tutti-bench: cannot encode the report: {err}"),
    }
}

fn print(report: tutti_tests::bench::report::Report) {
    print_json(report);
}
