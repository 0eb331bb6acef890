//! The records kept in the live state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One shard as the rest of the cluster sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRecord {
    /// Stable id (the pod name in a cluster, `local-N` in local mode).
    pub id: String,
    /// The shard's signaling WebSocket, which gateways relay clients to.
    pub signal_url: String,
    /// The base URL of the shard's admin API.
    pub admin_url: String,
    /// Region or zone label, for seating viewers near their edge and placing rooms near
    /// their participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `host:port` of the shard's media socket, which answers STUN Binding requests:
    /// clients time them to learn their round trip to the shard's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// The shard's labels, which rooms select shards by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Participants the shard accepts at most.
    pub capacity: u32,
    /// Whether the shard accepts new rooms and joins.
    pub draining: bool,
    /// Its latest load.
    pub load: ShardLoadSummary,
}

impl ShardRecord {
    /// A record reached at `http_base` (admin API at it, signaling at `/v1/signal`), with no
    /// labels, no load and not draining.
    pub fn new(id: &str, http_base: &str, capacity: u32) -> Self {
        let base = http_base.trim_end_matches('/');
        let signal = match base.strip_prefix("https://") {
            Some(host) => format!("wss://{host}/v1/signal"),
            None => format!("ws://{}/v1/signal", base.trim_start_matches("http://")),
        };
        Self {
            id: id.to_owned(),
            signal_url: signal,
            admin_url: base.to_owned(),
            region: None,
            probe: None,
            labels: BTreeMap::new(),
            capacity,
            draining: false,
            load: ShardLoadSummary::default(),
        }
    }

    /// Participants the shard can still take.
    pub fn free_seats(&self) -> u32 {
        self.capacity.saturating_sub(self.load.participants)
    }
}

/// The part of a shard's load that placement looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardLoadSummary {
    /// Rooms (pipelines) hosted.
    pub pipelines: u32,
    /// Participants connected.
    pub participants: u32,
    /// Subscriber streams forwarded.
    pub forwarded_streams: u32,
    /// Media sent, bit/s.
    pub egress_bps: u64,
    /// CPU in use, in cores.
    pub cpu_cores: f64,
}

/// The owner of rooms a gateway created on first join (their pipelines and records carry it).
pub const AUTO_CREATED_OWNER: &str = "Gateway/auto";

/// Where a room lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The room.
    pub room: String,
    /// The shard id holding it.
    pub shard: String,
    /// Grows by one each time the room is placed (again); clients on an older epoch are
    /// told to renegotiate.
    pub epoch: u64,
}

/// The settings a room is admitted by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRecord {
    /// The room name.
    pub name: String,
    /// Most participants at once.
    pub max_participants: u32,
    /// The argon2 hash (PHC string) of the room's password; never the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Seconds an empty room keeps its pipeline.
    pub empty_timeout_seconds: u64,
    /// Whether audio may be published.
    pub audio: bool,
    /// Whether video may be published.
    pub video: bool,
    /// Whether publishers may send simulcast.
    pub simulcast: bool,
    /// Whether publishers that can send VP9 with spatial layers (SVC) send that instead of
    /// simulcast.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub svc: bool,
    /// The codec of those spatial layers.
    #[serde(default, skip_serializing_if = "SvcCodec::is_vp9")]
    pub svc_codec: SvcCodec,
    /// Upper bound on each video track, kbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_video_bitrate_kbps: Option<u32>,
    /// The resource the room comes from (`Room/namespace/name`); `None` in local mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A broadcast's stage: its publishers are relayed to an audience, so keyframe
    /// requests reaching them are held to one a second.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audience: bool,
    /// How the room's audio is captured, encoded and played out.
    #[serde(default, skip_serializing_if = "AudioSettings::is_speech_default")]
    pub audio_settings: AudioSettings,
    /// How the room's shard is chosen.
    #[serde(default, skip_serializing_if = "PlacementPolicy::is_auto")]
    pub placement: PlacementPolicy,
}

