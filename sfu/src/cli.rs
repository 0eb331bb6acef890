//! The shard process: flags to a running shard, until a signal stops it. Shared by the
//! `tutti-sfu` binary and the benchmark, which runs a shard as a child process of itself.

use crate::config::{self, ShardArgs};
use crate::heartbeat;
use crate::server::{ShardOptions, start};
use crate::shard::CoreConfig;
use crate::shard::api::PipelineSpec;
use std::time::Duration;
use tutti_service::process::wait_for_signal;

/// Longest wait for the advertised IP's file.
const ADVERTISE_WAIT: Duration = Duration::from_secs(900);

/// Waits until `path` holds an IP address (an absent or empty file means "not yet").
pub async fn wait_for_advertise_ip(
    path: &std::path::Path,
    timeout: Duration,
) -> Result<std::net::IpAddr, String> {
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        // A few bytes from a local file, once before the shard starts: no need for a
        // blocking-pool hop.
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() > 64 => {
                return Err(format!("{}: too long for an IP address", path.display()));
            }
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                if !text.is_empty() {
                    return text
                        .parse()
                        .map_err(|_| format!("{}: {text:?} is not an IP address", path.display()));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("{}: {err}", path.display())),
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "{} held no IP address after {}s",
                path.display(),
                timeout.as_secs()
            ));
        }
        if !told {
            println!(
                "tutti-sfu: waiting for the advertised IP in {}",
                path.display()
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a shard until SIGINT or SIGTERM.
pub async fn run(mut args: ShardArgs) -> Result<(), Box<dyn std::error::Error>> {
    config::validate(&args)?;
    if let Some(path) = &args.advertise_ip_file {
        args.advertise_ip = Some(wait_for_advertise_ip(path, ADVERTISE_WAIT).await?);
    }
    let (admin_token, admin_generated) =
        config::resolve_token(args.admin_token.as_deref(), args.dev, "--admin-token")?;
    let (signal_token, signal_generated) =
        config::resolve_token(args.signal_token.as_deref(), args.dev, "--signal-token")?;
    let mut core = CoreConfig::new(args.udp);
    core.ice = config::ice_timeouts(args.ice_consent_secs);
    core.max_pipelines = args.max_pipelines;
    core.max_participants = args.max_participants;
    if args.auto_create || args.dev {
        core.auto_create = Some(PipelineSpec::default());
    }
    let etcd = args.store.etcd()?;
    let ttl = Duration::from_secs(args.heartbeat_ttl);
    // With a live state the shard is ready only while its record is there.
    let registration = etcd.as_ref().map(|_| heartbeat::Registration::new(ttl));
    let shard = start(ShardOptions {
        http: args.http,
        udp: args.udp,
        advertise_ip: args.advertise_ip,
        advertise_port: args.advertise_port,
        ice_tcp: !args.disable_ice_tcp,
        admin_token: admin_token.clone(),
        signal_token: signal_token.clone(),
        core,
        name: args
            .shard_id
            .clone()
            .unwrap_or_else(|| format!("shard-{}", args.udp.port())),
        registration: registration.clone(),
        record_dir: args.record_dir.clone(),
        record_store: args.record_store.config()?,
        hls_dir: args.hls_dir.clone(),
        record_retention_days: args.record_retention_days,
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
    let heartbeat_stop = tokio_util::sync::CancellationToken::new();
    let heartbeat: Option<tokio::task::JoinHandle<()>> = match (etcd, registration) {
        // Without the `etcd` feature `StoreArgs::etcd` refuses every etcd URL, so there
        // is never a live state to heartbeat into.
        #[cfg(feature = "etcd")]
        (Some(etcd), Some(registration)) => {
            let store = tutti_store::EtcdStore::connect(&etcd, Duration::from_secs(5)).await?;
            let config = heartbeat::HeartbeatConfig {
                id: args
                    .shard_id
                    .clone()
                    .unwrap_or_else(|| format!("shard-{}", shard.udp_addr.port())),
                http_base: args
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", shard.http_addr)),
                region: args.region.clone(),
                region_file: args.region_file.clone(),
                probe: Some(shard.advertised.to_string()),
                labels: args
                    .labels
                    .iter()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                capacity: u32::try_from(args.max_participants).unwrap_or(u32::MAX),
                interval: Duration::from_secs(1),
                ttl,
            };
            println!(
                "tutti-sfu: heartbeat as {} to {}",
                config.id, args.store.store
            );
            Some(tokio::spawn(heartbeat::run(
                config,
                shard.handle.clone(),
                store,
                registration,
                heartbeat_stop.clone(),
            )))
        }
        _ => None,
    };
    wait_for_signal().await;
    tracing::info!("stopping: telling sessions to reconnect");
    // Out of the live state first, so nothing new is routed here, then drain.
    heartbeat_stop.cancel();
    if let Some(task) = heartbeat {
        let _ = task.await;
    }
    shard.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_advertised_ip_is_awaited_then_checked() {
        let dir = std::env::temp_dir().join(format!("tutti-advertise-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("ip");
        let _ = std::fs::remove_file(&path);
        let waiting = tokio::spawn({
            let path = path.clone();
            async move { wait_for_advertise_ip(&path, Duration::from_secs(30)).await }
        });
        // Empty first (the annotation is not there yet), then the address.
        std::fs::write(&path, "").expect("write");
        std::fs::write(&path, "203.0.113.9\n").expect("write");
        let ip = waiting.await.expect("task").expect("an IP");
        assert_eq!(ip.to_string(), "203.0.113.9");
        std::fs::write(&path, "not-an-ip").expect("write");
        let refused = wait_for_advertise_ip(&path, Duration::from_secs(1)).await;
        assert!(refused.is_err_and(|e| e.contains("not an IP")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
