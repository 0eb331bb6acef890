//! Configuration of the gateway: flags (each with an environment variable, for
//! containers), and local mode's optional rooms file.

use crate::admission::{MIN_SECRET_LEN, hash_password, is_valid_hash};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tutti_service::process::LogFormat;
use tutti_shard_api::admin::PARTICIPANT_BOUNDS;
use tutti_store::{BroadcastRecord, RoomRecord};

/// Largest rooms file read.
const MAX_ROOMS_FILE_BYTES: u64 = 1024 * 1024;
/// Most rooms a rooms file may declare.
const MAX_CONFIGURED_ROOMS: usize = 10_000;

/// `tutti-gateway`: with no subcommand, runs the gateway.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tutti-gateway",
    version,
    about = "Tutti signaling gateway; with no flags, a complete local system on http://127.0.0.1:8080",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A helper command instead of running the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Gateway settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Helper commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a signed join token (needs the same --jwt-secret as the gateway).
    Token(TokenArgs),
    /// Read a password on standard input and print its argon2 hash for a rooms file.
    HashPassword,
}

/// Flags of `tutti-gateway token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The room the token opens.
    #[arg(long)]
    pub room: String,
    /// The nickname its holder joins as.
    #[arg(long)]
    pub name: String,
    /// Seconds until it expires (at most a week: gateways refuse longer-lived tokens).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub ttl: u64,
    /// Its holder may only watch and listen.
    #[arg(long)]
    pub no_publish: bool,
    /// Its holder receives nobody's media.
    #[arg(long)]
    pub no_subscribe: bool,
    /// Its holder may start and stop recordings of the room.
    #[arg(long)]
    pub record: bool,
    /// The signing secret.
    #[arg(long, env = "TUTTI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

