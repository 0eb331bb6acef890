//! `Room`: a conference (a 1:1 lesson, an ensemble, a meeting) that the operator places on
//! one SFU shard.

use crate::common::{Condition, SecretKeyRef};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a platform engineer asks for.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tutti.dev",
    version = "v1alpha1",
    kind = "Room",
    namespaced,
    status = "RoomStatus",
    shortname = "room",
    category = "tutti",
    doc = "A conference room (lesson, ensemble, meeting) hosted on one SFU shard.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Shard", type_ = "string", json_path = ".status.shard"),
    printcolumn(
        name = "Participants",
        type_ = "integer",
        json_path = ".status.participants"
    ),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxParticipants"),
    printcolumn(name = "Audio", type_ = "string", json_path = ".spec.audio.profile"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoomSpec {
    /// Most participants at once (2–10000).
    #[serde(default = "default_max_participants")]
    #[schemars(range(min = 2, max = 10000))]
    pub max_participants: u32,
    /// A Secret key holding the room's password; the Secret must be labelled
    /// `tutti.dev/room-password: "true"`. The operator stores only its argon2 hash in the
    /// live state; the password itself never leaves the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// What may be published.
    #[serde(default)]
    pub media: MediaSpec,
    /// How the room's audio is captured, encoded and played out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSpec>,
    /// How long the room keeps its media pipeline while nobody is in it (`30s`, `5m`,
    /// `1h`; at most a week).
    #[serde(default = "default_empty_timeout")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('168h')").message("emptyTimeout is at most 168h"))]
    pub empty_timeout: String,
    /// Place the room only on shards with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shard_selector: BTreeMap<String, String>,
    /// How its shard is chosen: `latency` puts it in the region that minimises the worst
    /// participant's round trip (placed when the first participant arrives, moved once if
    /// a farther participant joins a small room early); `packed` ignores where people
    /// are. Absent: `latency` for rooms of 2-4 people when the shards span regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementMode>,
}

/// How a room's shard is chosen: `latency` puts it in the region where its participants
/// are closest to each other through the shard (placed when the first participant
/// arrives, moved once if a farther participant joins a small room early); `packed`
/// ignores where people are. Absent: `latency` for rooms of 2-4 people when the shards
/// span regions.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// Near the participants.
    Latency,
    /// Wherever the operator's strategy puts it.
    Packed,
}

fn default_max_participants() -> u32 {
    16
}

fn default_empty_timeout() -> String {
    "5m".into()
}

/// A room's audio.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.bitrate) || self.profile == 'music'").message("audio.bitrate applies to the music profile only"))]
pub struct AudioSpec {
    /// `speech` (default): echo cancellation, noise suppression and gain control, mono
    /// Opus at the browser's bitrate. `music`: none of that processing, stereo Opus at a
    /// music bitrate without DTX, redundancy (RED) where browsers offer it, and short
    /// receive buffers; participants should wear headphones.
    #[serde(default)]
    pub profile: AudioProfile,
    /// Music rooms: the Opus bitrate in bit/s (128000–510000, default 128000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 128000, max = 510000))]
    pub bitrate: Option<u32>,
    /// Opus frame duration in ms: 20 (default) or 10 (less delay, twice the packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 10 || self == 20").message("audio.ptime is 10 or 20"))]
    pub ptime: Option<u8>,
}

/// What a room's audio is for.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AudioProfile {
    /// Voices.
    #[default]
    Speech,
    /// Instruments.
    Music,
}

/// The room's media policy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaSpec {
    /// Whether participants may publish audio.
    #[serde(default = "yes")]
    pub audio: bool,
    /// Whether participants may publish video.
    #[serde(default = "yes")]
    pub video: bool,
    /// Upper bound on each published video track, kbit/s (30–50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 50000))]
    pub max_video_bitrate_kbps: Option<u32>,
    /// Whether publishers may send simulcast layers.
    #[serde(default = "yes")]
    pub simulcast: bool,
    /// Whether publishers whose browser can encode VP9 with spatial layers send their
    /// camera as one such stream (SVC, `L3T3_KEY`) instead of simulcast layers: each
    /// subscriber still gets the size its tile and downlink need, from fewer bits on the
    /// publisher's uplink.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub svc: bool,
    /// With `svc`: the codec of those spatial layers, `vp9` (default) or `av1` (better
    /// pictures for the bits, at more of the publisher's CPU; publishers whose browser
    /// cannot encode it send simulcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svc_codec: Option<SvcCodec>,
}

/// The codec a room's publishers send spatial layers in.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SvcCodec {
    /// VP9.
    Vp9,
    /// AV1.
    Av1,
}

fn yes() -> bool {
    true
}

impl Default for MediaSpec {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            max_video_bitrate_kbps: None,
            simulcast: true,
            svc: false,
            svc_codec: None,
        }
    }
}

/// Where a room is in its life.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoomPhase {
    /// Accepted, not placed yet.
    #[default]
    Pending,
    /// On a shard, nobody in it.
    Placed,
    /// On a shard, with participants.
    Active,
    /// Its shard is gone; being placed again.
    Migrating,
    /// Invalid, or cannot be placed.
    Failed,
}

/// What the operator observed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoomStatus {
    /// Where the room is in its life.
    #[serde(default)]
    pub phase: RoomPhase,
    /// The shard hosting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Participants in it, as its shard last reported.
    #[serde(default)]
    pub participants: u32,
    /// How a client joins: the web client's deep link for the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Ready, Placed and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
