//! The shard process: flags to a running shard, until a signal stops it. Shared by the
//! `tutti-sfu` binary and the benchmark, which runs a shard as a child process of itself.

use crate::config::{self, LogFormat, ShardArgs};
use crate::server::{ShardOptions, start};
use crate::shard::CoreConfig;
use crate::shard::api::PipelineSpec;

/// Installs the tracing subscriber.
pub fn init_logging(format: LogFormat) {
    // The WebRTC stack logs every malformed packet it drops; at info level a hostile
    // sender could fill the logs, so its crates only report errors unless RUST_LOG says
    // otherwise. Drops are counted in metrics instead.
    let default = "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,rtc_sctp=error,\
rtc_interceptor=error,rtc_rtp=error,rtc_rtcp=error,rtc_stun=error";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a shard until SIGINT or SIGTERM.
pub async fn run(args: ShardArgs) -> Result<(), Box<dyn std::error::Error>> {
    config::validate(&args)?;
    let (admin_token, admin_generated) =
        config::resolve_token(args.admin_token.as_deref(), args.dev, "--admin-token")?;
    let (signal_token, signal_generated) =
        config::resolve_token(args.signal_token.as_deref(), args.dev, "--signal-token")?;
    let mut core = CoreConfig::new(args.udp);
    core.ice = config::ice_timeouts(args.ice_failed_secs);
    core.max_pipelines = args.max_pipelines;
    core.max_participants = args.max_participants;
    if args.auto_create || args.dev {
        core.auto_create = Some(PipelineSpec::default());
    }
    let shard = start(ShardOptions {
        http: args.http,
        udp: args.udp,
        advertise_ip: args.advertise_ip,
        advertise_port: args.advertise_port,
        ice_tcp: !args.disable_ice_tcp,
        admin_token: admin_token.clone(),
        signal_token: signal_token.clone(),
        core,
    })
    .await?;
    if admin_generated || signal_generated {
        // Development only: the tokens were generated because none were given.
        println!("admin token:     {admin_token}");
        println!("signaling token: {signal_token}");
    }
    println!(
        "tutti-sfu: http://{} (signaling ws://{}/v1/signal), media udp {} advertised as {}",
        shard.http_addr, shard.http_addr, shard.udp_addr, shard.advertised
    );
    wait_for_signal().await;
    tracing::info!("stopping: telling sessions to reconnect");
    shard.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