/// Flags of the gateway.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the HTTP server (web client, WebSocket, REST, metrics).
    #[arg(long, env = "TUTTI_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the live state is: `memory` runs the whole system in this process (local
    /// mode); an etcd URL joins a cluster.
    #[command(flatten)]
    pub store: tutti_store::StoreArgs,
    /// Cluster mode: the token shards accept on their signaling endpoint.
    #[arg(long, env = "TUTTI_SFU_SIGNAL_TOKEN", hide_env_values = true)]
    pub shard_signal_token: Option<String>,
    /// Secret that signs resume tokens; every gateway of a cluster needs the same one, so
    /// that a client can resume its session through any of them.
    #[arg(long, env = "TUTTI_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,
    /// The region this gateway serves (matching shards' `--region`): viewers of a
    /// broadcast are seated on edges in it while it has free seats.
    #[arg(long, env = "TUTTI_REGION")]
    pub region: Option<String>,
    /// Take each client's address from the last entry of `X-Forwarded-For` (appended by
    /// the proxy in front of the gateway, such as the ingress) instead of the socket's
    /// peer; password throttling counts guesses by it. Only behind such a proxy: a
    /// client reaching the gateway directly could name any address.
    #[arg(long, env = "TUTTI_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Serve `/metrics` on this address only, not on `--listen` (which the public
    /// reaches).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cluster mode: the networks (CIDRs, comma-separated) shard signaling URLs must point
    /// into before the gateway presents the shard signaling token there. Add the pod
    /// network when pods have public addresses (EKS with IPv6).
    #[arg(long, env = "TUTTI_SHARD_NETWORKS", default_value = crate::shard_urls::DEFAULT_SHARD_NETWORKS)]
    pub shard_networks: String,
    /// Cluster mode: seconds a join waits for its room to be placed.
    #[arg(long, env = "TUTTI_ROUTE_WAIT", default_value_t = 15)]
    pub route_wait: u64,
    /// Local mode: SFU shards to embed.
    #[arg(long, env = "TUTTI_LOCAL_SHARDS", default_value_t = 2)]
    pub shards: usize,
    /// Local mode: first UDP media port; shard N uses this plus N. 0 picks free ports.
    #[arg(long, env = "TUTTI_MEDIA_PORT", default_value_t = 0)]
    pub media_port: u16,
    /// Local mode: IP the media sockets bind to.
    #[arg(long, env = "TUTTI_MEDIA_BIND", default_value = "0.0.0.0")]
    pub media_bind: IpAddr,
    /// Local mode: IP advertised to browsers for media. Defaults to the listen IP when it is
    /// specific (127.0.0.1 by default), else to the host's outbound interface.
    #[arg(long, env = "TUTTI_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Local mode: participants one embedded shard accepts.
    #[arg(long, env = "TUTTI_SHARD_MAX_PARTICIPANTS", default_value_t = 500)]
    pub shard_max_participants: usize,
    /// Local mode: a TOML file of rooms (see README).
    #[arg(long, env = "TUTTI_ROOMS")]
    pub rooms: Option<PathBuf>,
    /// Local mode: the directory recordings of rooms declared with `record = true` go
    /// under (`<dir>/<room>/<UTC start>/`), created readable by this user only.
    #[arg(long, env = "TUTTI_RECORD_DIR")]
    pub record_dir: Option<PathBuf>,
    /// Local mode: recordings that ended more than this many days ago are deleted (checked
    /// hourly); 0 keeps them.
    #[arg(long, env = "TUTTI_RECORD_RETENTION_DAYS", default_value_t = 0)]
    pub record_retention_days: u32,
    /// Local mode: a recording stopped over the HTTP API is also composed into one MP4
    /// (every camera tiled, every microphone mixed) by `ffmpeg`, which must be installed.
    #[arg(long, env = "TUTTI_RECORD_COMPOSE")]
    pub record_compose: bool,
    /// Local mode: where broadcasts declared with `hls = true` are packaged (playlist and
    /// segments, served at `/hls/NAME/index.m3u8`); by default a private directory under
    /// the system's temporary one, removed when the gateway stops.
    #[arg(long, env = "TUTTI_HLS_DIR")]
    pub hls_dir: Option<PathBuf>,
    /// Local mode: object storage recordings are also written to, as they go.
    #[cfg(feature = "local")]
    #[command(flatten)]
    pub record_store: tutti_sfu::recorder::store::ObjectStoreArgs,
    /// Refuse joins to rooms the rooms file does not declare.
    #[arg(long, env = "TUTTI_NO_AUTO_CREATE")]
    pub no_auto_create: bool,
    /// Rooms one client address may create by joining them, per 10 minutes (0: no limit).
    #[arg(long, env = "TUTTI_ROOMS_PER_CLIENT", default_value_t = crate::guesses::DEFAULT_ROOMS_PER_CLIENT)]
    pub rooms_per_client: u32,
    /// Client WebSockets this gateway holds at once; each may buffer up to a 64 KiB
    /// message, so size the memory limit to it (see README, Security).
    #[arg(long, env = "TUTTI_MAX_SOCKETS", default_value_t = crate::sockets::DEFAULT_MAX_SOCKETS)]
    pub max_sockets: usize,
    /// Client WebSockets one address (an IPv4 address, an IPv6 /64) holds at once (0: no
    /// limit). Raise it for audiences behind one large NAT.
    #[arg(long, env = "TUTTI_SOCKETS_PER_CLIENT", default_value_t = crate::sockets::DEFAULT_SOCKETS_PER_CLIENT)]
    pub sockets_per_client: usize,
    /// Sessions of one client address given TURN credentials per 10 minutes (0: no
    /// limit); past it, `joined` carries STUN servers only.
    #[arg(long, env = "TUTTI_TURN_GRANTS_PER_CLIENT", default_value_t = crate::guesses::DEFAULT_TURN_GRANTS_PER_CLIENT)]
    pub turn_grants_per_client: u32,
    /// Secret that signs join tokens (at least 32 bytes). Without it, tokens are refused.
    #[arg(long, env = "TUTTI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// STUN URL handed to clients (repeatable).
    #[arg(long = "stun-url", env = "TUTTI_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,
    /// TURN URL handed to clients with credentials (repeatable), e.g.
    /// `turn:turn.example.com:3478?transport=udp`.
    #[arg(long = "turn-url", env = "TUTTI_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// The secret shared with coturn (`static-auth-secret`).
    #[arg(long, env = "TUTTI_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Seconds TURN credentials stay valid.
    #[arg(long, env = "TUTTI_TURN_TTL", default_value_t = 3600)]
    pub turn_ttl: u64,
    /// Log format.
    #[arg(long, env = "TUTTI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration error, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The rooms file could not be read or parsed.
    #[error("rooms file {path}: {message}")]
    RoomsFile {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
}

