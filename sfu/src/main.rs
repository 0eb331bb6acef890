//! `tutti-sfu`: one SFU shard process.

use clap::Parser;
use std::process::ExitCode;
use tutti_sfu::cli;
use tutti_sfu::config::ShardArgs;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ShardArgs::parse();
    cli::init_logging(args.log_format);
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("tutti-sfu: {err}");
            ExitCode::from(2)
        }
    }
}
