//! `tutti-sfu`: one SFU shard process; `tutti-sfu drain` drains the shard on this host
//! (the pod's preStop hook).

use clap::Parser;
use std::process::ExitCode;
use tutti_sfu::cli;
use tutti_sfu::config::ShardArgs;
use tutti_sfu::drain::{self, DrainArgs};

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "drain") {
        let args = DrainArgs::parse_from(std::env::args_os().skip(1));
        return match drain::run(&args).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tutti-sfu drain: {err}");
                ExitCode::from(2)
            }
        };
    }
    let args = ShardArgs::parse();
    tutti_service::process::init_logging(args.log_format);
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("tutti-sfu: {err}");
            ExitCode::from(2)
        }
    }
}