impl RoomRecord {
    /// The shard pipeline that hosts this room.
    pub fn pipeline_spec(&self) -> tutti_shard_api::admin::PipelineSpec {
        use tutti_shard_api::admin::{MediaPolicy, PipelineSpec};
        PipelineSpec {
            max_participants: self.max_participants,
            empty_timeout_seconds: self.empty_timeout_seconds,
            media: MediaPolicy {
                audio: self.audio,
                video: self.video,
                max_video_bitrate_kbps: self.max_video_bitrate_kbps,
                simulcast: self.simulcast,
            },
            owner: self.owner.clone(),
            audience: self.audience,
            relay: None,
            audio: self.audio_settings,
        }
    }
    /// Whether the room is placed by latency among `shards`: asked for, or by default
    /// for rooms of 2-4 people when the live shards span more than one region.
    pub fn placed_by_latency(&self, shards: &[ShardRecord]) -> bool {
        match self.placement {
            PlacementPolicy::Latency => true,
            PlacementPolicy::Packed => false,
            PlacementPolicy::Auto => {
                (2..=LATENCY_DEFAULT_MAX_PARTICIPANTS).contains(&self.max_participants)
                    && shards
                        .iter()
                        .filter_map(|s| s.region.as_deref())
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                        > 1
            }
        }
    }
}

/// Rooms up to this size are placed by latency when nothing else is asked for.
pub const LATENCY_DEFAULT_MAX_PARTICIPANTS: u32 = 4;

/// The codec a room's publishers send spatial layers (SVC) in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SvcCodec {
    /// VP9 (`L3T3_KEY`): layers read from its payload descriptor.
    #[default]
    Vp9,
    /// AV1 (`L3T3_KEY`): layers read from its dependency descriptor; better pictures for
    /// the bits, at more of the publisher's CPU.
    Av1,
}

impl SvcCodec {
    /// Whether this is the default, VP9.
    pub fn is_vp9(&self) -> bool {
        *self == Self::Vp9
    }
}

/// How a room's shard is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// The operator's strategy; latency for rooms of 2-4 people when the shards span
    /// regions.
    #[default]
    Auto,
    /// The operator's strategy (packed or distributed), wherever participants are.
    Packed,
    /// The region where the participants are closest to each other through the shard.
    Latency,
}

impl PlacementPolicy {
    /// Whether this is the default.
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Packed => "packed",
            Self::Latency => "latency",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "packed" => Some(Self::Packed),
            "latency" => Some(Self::Latency),
            _ => None,
        }
    }
}

/// Most regions a participant reports round trips to.
pub const MAX_REPORTED_REGIONS: usize = 16;
/// Longest round trip a report may carry, ms.
pub const MAX_REPORTED_RTT_MS: u32 = 10_000;

/// One participant's measured round trips to each region, written by its gateway when it
/// joins a room and removed when it leaves; what latency placement decides by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyReport {
    /// The room.
    pub room: String,
    /// The participant's session id.
    pub participant: String,
    /// Round trip in ms, by region; empty when nothing could be measured.
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, u32>,
}

impl LatencyReport {
    /// The store name of the report: `room:participant` (room names hold no colon).
    pub fn key(room: &str, participant: &str) -> String {
        format!("{room}:{participant}")
    }
}

/// Whether `name` is a region name: 1-63 characters of a-z 0-9 `-` starting with a letter
/// or digit, the shape of Kubernetes' `topology.kubernetes.io/region` values
/// (`eu-west-1`).
pub fn valid_region(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub use tutti_shard_api::audio::{AudioProfile, AudioSettings};

impl RoomRecord {
    /// A room with default settings: 16 participants, no password, 5 minutes' grace when
    /// empty, audio and video with simulcast.
    pub fn with_defaults(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            max_participants: 16,
            password_hash: None,
            empty_timeout_seconds: 300,
            audio: true,
            video: true,
            simulcast: true,
            svc: false,
            svc_codec: SvcCodec::Vp9,
            max_video_bitrate_kbps: None,
            owner: None,
            audience: false,
            audio_settings: AudioSettings::default(),
            placement: PlacementPolicy::Auto,
        }
    }
}