impl RunArgs {
    /// Checks bounds and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let cluster = self.store.etcd().map_err(ConfigError::Invalid)?.is_some();
        if cluster
            && self
                .shard_signal_token
                .as_ref()
                .is_none_or(|t| t.len() < 22)
        {
            return invalid("cluster mode needs --shard-signal-token (at least 22 characters)");
        }
        if let Some(secret) = &self.session_secret
            && secret.len() < MIN_SECRET_LEN
        {
            return invalid("--session-secret must be at least 32 bytes");
        }
        if !(1..=120).contains(&self.route_wait) {
            return invalid("--route-wait must be 1..=120 seconds");
        }
        if !(1..=16).contains(&self.shards) {
            return invalid("--shards must be 1..=16");
        }
        if !(2..=100_000).contains(&self.shard_max_participants) {
            return invalid("--shard-max-participants must be 2..=100000");
        }
        if self.media_port != 0 && usize::from(self.media_port) + self.shards > 65_536 {
            return invalid("--media-port leaves no room for every shard's port");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_SECRET_LEN
        {
            return invalid("--jwt-secret must be at least 32 bytes");
        }
        if !self.turn_urls.is_empty() && self.turn_secret.is_none() {
            return invalid("--turn-url needs --turn-secret (coturn's static-auth-secret)");
        }
        for url in &self.turn_urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:")) || url.len() > 256 {
                return invalid("--turn-url must be a turn: or turns: URL");
            }
        }
        for url in &self.stun_urls {
            if !url.starts_with("stun:") || url.len() > 256 {
                return invalid("--stun-url must be a stun: URL");
            }
        }
        let ttl = Duration::from_secs(self.turn_ttl);
        if !(crate::turn::MIN_TTL..=crate::turn::MAX_TTL).contains(&ttl) {
            return invalid("--turn-ttl must be 60..=604800 seconds");
        }
        Ok(())
    }

    /// The IP browsers are told to send media to.
    pub fn media_advertise_ip(&self) -> IpAddr {
        if let Some(ip) = self.advertise_ip {
            return ip;
        }
        let listen = self.listen.ip();
        if listen.is_unspecified() {
            tutti_service::net::default_advertise_ip(listen)
        } else {
            listen
        }
    }
}

/// Local mode's rooms file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomsFile {
    /// Whether joins to undeclared rooms create them with `defaults` (default true).
    #[serde(default)]
    pub auto_create: Option<bool>,
    /// Settings of rooms created on first join.
    #[serde(default)]
    pub defaults: Option<RoomSettings>,
    /// Declared rooms.
    #[serde(default)]
    pub rooms: Vec<RoomEntry>,
    /// Declared broadcasts.
    #[serde(default)]
    pub broadcasts: Vec<BroadcastEntry>,
}

