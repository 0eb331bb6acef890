//! `tutti-operator`: the controller process.

use axum::Router;
use axum::routing::get;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::placement::Strategy;
use tutti_operator::leader::{self, LeaseConfig};
use tutti_operator::metrics::Metrics;
use tutti_operator::run::{Settings, run, run_standalone};
use tutti_store::{EtcdStore, LiveView, LiveWriter, MemoryStore};

/// Flags (each with an environment variable, for the Deployment).
#[derive(Debug, Parser)]
#[command(
    name = "tutti-operator",
    version,
    about = "Tutti operator: places Rooms on SFU shards",
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the live state is (an etcd URL in a cluster).
    #[command(flatten)]
    store: tutti_store::StoreArgs,
    /// Run without Kubernetes: place the rooms recorded in the live state (a hand-run
    /// cluster). Run one standalone operator only: it does no leader election.
    #[arg(long, env = "TUTTI_STANDALONE")]
    standalone: bool,
    /// Edge shards one relay node (the origin or an edge) feeds at most.
    #[arg(long, env = "TUTTI_CASCADE_FANOUT", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    cascade_fanout: u16,
    /// Seats a cascade plans beyond its audience, in percent.
    #[arg(long, env = "TUTTI_CASCADE_HEADROOM", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=400))]
    cascade_headroom: u16,
    /// Seconds between compactions of the live state's history.
    #[arg(long, env = "TUTTI_COMPACT_EVERY", default_value_t = 300)]
    compact_every: u64,
    /// The shards' admin API token.
    #[arg(long, env = "TUTTI_SFU_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// How rooms are spread over shards.
    #[arg(long, env = "TUTTI_PLACEMENT", value_enum, default_value_t = Strategy::Packed)]
    placement: Strategy,
    /// The gateway's public URL, shown in each Room's `status.url`.
    #[arg(long, env = "TUTTI_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds between garbage collections.
    #[arg(long, env = "TUTTI_GC_PERIOD", default_value_t = 30)]
    gc_period: u64,
    /// Seconds a pipeline is left alone after its creation.
    #[arg(long, env = "TUTTI_GC_GRACE", default_value_t = 60)]
    gc_grace: u64,
    /// Address of the metrics and health server.
    #[arg(long, env = "TUTTI_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Namespace of the leader Lease (and of Events about ownerless pipelines).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This replica's identity.
    #[arg(long, env = "POD_NAME", default_value = "tutti-operator")]
    identity: String,
    /// Run without leader election (a single replica).
    #[arg(long, env = "TUTTI_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// The live state shard pods heartbeat to (defaults to --store).
    #[arg(long, env = "TUTTI_SHARD_STORE")]
    shard_store: Option<String>,
    /// The Secret whose keys `admin-token` and `signal-token` shard pods read.
    #[arg(long, env = "TUTTI_SHARD_TOKEN_SECRET", default_value = "tutti-tokens")]
    shard_token_secret: String,
    /// A Secret whose keys `username` and `password` log shard pods into etcd.
    #[arg(long, env = "TUTTI_SHARD_ETCD_SECRET")]
    shard_etcd_secret: Option<String>,
    /// A Secret whose `ca.crt` shard pods check etcd's certificate against.
    #[arg(long, env = "TUTTI_SHARD_ETCD_CA_SECRET")]
    shard_etcd_ca_secret: Option<String>,
    /// The service account shard pods run as.
    #[arg(long, env = "TUTTI_SHARD_SERVICE_ACCOUNT")]
    shard_service_account: Option<String>,
    /// Seconds between passes over each ShardPool (scaling decisions).
    #[arg(long, env = "TUTTI_POOL_PERIOD", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pool_period: u64,
    /// JSON logs.
    #[arg(long, env = "TUTTI_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Sets up etcd's authentication, as its root user: one user and role per component,
    /// each allowed only the keys it writes (see `tutti_store::etcd_auth`). Idempotent:
    /// the chart runs it at every install and upgrade.
    EtcdAuth(EtcdAuthArgs),
}

#[derive(Debug, clap::Args)]
struct EtcdAuthArgs {
    /// Where etcd is.
    #[command(flatten)]
    store: tutti_store::StoreArgs,
    /// etcd's root password (set on first run, kept or reset after).
    #[arg(long, env = "TUTTI_ETCD_ROOT_PASSWORD", hide_env_values = true)]
    root_password: String,
    /// The password of the `tutti-operator` user.
    #[arg(long, env = "TUTTI_ETCD_OPERATOR_PASSWORD", hide_env_values = true)]
    operator_password: String,
    /// The password of the `tutti-gateway` user.
    #[arg(long, env = "TUTTI_ETCD_GATEWAY_PASSWORD", hide_env_values = true)]
    gateway_password: String,
    /// The password of the `tutti-shard` user.
    #[arg(long, env = "TUTTI_ETCD_SHARD_PASSWORD", hide_env_values = true)]
    shard_password: String,
}

