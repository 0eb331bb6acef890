//! `tutti-sfu drain`: the pod's preStop hook. It tells the shard on this host to drain
//! (no new rooms or joins; gateways stop routing to it) and, with `--wait`, returns only
//! once no participant is left, so Kubernetes sends SIGTERM to an empty shard. The pod's
//! grace period (the pool's drain deadline) bounds the wait.

use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tutti_shard_api::client::ShardAdmin;

/// Flags of `tutti-sfu drain` (the shard's own environment variables work here too).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tutti-sfu drain",
    about = "Drain the shard on this host: no new rooms or joins, then wait until it is empty"
)]
pub struct DrainArgs {
    /// The shard's HTTP address (an unspecified IP means this host).
    #[arg(long, env = "TUTTI_SFU_HTTP", default_value = "127.0.0.1:7880")]
    pub http: SocketAddr,
    /// Bearer token of the shard's admin API.
    #[arg(long, env = "TUTTI_SFU_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Wait until no participant is left.
    #[arg(long)]
    pub wait: bool,
    /// Stop waiting after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    pub timeout: u64,
}

/// Where to reach a shard listening on `http`.
fn admin_base(http: SocketAddr) -> String {
    let ip = if http.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        http.ip()
    };
    format!("http://{}", SocketAddr::new(ip, http.port()))
}

/// Drains, and waits when asked. Returns the participants left when it stopped waiting.
pub async fn run(args: &DrainArgs) -> Result<u32, String> {
    let admin = ShardAdmin::new(&admin_base(args.http), &args.admin_token);
    let load = admin
        .drain()
        .await
        .map_err(|e| format!("the shard did not take the drain: {e}"))?;
    println!(
        "tutti-sfu drain: draining, {} participants on the shard",
        load.participants
    );
    if !args.wait {
        return Ok(load.participants);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut left = load.participants;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match admin.load().await {
            Ok(load) => left = load.participants,
            // The shard went away (stopped, crashed): nothing left to wait for.
            Err(err) => {
                println!("tutti-sfu drain: the shard stopped answering ({err})");
                return Ok(0);
            }
        }
    }
    println!("tutti-sfu drain: {left} participants left");
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_means_this_host() {
        assert_eq!(
            admin_base("0.0.0.0:7880".parse().expect("addr")),
            "http://127.0.0.1:7880"
        );
        assert_eq!(
            admin_base("10.1.2.3:9000".parse().expect("addr")),
            "http://10.1.2.3:9000"
        );
    }
}