/// One declared broadcast: a stage for its presenters, relayed to an audience.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BroadcastEntry {
    /// The broadcast name: viewers watch it at `/watch?broadcast=NAME`.
    pub name: String,
    /// Broadcast the stage of a declared room instead of a stage of its own.
    pub room: Option<String>,
    /// Presenters on its own stage at once (1–16, default 1).
    pub presenters: Option<u32>,
    /// The argon2 hash of the presenters' password (own stage).
    pub password_hash: Option<String>,
    /// The presenters' password in the clear (own stage); hashed at start.
    pub password: Option<String>,
    /// The audience expected (default 0: the cascade follows the live audience).
    pub expected_audience: Option<u32>,
    /// Viewers one edge shard seats at most (default 500).
    pub max_viewers_per_shard: Option<u32>,
    /// Whether presenters send simulcast, relayed so viewers can choose a quality
    /// (own stage; default true).
    pub simulcast: Option<bool>,
    /// The stage's audio profile (own stage; default speech): a concert is `music`.
    pub audio: Option<tutti_store::AudioProfile>,
    /// Also package the stage as HLS (`/hls/NAME/index.m3u8`) for viewers WebRTC cannot
    /// reach; needs `ffmpeg`.
    pub hls: Option<bool>,
    /// With HLS: viewers over WebRTC at most; past them, new viewers watch over HLS.
    pub max_webrtc_viewers: Option<u32>,
}

/// Settings shared by declared rooms and defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomSettings {
    /// Most participants (2–10000).
    pub max_participants: Option<u32>,
    /// Seconds an empty room keeps its pipeline.
    pub empty_timeout_seconds: Option<u64>,
    /// Whether audio may be published (`true`/`false`), or its profile (`"speech"`,
    /// `"music"`), which allows it.
    pub audio: Option<AudioField>,
    /// Music rooms: the Opus bitrate, bit/s (128000–510000, default 128000).
    pub audio_bitrate: Option<u32>,
    /// Opus frame duration, ms: 20 (default) or 10.
    pub audio_ptime: Option<u8>,
    /// Whether video may be published.
    pub video: Option<bool>,
    /// Whether publishers may send simulcast.
    pub simulcast: Option<bool>,
    /// Whether publishers that can send VP9 with spatial layers (SVC) send that instead
    /// of simulcast.
    pub svc: Option<bool>,
    /// The codec of those spatial layers: `"vp9"` (default) or `"av1"`.
    pub svc_codec: Option<tutti_store::SvcCodec>,
    /// Upper bound on each video track, kbit/s.
    pub max_video_bitrate_kbps: Option<u32>,
    /// How the room's shard is chosen: `"latency"` (near its participants, when the
    /// shards span regions), `"packed"`, or `"auto"` (latency for rooms of 2-4).
    pub placement: Option<tutti_store::PlacementPolicy>,
}

/// The rooms file's `audio`: allowed or not, or the profile of an allowed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AudioField {
    /// Whether audio may be published (with the speech profile).
    Allowed(bool),
    /// Audio is allowed, with this profile.
    Profile(tutti_store::AudioProfile),
}

/// One declared room.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomEntry {
    /// The room name.
    pub name: String,
    /// The argon2 hash of its password (`tutti-gateway hash-password`).
    pub password_hash: Option<String>,
    /// Its password in the clear; hashed at start and not kept. Prefer `passwordHash`.
    pub password: Option<String>,
    /// Local mode: record the room whenever the gateway runs (into `--record-dir`).
    #[serde(default)]
    pub record: bool,
    /// Its settings.
    #[serde(flatten)]
    pub settings: RoomSettings,
}

/// The stored hash of a declared password, given as a hash or in the clear.
fn password_hash(hash: Option<&str>, password: Option<&str>) -> Result<Option<String>, String> {
    match (hash, password) {
        (Some(_), Some(_)) => Err("give passwordHash or password, not both".into()),
        (Some(hash), None) if is_valid_hash(hash) => Ok(Some(hash.to_owned())),
        (Some(_), None) => Err("passwordHash is not an argon2 PHC string".into()),
        (None, Some("")) => Err("password is empty".into()),
        (None, Some(password)) => hash_password(password).map(Some),
        (None, None) => Ok(None),
    }
}

/// Broadcasts at most in one rooms file.
const MAX_CONFIGURED_BROADCASTS: usize = 100;

