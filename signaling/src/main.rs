//! `tutti-gateway`: the signaling gateway; with no flags, the whole system on one machine.

use clap::Parser;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tutti_signaling::admission::{JoinClaims, TokenKeys, hash_password};
#[cfg(feature = "etcd")]
use tutti_signaling::cluster::{ClusterGateway, ClusterOptions};
use tutti_signaling::config::{Cli, Command, LocalRooms, RunArgs, TokenArgs};
#[cfg(feature = "local")]
use tutti_signaling::local::{LocalOptions, LocalSystem};
use tutti_signaling::session::GatewayOptions;
use tutti_signaling::turn::IceConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::HashPassword) => hash(),
        None => {
            tutti_service::process::init_logging(cli.run.log_format);
            run(cli.run).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("tutti-gateway: {err}");
            ExitCode::from(2)
        }
    }
}

type Failure = Box<dyn std::error::Error>;

async fn run(args: RunArgs) -> Result<(), Failure> {
    args.validate()?;
    let rooms = match &args.rooms {
        Some(path) => LocalRooms::load(path, args.no_auto_create)?,
        None => LocalRooms::from_file(Default::default(), args.no_auto_create)?,
    };
    let common = GatewayOptions {
        listen: args.listen,
        rooms,
        jwt_secret: args.jwt_secret.clone(),
        session_secret: args.session_secret.clone(),
        ice: IceConfig {
            stun_urls: args.stun_urls.clone(),
            turn_urls: args.turn_urls.clone(),
            turn_secret: args.turn_secret.clone(),
            ttl: Duration::from_secs(args.turn_ttl),
        },
        region: args.region.clone(),
        trust_forwarded_for: args.trust_forwarded_for,
        rooms_per_client: args.rooms_per_client,
        metrics_listen: args.metrics_listen,
        turn_grants_per_client: args.turn_grants_per_client,
        sockets: tutti_signaling::sockets::SocketLimits {
            max_sockets: args.max_sockets,
            per_client: args.sockets_per_client,
        },
    };
    // Without the `etcd` feature `StoreArgs::etcd` refuses every etcd URL with a message
    // saying how to build a cluster gateway.
    #[cfg(feature = "etcd")]
    if let Some(etcd) = args.store.etcd()? {
        if args.session_secret.is_none() {
            tracing::warn!(
                "no --session-secret: clients can resume sessions only through this gateway"
            );
        }
        let gateway = ClusterGateway::start(ClusterOptions {
            common,
            etcd,
            shard_signal_token: args.shard_signal_token.clone().unwrap_or_default(),
            route_wait: Duration::from_secs(args.route_wait),
            shard_networks: tutti_signaling::shard_urls::ShardNetworks::parse(
                &args.shard_networks,
            )?,
        })
        .await?;
        println!("tutti-gateway: listening on {}", gateway.url());
        println!(
            "tutti-gateway: cluster mode, live state in {}",
            args.store.store
        );
        tutti_service::process::wait_for_signal().await;
        tracing::info!("stopping: telling clients to reconnect");
        gateway.stop().await;
        return Ok(());
    }
    run_local(args, common).await
}

#[cfg(feature = "local")]
async fn run_local(args: RunArgs, common: GatewayOptions) -> Result<(), Failure> {
    let options = LocalOptions {
        common,
        shards: args.shards,
        media_bind: args.media_bind,
        media_port: args.media_port,
        advertise_ip: args.media_advertise_ip(),
        shard_max_participants: args.shard_max_participants,
        record_dir: args.record_dir.clone(),
        record_retention_days: args.record_retention_days,
        record_compose: args.record_compose,
        record_store: args.record_store.config()?,
        hls_dir: args.hls_dir.clone(),
    };
    let system = LocalSystem::start(options).await?;
    let url = system.url();
    println!("tutti-gateway: listening on {url}");
    println!(
        "tutti-gateway: local mode, {} embedded shards; open {url}/?room=lesson&name=YourName",
        system.shards.len()
    );
    tutti_service::process::wait_for_signal().await;
    tracing::info!("stopping: telling clients to reconnect");
    system.stop().await;
    Ok(())
}

#[cfg(not(feature = "local"))]
async fn run_local(_: RunArgs, _: GatewayOptions) -> Result<(), Failure> {
    Err(
        "this gateway was built without local mode (the `local` feature): give it \
         --store etcd://... to run in a cluster"
            .into(),
    )
}

fn token(args: TokenArgs) -> Result<(), Failure> {
    let keys = TokenKeys::new(args.jwt_secret.as_bytes())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = JoinClaims {
        room: args.room,
        name: args.name,
        publish: !args.no_publish,
        subscribe: !args.no_subscribe,
        exp: now.saturating_add(args.ttl),
        nbf: None,
        record: args.record,
    };
    println!("{}", keys.issue(&claims)?);
    Ok(())
}

fn hash() -> Result<(), Failure> {
    let mut password = String::new();
    std::io::stdin().take(1024).read_to_string(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    println!("{}", hash_password(password)?);
    Ok(())
}
