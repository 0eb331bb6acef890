//! `Recording`: a Room (or a Broadcast's stage) recorded by the shard holding it, every
//! track into a file of its own on that shard's recordings volume.

use crate::common::{Condition, LocalObjectRef};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to record.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tutti.dev",
    version = "v1alpha1",
    kind = "Recording",
    namespaced,
    status = "RecordingStatus",
    shortname = "rec",
    category = "tutti",
    doc = "A recording of a Room or of a Broadcast's stage: every track in a file of its own, on the recordings volume of the shard that holds it.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Shard", type_ = "string", json_path = ".status.shard"),
    printcolumn(name = "Duration", type_ = "integer", json_path = ".status.durationMs"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSpec {
    /// The Room to record (give this or `broadcastRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_ref: Option<LocalObjectRef>,
    /// The Broadcast whose stage to record (give this or `roomRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_ref: Option<LocalObjectRef>,
    /// Also compose the tracks into one MP4 when the recording stops (every camera tiled,
    /// every microphone mixed; the shard needs `ffmpeg`).
    #[serde(default)]
    pub compose: bool,
    /// Stop recording; the resource stays, with its files in the status.
    #[serde(default)]
    pub stopped: bool,
}

/// Where a recording is in its life.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecordingPhase {
    /// Accepted; no shard records it yet.
    #[default]
    Pending,
    /// A shard records it.
    Recording,
    /// Stopped; its shard is ending its files.
    Stopping,
    /// Stopped; its tracks are being composed into one file.
    Composing,
    /// Stopped; its files are being stored whole in object storage.
    Uploading,
    /// Stopped; its files are complete.
    Stopped,
    /// Invalid, or refused.
    Failed,
}

/// One file of a recording.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFileStatus {
    /// The file's path under the shard's recordings directory.
    pub path: String,
    /// Whose track it holds.
    pub participant: String,
    /// `audio` or `video`.
    pub kind: String,
    /// The codec's MIME type.
    pub codec: String,
    /// Its duration in milliseconds.
    pub duration_ms: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What the operator observed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStatus {
    /// Where the recording is in its life.
    #[serde(default)]
    pub phase: RecordingPhase,
    /// The shard recording it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The room recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Stretches on different shards (the room moved between them).
    #[serde(default)]
    pub segments: u32,
    /// The longest track of the current segment, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// The size of every file, in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Every file of every segment (at most 100 are listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<RecordedFileStatus>,
    /// The composed file's path, once composed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composed: Option<String>,
    /// Where each segment is in object storage (`s3://bucket/prefix/<room>/<UTC start>/`),
    /// when the shards write there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<String>,
    /// Why it is Failed, or what keeps it from running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