async fn etcd_auth(args: EtcdAuthArgs) -> Result<(), Box<dyn std::error::Error>> {
    let Some(etcd) = args.store.etcd()? else {
        return Err("etcd-auth needs --store etcd://…".into());
    };
    for (name, password) in [
        ("root", &args.root_password),
        ("operator", &args.operator_password),
        ("gateway", &args.gateway_password),
        ("shard", &args.shard_password),
    ] {
        if password.len() < 16 {
            return Err(format!("the {name} password must be at least 16 characters").into());
        }
    }
    tutti_store::etcd_auth::bootstrap(
        &etcd,
        &args.root_password,
        &tutti_store::etcd_auth::ComponentPasswords {
            operator: args.operator_password,
            gateway: args.gateway_password,
            shard: args.shard_password,
        },
    )
    .await?;
    println!("tutti-operator: etcd authentication is on, one user per component");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match args.command.take() {
        Some(Command::EtcdAuth(auth)) => etcd_auth(auth).await,
        None => operate(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("tutti-operator: {err}");
            ExitCode::from(2)
        }
    }
}

async fn operate(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.admin_token.len() < 22 {
        return Err("--admin-token must be at least 22 characters".into());
    }
    match args.store.etcd()? {
        Some(etcd) => {
            let store = EtcdStore::connect(&etcd, Duration::from_secs(5)).await?;
            operate_with(args, store).await
        }
        None => {
            tracing::warn!(
                "--store memory: the live state is this process's own; shards and gateways elsewhere cannot see it"
            );
            operate_with(args, MemoryStore::new()).await
        }
    }
}

async fn operate_with<S>(args: Args, store: S) -> Result<(), Box<dyn std::error::Error>>
where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let served = {
        let metrics = metrics.clone();
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ok" }))
            .route("/metrics", get(move || async move { metrics.encode() }));
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        })
    };
    let settings = Settings {
        admin_token: args.admin_token.clone(),
        strategy: args.placement,
        gc_period: Duration::from_secs(args.gc_period.max(1)),
        gc_grace: Duration::from_secs(args.gc_grace),
        shard_poll: Duration::from_secs(1),
        identity: args.identity.clone(),
        namespace: args.namespace.clone(),
        controller: tutti_operator::controller::Config {
            public_url: args.public_url.clone(),
            ..Default::default()
        },
        compact_every: Duration::from_secs(args.compact_every.max(10)),
        cascade: tutti_control::cascade::CascadeParams {
            fanout: usize::from(args.cascade_fanout),
            headroom: f64::from(args.cascade_headroom) / 100.0,
        },
        shards: tutti_operator::shard_pods::ShardRuntime {
            store: args
                .shard_store
                .clone()
                .unwrap_or_else(|| args.store.store.clone()),
            token_secret: args.shard_token_secret.clone(),
            etcd_secret: args.shard_etcd_secret.clone(),
            etcd_ca_secret: args.shard_etcd_ca_secret.clone(),
            service_account: args.shard_service_account.clone(),
        },
        pool_period: Duration::from_secs(args.pool_period),
    };
    if args.standalone {
        println!(
            "tutti-operator: standalone, placing rooms recorded in {}",
            args.store.store
        );
        let operator = tokio::spawn(run_standalone(store, settings, metrics, stop.clone()));
        tutti_shutdown().await;
        stop.cancel();
        let _ = operator.await;
        let _ = served.await;
        return Ok(());
    }
    let client = Client::try_default().await?;
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let lease = LeaseConfig {
        name: "tutti-operator".into(),
        identity: args.identity.clone(),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    };
    if !args.no_leader_election {
        tracing::info!(identity = %lease.identity, "waiting to lead");
        tokio::select! {
            _ = leader::acquire(&lease_api, &lease) => {}
            _ = tutti_shutdown() => return Ok(()),
        }
        tracing::info!("leading");
    }
    let operator = tokio::spawn(run(client, store, settings, metrics, stop.clone()));
    let lost = async {
        if args.no_leader_election {
            std::future::pending::<()>().await
        } else {
            leader::keep(&lease_api, &lease).await
        }
    };
    let outcome = tokio::select! {
        _ = tutti_shutdown() => Ok(()),
        _ = lost => Err("lost the leader lease; exiting so that only the leader writes".into()),
    };
    stop.cancel();
    let _ = operator.await;
    let _ = served.await;
    outcome
}

async fn tutti_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
