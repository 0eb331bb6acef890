//! Configuration of a shard process: flags, with environment variables for containers.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
pub use tutti_service::process::LogFormat;

/// The shortest accepted token: 128 bits of entropy in alphanumerics.
pub const MIN_TOKEN_LEN: usize = 22;

/// Flags of the `tutti-sfu` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tutti-sfu",
    version,
    about = "Tutti SFU shard: every WebRTC peer on one UDP port"
)]
pub struct ShardArgs {
    /// Address of the HTTP server (admin API, signaling WebSocket, metrics, health).
    #[arg(long, env = "TUTTI_SFU_HTTP", default_value = "127.0.0.1:7880")]
    pub http: SocketAddr,
    /// Where recordings the control plane asks this shard for are written (a volume of
    /// its own; see README, Recording). Without it the shard records nothing.
    #[arg(long, env = "TUTTI_SFU_RECORD_DIR")]
    pub record_dir: Option<std::path::PathBuf>,
    /// Recordings under `--record-dir` that ended more than this many days ago are
    /// deleted (checked hourly); 0 keeps them.
    #[arg(long, env = "TUTTI_SFU_RECORD_RETENTION_DAYS", default_value_t = 0)]
    pub record_retention_days: u32,
    /// Where broadcasts the control plane asks this shard to package as HLS go (one
    /// directory each; needs `ffmpeg`). Without it the shard packages nothing.
    #[arg(long, env = "TUTTI_SFU_HLS_DIR")]
    pub hls_dir: Option<std::path::PathBuf>,
    /// Object storage recordings are also written to.
    #[command(flatten)]
    pub record_store: crate::recorder::store::ObjectStoreArgs,
    /// Address of the media UDP socket every peer shares. Port 0 picks a free port.
    #[arg(long, env = "TUTTI_SFU_UDP", default_value = "0.0.0.0:7882")]
    pub udp: SocketAddr,
    /// IP advertised to clients as the ICE candidate (node external IP, NAT 1:1 address).
    /// Defaults to the bound IP, or the host's outbound interface when bound to 0.0.0.0.
    #[arg(long, env = "TUTTI_SFU_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// A file that will hold the IP to advertise, written after the shard starts (in
    /// Kubernetes: the node's external IP, annotated by the operator and projected by the
    /// downward API). The shard waits for it before it takes anyone.
    #[arg(
        long,
        env = "TUTTI_SFU_ADVERTISE_IP_FILE",
        conflicts_with = "advertise_ip"
    )]
    pub advertise_ip_file: Option<std::path::PathBuf>,
    /// Port advertised to clients, when a NAT or load balancer maps a different one.
    #[arg(long, env = "TUTTI_SFU_ADVERTISE_PORT")]
    pub advertise_port: Option<u16>,
    /// Do not accept ICE-TCP (the TCP fallback on the media port's number).
    #[arg(long, env = "TUTTI_SFU_DISABLE_ICE_TCP")]
    pub disable_ice_tcp: bool,
    /// Bearer token of the admin API (operator).
    #[arg(long, env = "TUTTI_SFU_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token of the signaling endpoint (gateways).
    #[arg(long, env = "TUTTI_SFU_SIGNAL_TOKEN", hide_env_values = true)]
    pub signal_token: Option<String>,
    /// Development mode: generate and print missing tokens, create rooms on first join.
    #[arg(long)]
    pub dev: bool,
    /// Create rooms on first join with default settings (implied by --dev).
    #[arg(long, env = "TUTTI_SFU_AUTO_CREATE")]
    pub auto_create: bool,
    /// Most pipelines hosted at once.
    #[arg(long, env = "TUTTI_SFU_MAX_PIPELINES", default_value_t = 1000)]
    pub max_pipelines: usize,
    /// Most participants on the shard at once.
    #[arg(long, env = "TUTTI_SFU_MAX_PARTICIPANTS", default_value_t = 5000)]
    pub max_participants: usize,
    /// Seconds a client's consent lasts after its last ICE check (RFC 7675: 30). The shard
    /// stops sending to a connection whose consent expired; 10 s later it counts as failed.
    #[arg(long, env = "TUTTI_SFU_ICE_CONSENT_SECS", default_value_t = 30)]
    pub ice_consent_secs: u64,
    /// Log format.
    #[arg(long, env = "TUTTI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Where the shard publishes its heartbeat (cluster mode: an etcd URL).
    #[command(flatten)]
    pub store: tutti_store::StoreArgs,
    /// This shard's id in the live state (the pod name in a cluster).
    #[arg(long, env = "TUTTI_SHARD_ID")]
    pub shard_id: Option<String>,
    /// The base URL gateways and the operator reach this shard's HTTP server at
    /// (defaults to http://<--http>).
    #[arg(long, env = "TUTTI_SHARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Region or zone label, for seating viewers nearby and placing rooms near their
    /// participants.
    #[arg(long, env = "TUTTI_SHARD_REGION")]
    pub region: Option<String>,
    /// A file holding the region (`-` for none), read at every heartbeat: on Kubernetes,
    /// the node's `topology.kubernetes.io/region`, which the operator annotates the pod
    /// with once it is scheduled. `--region` wins.
    #[arg(long, env = "TUTTI_SHARD_REGION_FILE")]
    pub region_file: Option<std::path::PathBuf>,
    /// A label rooms can select this shard by, `key=value` (repeatable).
    #[arg(long = "label", env = "TUTTI_SHARD_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Seconds a heartbeat keeps the shard's record alive (heartbeats come every second).
    #[arg(long, env = "TUTTI_HEARTBEAT_TTL", default_value_t = 5)]
    pub heartbeat_ttl: u64,
}

