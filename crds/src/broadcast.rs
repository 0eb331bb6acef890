//! `Broadcast`: a 1:N event (a concert) whose audience is spread over edge shards fed by
//! one origin shard.

use crate::common::{Condition, LocalObjectRef};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the organiser asks for.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tutti.dev",
    version = "v1alpha1",
    kind = "Broadcast",
    namespaced,
    status = "BroadcastStatus",
    shortname = "bc",
    category = "tutti",
    doc = "A concert: a few presenters on an origin shard, an audience on a tree of edge shards.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Origin", type_ = "string", json_path = ".status.origin"),
    printcolumn(name = "Edges", type_ = "integer", json_path = ".status.edgeCount"),
    printcolumn(name = "Viewers", type_ = "integer", json_path = ".status.viewers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastSpec {
    /// Most presenters at once (1–16).
    #[serde(default = "default_presenters")]
    #[schemars(range(min = 1, max = 16))]
    pub presenters: u32,
    /// The audience expected; the cascade is built ahead of it (0–1000000).
    #[serde(default)]
    #[schemars(range(max = 1000000))]
    pub expected_audience: u32,
    /// Viewers one edge shard serves at most (1–100000).
    #[serde(default = "default_max_viewers_per_shard")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_viewers_per_shard: u32,
    /// Audio only (no video is forwarded).
    #[serde(default)]
    pub audio_only: bool,
    /// Broadcast the stage of an existing Room (its presenters reach this audience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_ref: Option<LocalObjectRef>,
    /// Also package the stage as HLS (`/hls/<name>/index.m3u8` on the gateways), for
    /// viewers WebRTC cannot reach; needs a ShardPool with `hls` for the stage's shard.
    #[serde(default)]
    pub hls: bool,
    /// With `hls`: viewers over WebRTC at most; past them, new viewers are sent to HLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_webrtc_viewers: Option<u32>,
}

fn default_presenters() -> u32 {
    1
}

fn default_max_viewers_per_shard() -> u32 {
    500
}

/// Where a broadcast is in its life.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BroadcastPhase {
    /// Accepted, no origin yet.
    #[default]
    Pending,
    /// Origin and edges placed, nobody presenting.
    Placed,
    /// A presenter is on stage.
    Live,
    /// Invalid, or cannot be placed.
    Failed,
}

/// One edge shard of the cascade.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStatus {
    /// The edge shard.
    pub shard: String,
    /// Viewers seated on it.
    pub viewers: u32,
    /// The shard it relays from (the origin or another edge).
    pub parent: String,
}

/// What the operator observed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BroadcastStatus {
    /// Where the broadcast is in its life.
    #[serde(default)]
    pub phase: BroadcastPhase,
    /// The origin shard, where presenters publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The edge shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<EdgeStatus>,
    /// Number of edges (for `kubectl get`).
    #[serde(default)]
    pub edge_count: u32,
    /// Viewers watching.
    #[serde(default)]
    pub viewers: u32,
    /// Relay hops from the origin to the farthest edge.
    #[serde(default)]
    pub cascade_depth: u32,
    /// Ready, Placed and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