/// Checks declared broadcasts and adds their own stages to `rooms`.
fn declare_broadcasts(
    entries: Vec<BroadcastEntry>,
    rooms: &mut Vec<RoomRecord>,
) -> Result<Vec<BroadcastRecord>, String> {
    if entries.len() > MAX_CONFIGURED_BROADCASTS {
        return Err(format!("at most {MAX_CONFIGURED_BROADCASTS} broadcasts"));
    }
    let mut broadcasts: Vec<BroadcastRecord> = Vec::with_capacity(entries.len());
    for entry in entries {
        let context = |e: &str| format!("broadcast {:?}: {e}", entry.name);
        if !tutti_shard_api::protocol::valid_id(&entry.name) {
            return Err(context("names are 1-64 characters of A-Z a-z 0-9 . _ -"));
        }
        if broadcasts.iter().any(|b| b.name == entry.name) {
            return Err(context("declared twice"));
        }
        let max_viewers = entry.max_viewers_per_shard.unwrap_or(500);
        let (_, most) = PARTICIPANT_BOUNDS;
        if !(1..=most).contains(&max_viewers) {
            return Err(context(&format!("maxViewersPerShard must be 1..={most}")));
        }
        if entry.max_webrtc_viewers.is_some() && entry.hls != Some(true) {
            return Err(context(
                "maxWebrtcViewers sends viewers to HLS: it needs hls = true",
            ));
        }
        let expected = entry.expected_audience.unwrap_or(0);
        if expected > 1_000_000 {
            return Err(context("expectedAudience is at most 1000000"));
        }
        let stage = match &entry.room {
            Some(room) => {
                let own = entry.presenters.is_some()
                    || entry.password.is_some()
                    || entry.password_hash.is_some()
                    || entry.simulcast.is_some()
                    || entry.audio.is_some();
                if own {
                    return Err(context(
                        "a broadcast of a room takes the room's stage: presenters, password, simulcast and audio belong to the room",
                    ));
                }
                rooms
                    .iter()
                    .find(|r| &r.name == room)
                    .ok_or_else(|| context(&format!("room {room:?} is not declared")))?
                    .clone()
            }
            None => {
                if rooms.iter().any(|r| r.name == entry.name) {
                    return Err(context("a room has the same name"));
                }
                let presenters = entry.presenters.unwrap_or(1);
                if !(1..=16).contains(&presenters) {
                    return Err(context("presenters must be 1..=16"));
                }
                let hash = password_hash(entry.password_hash.as_deref(), entry.password.as_deref())
                    .map_err(|e| context(&e))?;
                // Anyone who may join the stage may present to the whole audience.
                let Some(hash) = hash else {
                    return Err(context(
                        "the stage needs a password (or passwordHash) for its presenters",
                    ));
                };
                let mut stage = RoomRecord::with_defaults(&entry.name);
                // The pipeline API's floor is two seats.
                stage.max_participants = presenters.max(2);
                stage.password_hash = Some(hash);
                stage.simulcast = entry.simulcast.unwrap_or(true);
                stage.audio_settings.profile = entry.audio.unwrap_or_default();
                stage.empty_timeout_seconds = tutti_shard_api::admin::MAX_EMPTY_TIMEOUT_SECS;
                stage.audience = true;
                rooms.push(stage.clone());
                stage
            }
        };
        broadcasts.push(BroadcastRecord {
            name: entry.name.clone(),
            stage: stage.name.clone(),
            expected_audience: expected,
            max_viewers_per_shard: max_viewers,
            layers: if stage.simulcast { 3 } else { 1 },
            owner: None,
            hls: entry.hls.unwrap_or(false),
            max_webrtc_viewers: entry.max_webrtc_viewers,
        });
    }
    Ok(broadcasts)
}

/// The rooms local mode starts with, and the template for rooms created on first join.
#[derive(Debug, Clone)]
pub struct LocalRooms {
    /// Declared rooms.
    pub rooms: Vec<RoomRecord>,
    /// Template of rooms created on first join; `None` refuses undeclared rooms.
    pub auto_create: Option<RoomRecord>,
    /// Declared broadcasts (their own stages are among `rooms`).
    pub broadcasts: Vec<BroadcastRecord>,
    /// Declared rooms to record (`record = true`).
    pub recorded: Vec<String>,
}