/// A configuration error, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A token is missing outside development mode.
    #[error("{0} is required (or run with --dev to generate one)")]
    MissingToken(&'static str),
    /// A token is too short to be secret.
    #[error("{0} must be at least {MIN_TOKEN_LEN} characters")]
    WeakToken(&'static str),
    /// A numeric setting is out of range.
    #[error("{0}")]
    OutOfRange(String),
}

/// A token as given, or generated in development mode.
pub fn resolve_token(
    given: Option<&str>,
    dev: bool,
    name: &'static str,
) -> Result<(String, bool), ConfigError> {
    match given {
        Some(token) if token.len() >= MIN_TOKEN_LEN => Ok((token.to_owned(), false)),
        Some(_) => Err(ConfigError::WeakToken(name)),
        None if dev => Ok((crate::peer::random_token(32), true)),
        None => Err(ConfigError::MissingToken(name)),
    }
}

/// Checks numeric bounds.
pub fn validate(args: &ShardArgs) -> Result<(), ConfigError> {
    if !(1..=100_000).contains(&args.max_pipelines) {
        return Err(ConfigError::OutOfRange(
            "--max-pipelines must be 1..=100000".into(),
        ));
    }
    if !(1..=100_000).contains(&args.max_participants) {
        return Err(ConfigError::OutOfRange(
            "--max-participants must be 1..=100000".into(),
        ));
    }
    if !(2..=60).contains(&args.heartbeat_ttl) {
        return Err(ConfigError::OutOfRange(
            "--heartbeat-ttl must be 2..=60".into(),
        ));
    }
    for label in &args.labels {
        let valid = label
            .split_once('=')
            .is_some_and(|(k, v)| !k.is_empty() && k.len() <= 253 && v.len() <= 63);
        if !valid {
            return Err(ConfigError::OutOfRange(format!(
                "--label {label:?} must be key=value"
            )));
        }
    }
    if let Some(id) = &args.shard_id
        && !crate::signal::protocol::valid_id(id)
    {
        return Err(ConfigError::OutOfRange(
            "--shard-id must be 1-64 characters of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if !(5..=300).contains(&args.ice_consent_secs) {
        return Err(ConfigError::OutOfRange(
            "--ice-consent-secs must be 5..=300".into(),
        ));
    }
    Ok(())
}

/// ICE timeouts from the consent lifetime.
pub fn ice_timeouts(consent_secs: u64) -> crate::peer::IceTimeouts {
    crate::peer::IceTimeouts {
        disconnected: Duration::from_secs(consent_secs),
        failed: crate::peer::FAILED_AFTER_CONSENT,
        keepalive: Duration::from_secs(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_are_a_valid_command_line() {
        use clap::CommandFactory;
        ShardArgs::command().debug_assert();
        let args = ShardArgs::try_parse_from([
            "tutti-sfu",
            "--record-dir",
            "/recordings",
            "--record-s3-endpoint",
            "https://s3.eu-west-1.amazonaws.com",
            "--record-s3-bucket",
            "lessons",
            "--record-s3-region",
            "eu-west-1",
            "--record-s3-virtual-host",
        ])
        .expect("the record flags parse");
        let store = args.record_store.config().expect("valid").expect("set");
        assert_eq!(store.bucket, "lessons");
        assert_eq!(store.region, "eu-west-1");
        assert!(store.virtual_host && !store.keep_local);
        assert_eq!(store.upload_every, Duration::from_secs(10));
        let half = ShardArgs::try_parse_from(["tutti-sfu", "--record-s3-bucket", "lessons"])
            .expect("parses");
        assert!(
            half.record_store.config().is_err(),
            "a bucket needs an endpoint"
        );
    }

    #[test]
    fn tokens_are_required_and_strong_outside_dev() {
        assert!(matches!(
            resolve_token(None, false, "--admin-token"),
            Err(ConfigError::MissingToken(_))
        ));
        assert!(matches!(
            resolve_token(Some("short"), true, "--admin-token"),
            Err(ConfigError::WeakToken(_))
        ));
        let (token, generated) = resolve_token(None, true, "--admin-token").unwrap();
        assert!(generated && token.len() >= MIN_TOKEN_LEN);
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let mut args = ShardArgs::parse_from(["tutti-sfu"]);
        assert!(validate(&args).is_ok());
        args.ice_consent_secs = 1;
        assert!(validate(&args).is_err());
    }
}
