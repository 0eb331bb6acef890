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
    /// A Secret key holding the room's password. The operator stores only its argon2 hash
    /// in the live state; the password itself never leaves the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// What may be published.
    #[serde(default)]
    pub media: MediaSpec,
    /// How long the room keeps its media pipeline while nobody is in it (`30s`, `5m`,
    /// `1h`; at most a week).
    #[serde(default = "default_empty_timeout")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('168h')").message("emptyTimeout is at most 168h"))]
    pub empty_timeout: String,
    /// Place the room only on shards with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shard_selector: BTreeMap<String, String>,
}

fn default_max_participants() -> u32 {
    16
}

fn default_empty_timeout() -> String {
    "5m".into()
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