fn apply(settings: &RoomSettings, record: &mut RoomRecord) -> Result<(), String> {
    if let Some(max) = settings.max_participants {
        let (low, high) = PARTICIPANT_BOUNDS;
        if !(low..=high).contains(&max) {
            return Err(format!("maxParticipants must be {low}..={high}"));
        }
        record.max_participants = max;
    }
    if let Some(timeout) = settings.empty_timeout_seconds {
        if timeout > tutti_shard_api::admin::MAX_EMPTY_TIMEOUT_SECS {
            return Err("emptyTimeoutSeconds is at most one week".into());
        }
        record.empty_timeout_seconds = timeout;
    }
    if let Some(placement) = settings.placement {
        record.placement = placement;
    }
    if let Some(kbps) = settings.max_video_bitrate_kbps {
        if !(30..=50_000).contains(&kbps) {
            return Err("maxVideoBitrateKbps must be 30..=50000".into());
        }
        record.max_video_bitrate_kbps = Some(kbps);
    }
    match settings.audio {
        Some(AudioField::Allowed(allowed)) => record.audio = allowed,
        Some(AudioField::Profile(profile)) => {
            record.audio = true;
            record.audio_settings.profile = profile;
            if profile == tutti_store::AudioProfile::Speech {
                // A music bitrate inherited from the defaults means nothing here.
                record.audio_settings.bitrate = None;
            }
        }
        None => {}
    }
    if settings.audio_bitrate.is_some() {
        record.audio_settings.bitrate = settings.audio_bitrate;
    }
    if settings.audio_ptime.is_some() {
        record.audio_settings.ptime = settings.audio_ptime;
    }
    record.audio_settings.validate()?;
    record.video = settings.video.unwrap_or(record.video);
    record.simulcast = settings.simulcast.unwrap_or(record.simulcast);
    record.svc = settings.svc.unwrap_or(record.svc);
    record.svc_codec = settings.svc_codec.unwrap_or(record.svc_codec);
    Ok(())
}

impl LocalRooms {
    /// Rooms from the parsed file (hashing clear-text passwords) and the flags.
    pub fn from_file(file: RoomsFile, no_auto_create: bool) -> Result<Self, String> {
        let mut template = RoomRecord::with_defaults("");
        if let Some(defaults) = &file.defaults {
            apply(defaults, &mut template).map_err(|e| format!("defaults: {e}"))?;
        }
        if file.rooms.len() > MAX_CONFIGURED_ROOMS {
            return Err(format!("at most {MAX_CONFIGURED_ROOMS} rooms"));
        }
        let mut rooms = Vec::with_capacity(file.rooms.len());
        let mut recorded = Vec::new();
        for entry in file.rooms {
            let context = |e: String| format!("room {:?}: {e}", entry.name);
            if !tutti_shard_api::protocol::valid_id(&entry.name) {
                return Err(context(
                    "names are 1-64 characters of A-Z a-z 0-9 . _ -".into(),
                ));
            }
            if rooms.iter().any(|r: &RoomRecord| r.name == entry.name) {
                return Err(context("declared twice".into()));
            }
            let mut record = RoomRecord {
                name: entry.name.clone(),
                ..template.clone()
            };
            apply(&entry.settings, &mut record).map_err(context)?;
            record.password_hash =
                password_hash(entry.password_hash.as_deref(), entry.password.as_deref())
                    .map_err(context)?;
            if entry.record {
                recorded.push(entry.name.clone());
            }
            rooms.push(record);
        }
        let broadcasts = declare_broadcasts(file.broadcasts, &mut rooms)?;
        let auto_create = (!no_auto_create && file.auto_create.unwrap_or(true)).then_some(template);
        Ok(Self {
            rooms,
            auto_create,
            broadcasts,
            recorded,
        })
    }