/// A broadcast: the stage room whose publishers reach an audience seated on edge shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastRecord {
    /// The broadcast's name: what viewers ask to watch.
    pub name: String,
    /// The room presenters join: the origin is the shard holding it, and every edge
    /// relays it under the same pipeline name.
    pub stage: String,
    /// The audience the organiser expects.
    pub expected_audience: u32,
    /// Viewers one edge seats at most.
    pub max_viewers_per_shard: u32,
    /// Simulcast layers relayed to each edge (1, or 3 when presenters send simulcast).
    pub layers: u8,
    /// The resource the broadcast comes from (`Broadcast/namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Also packaged as HLS, for viewers WebRTC cannot reach.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hls: bool,
    /// With HLS: viewers over WebRTC at most; past them, new viewers are sent to HLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_webrtc_viewers: Option<u32>,
}

/// One edge of a cascade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CascadeEdge {
    /// The edge shard.
    pub shard: String,
    /// The shard it relays from (the origin, or another edge).
    pub parent: String,
    /// Viewers seated on it, as last counted.
    pub viewers: u32,
    /// Taking no new viewers; removed once empty.
    pub draining: bool,
}

/// The relay tree a broadcast runs on now, as the operator applied it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CascadeRecord {
    /// The broadcast.
    pub broadcast: String,
    /// Its stage room (the pipeline name on every shard of the tree).
    pub stage: String,
    /// The origin shard, where presenters publish.
    pub origin: String,
    /// Edges in the order they were added (breadth-first).
    pub edges: Vec<CascadeEdge>,
}

/// A recording the control plane runs: asked for by a `Recording` resource, the gateway's
/// API or a rooms file. One per name; the room's shard runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingRecord {
    /// The recording's name.
    pub name: String,
    /// The room it records.
    pub room: String,
    /// Compose the tracks into one file when it stops.
    #[serde(default)]
    pub compose: bool,
    /// Asked to stop: the recording ends, and its state is kept for its files.
    #[serde(default)]
    pub stopped: bool,
    /// Who asked for it (`Recording/{namespace}/{name}`, `gateway`, `rooms-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One stretch of a recording on one shard: a new one begins when the room moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSegment {
    /// The shard that recorded it (its files are in that shard's recordings directory).
    pub shard: String,
    /// What the shard last reported.
    pub status: tutti_shard_api::recording::RecordingStatus,
}

/// Where a recording runs and what it holds, as the control loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStateRecord {
    /// The recording.
    pub name: String,
    /// The shard running it now; `None` while the room is nowhere or once it stopped.
    pub shard: Option<String>,
    /// Its stretches, oldest first; the last is the current one.
    pub segments: Vec<RecordingSegment>,
    /// What went wrong last, if anything (a shard refusing, or unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_settings_default_to_speech_and_validate_music_tuning() {
        let speech = AudioSettings::default();
        assert!(speech.is_speech_default());
        assert_eq!(speech.opus_bitrate(), None);
        assert_eq!(speech.ptime_ms(), 20);
        let music = AudioSettings::music();
        assert_eq!(music.opus_bitrate(), Some(128_000));
        assert!(music.validate().is_ok());
        let tuned = AudioSettings {
            bitrate: Some(256_000),
            ptime: Some(10),
            ..music
        };
        assert!(tuned.validate().is_ok());
        assert_eq!(tuned.opus_bitrate(), Some(256_000));
        assert_eq!(tuned.ptime_ms(), 10);
        for bad in [
            AudioSettings {
                bitrate: Some(64_000),
                ..music
            },
            AudioSettings {
                bitrate: Some(600_000),
                ..music
            },
            AudioSettings {
                bitrate: Some(128_000),
                ..speech
            },
            AudioSettings {
                ptime: Some(15),
                ..music
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn room_records_keep_the_audio_profile_and_omit_speech_defaults() {
        let mut room = RoomRecord::with_defaults("lesson");
        let json = serde_json::to_string(&room).unwrap();
        assert!(!json.contains("audioSettings"), "{json}");
        room.audio_settings = AudioSettings::music();
        let json = serde_json::to_string(&room).unwrap();
        assert!(
            json.contains(r#""audioSettings":{"profile":"music"}"#),
            "{json}"
        );
        let back: RoomRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, room);
    }
}