    /// Reads and checks a rooms file.
    pub fn load(path: &Path, no_auto_create: bool) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError::RoomsFile {
            path: path.display().to_string(),
            message,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(e.to_string()))?
            .len();
        if size > MAX_ROOMS_FILE_BYTES {
            return Err(error("larger than 1 MiB".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: RoomsFile = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        Self::from_file(file, no_auto_create).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_are_a_valid_command_line() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn rooms_file_declares_rooms_and_hashes_passwords() {
        let file: RoomsFile = toml::from_str(
            r#"
            autoCreate = true
            [defaults]
            maxParticipants = 8
            [[rooms]]
            name = "violin-lesson"
            maxParticipants = 2
            password = "arco"
            [[rooms]]
            name = "ensemble"
            simulcast = false
            [[rooms]]
            name = "vp9-lesson"
            svc = true
            [[rooms]]
            name = "av1-lesson"
            svc = true
            svcCodec = "av1"
            "#,
        )
        .unwrap();
        let rooms = LocalRooms::from_file(file, false).unwrap();
        let lesson = &rooms.rooms[0];
        assert_eq!(lesson.max_participants, 2);
        let hash = lesson.password_hash.as_deref().unwrap();
        assert!(crate::admission::verify_password(hash, "arco"));
        assert!(!hash.contains("arco"));
        assert_eq!(rooms.rooms[1].max_participants, 8);
        assert!(!rooms.rooms[1].simulcast);
        assert!(!rooms.rooms[1].svc && rooms.rooms[2].svc && rooms.rooms[2].simulcast);
        assert_eq!(rooms.rooms[2].svc_codec, tutti_store::SvcCodec::Vp9);
        assert_eq!(rooms.rooms[3].svc_codec, tutti_store::SvcCodec::Av1);
        assert_eq!(rooms.auto_create.unwrap().max_participants, 8);
    }

    #[test]
    fn rooms_take_an_audio_profile_or_an_audio_switch() {
        use tutti_store::{AudioProfile, AudioSettings};
        let file: RoomsFile = toml::from_str(
            r#"
            [defaults]
            audio = "music"
            audioBitrate = 192000
            [[rooms]]
            name = "violin-lesson"
            audioPtime = 10
            [[rooms]]
            name = "talk"
            audio = "speech"
            [[rooms]]
            name = "silent-film"
            audio = false
            "#,
        )
        .unwrap();
        let rooms = LocalRooms::from_file(file, false).unwrap();
        assert_eq!(
            rooms.rooms[0].audio_settings,
            AudioSettings {
                profile: AudioProfile::Music,
                bitrate: Some(192_000),
                ptime: Some(10),
            }
        );
        assert!(rooms.rooms[0].audio);
        assert_eq!(rooms.rooms[1].audio_settings, AudioSettings::default());
        assert!(!rooms.rooms[2].audio);
        assert_eq!(
            rooms.auto_create.unwrap().audio_settings.profile,
            AudioProfile::Music
        );
        for bad in [
            "[[rooms]]\nname = \"a\"\naudio = \"loud\"",
            "[[rooms]]\nname = \"a\"\naudio = \"music\"\naudioBitrate = 64000",
            "[[rooms]]\nname = \"a\"\naudioBitrate = 192000",
            "[[rooms]]\nname = \"a\"\naudioPtime = 5",
            "[[rooms]]\nname = \"a\"\nplacement = \"nearby\"",
        ] {
            let refused = toml::from_str::<RoomsFile>(bad)
                .map_err(|e| e.to_string())
                .and_then(|file| LocalRooms::from_file(file, false).map(|_| ()));
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_rooms_file_is_valid() {
        let file: RoomsFile = toml::from_str(include_str!("../rooms.example.toml")).unwrap();
        let rooms = LocalRooms::from_file(file, false).unwrap();
        assert_eq!(
            rooms.rooms.len(),
            4,
            "three rooms and a concert's own stage"
        );
        assert!(rooms.rooms[0].password_hash.is_some());
        assert_eq!(
            rooms.rooms[0].placement,
            tutti_store::PlacementPolicy::Latency
        );
        assert!(rooms.rooms[2].svc && !rooms.rooms[1].svc);
        let stage = &rooms.rooms[3];
        assert_eq!(
            (stage.name.as_str(), stage.max_participants),
            ("spring-concert", 4)
        );
        assert!(stage.audience && stage.password_hash.is_some());
        let names: Vec<(&str, &str)> = rooms
            .broadcasts
            .iter()
            .map(|b| (b.name.as_str(), b.stage.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("spring-concert", "spring-concert"),
                ("ensemble-live", "ensemble")
            ]
        );
        assert_eq!(rooms.broadcasts[0].layers, 3);
    }

    #[test]
    fn bad_broadcasts_are_refused_with_the_reason() {
        for (text, needle) in [
            ("[[broadcasts]]\nname = \"c\"", "needs a password"),
            (
                "[[broadcasts]]\nname = \"c\"\nroom = \"nope\"",
                "not declared",
            ),
            (
                "[[broadcasts]]\nname = \"c\"\npassword = \"p\"\npresenters = 17",
                "presenters",
            ),
            (
                "[[broadcasts]]\nname = \"c\"\npassword = \"p\"\nmaxViewersPerShard = 0",
                "maxViewersPerShard",
            ),
            (
                "[[rooms]]\nname = \"r\"\n[[broadcasts]]\nname = \"c\"\nroom = \"r\"\npassword = \"p\"",
                "belong to the room",
            ),
            (
                "[[rooms]]\nname = \"c\"\n[[broadcasts]]\nname = \"c\"\npassword = \"p\"",
                "same name",
            ),
        ] {
            let file: RoomsFile = toml::from_str(text).unwrap();
            let err = LocalRooms::from_file(file, false).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn bad_rooms_files_are_refused_with_the_room_named() {
        for (text, needle) in [
            ("[[rooms]]\nname = \"a b\"", "names are"),
            (
                "[[rooms]]\nname = \"a\"\nmaxParticipants = 1",
                "maxParticipants",
            ),
            ("[[rooms]]\nname = \"a\"\n[[rooms]]\nname = \"a\"", "twice"),
            (
                "[[rooms]]\nname = \"a\"\npasswordHash = \"plain\"",
                "argon2",
            ),
            ("[[rooms]]\nname = \"a\"\ncolour = \"red\"", "unknown field"),
        ] {
            let error = toml::from_str::<RoomsFile>(text)
                .map_err(|e| e.to_string())
                .and_then(|file| LocalRooms::from_file(file, false).map(|_| ()));
            let message = error.unwrap_err();
            assert!(message.contains(needle), "{text}: {message}");
        }
    }

    #[test]
    fn flags_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["tutti-gateway"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().run.validate()
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--shards", "0"]).is_err());
        assert!(parse(&["--jwt-secret", "short"]).is_err());
        assert!(parse(&["--turn-url", "turn:x:3478"]).is_err());
        assert!(parse(&["--turn-url", "http://x", "--turn-secret", "s"]).is_err());
        assert!(
            parse(&["--store", "etcd://127.0.0.1:2379"]).is_err(),
            "needs the shard token"
        );
        let cluster = parse(&[
            "--store",
            "etcd://127.0.0.1:2379",
            "--shard-signal-token",
            "0123456789012345678901",
        ]);
        if tutti_store::ETCD_SUPPORTED {
            assert!(cluster.is_ok(), "{cluster:?}");
        } else {
            // The default build (local mode, no protoc) says how to get a cluster gateway.
            let refusal = cluster.expect_err("no etcd in this build").to_string();
            assert!(refusal.contains("--features etcd"), "{refusal}");
        }
        assert!(parse(&["--store", "mysql://x"]).is_err());
    }
}
