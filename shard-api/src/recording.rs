//! Recordings on a shard: what the control plane asks a shard to record
//! (`PUT /v1/recordings/{name}`), and the status a recording shows, the same for the
//! shard's admin API, the live state, the gateway's API and the `Recording` resource.

use serde::{Deserialize, Serialize};

/// The longest signaling URL a recording spec may name.
pub const MAX_FROM_LEN: usize = 512;

/// What a shard is asked to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordingSpec {
    /// The room (pipeline) to record.
    pub room: String,
    /// The signaling URL (`ws://…/v1/signal`) of the shard holding the room; asking
    /// again with another moves the recorder there (a new take).
    pub from: String,
    /// Compose the tracks into one file when the recording stops.
    #[serde(default)]
    pub compose: bool,
}

impl RecordingSpec {
    /// Checks the room's name and the URL's shape and length.
    pub fn validate(&self) -> Result<(), String> {
        validate_room_and_source(&self.room, &self.from)
    }
}

/// Checks a room to receive (not starting with a dot: it names a directory) and the
/// signaling URL of the shard holding it.
pub fn validate_room_and_source(room: &str, from: &str) -> Result<(), String> {
    if !crate::protocol::valid_id(room) || room.starts_with('.') {
        return Err(
            "room must be 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot".into(),
        );
    }
    let scheme_ok = from.starts_with("ws://") || from.starts_with("wss://");
    if !scheme_ok || from.len() > MAX_FROM_LEN || !from.ends_with("/v1/signal") {
        return Err(format!(
            "from must be a shard's ws:// or wss:// …/v1/signal URL of at most {MAX_FROM_LEN} characters"
        ));
    }
    Ok(())
}

/// A recording's state, as it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStatus {
    /// The room.
    pub room: String,
    /// `Recording` while it runs, `Stopping` while its files are ended, `Composing` while
    /// its tracks are put into one file, `Uploading` while its files are stored whole in
    /// object storage, `Stopped` once it ended.
    pub phase: String,
    /// Where its files are, relative to the recordings directory: `<room>/<UTC start>`.
    pub path: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// Connections to the room's shard; more than one means gaps between them.
    pub takes: usize,
    /// The longest track's duration.
    pub duration_ms: u64,
    /// The files' total size.
    pub bytes: u64,
    /// Each track's file.
    pub files: Vec<RecordedFile>,
    /// The file of the whole session, once composed.
    pub composed: Option<String>,
    /// Why composing failed.
    pub compose_error: Option<String>,
    /// What keeps the control plane from running it as asked (a shard refusing or out of
    /// reach); shards leave it empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Where the recording is written in object storage, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredRecording>,
}

/// A recording's copy in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRecording {
    /// Where: `s3://bucket/prefix/<room>/<UTC start>/`.
    pub location: String,
    /// Bytes of the files stored so far.
    pub bytes: u64,
    /// Whether every file is stored whole (chunks are what a running or interrupted
    /// recording has).
    pub complete: bool,
    /// The last failure to store, while it is not resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RecordingStatus {
    /// A recording of `room` in `phase` that holds nothing yet.
    pub fn empty(room: &str, phase: &str) -> Self {
        Self {
            room: room.to_owned(),
            phase: phase.to_owned(),
            path: String::new(),
            started_at_ms: 0,
            ended_at_ms: None,
            takes: 0,
            duration_ms: 0,
            bytes: 0,
            files: Vec::new(),
            composed: None,
            compose_error: None,
            problem: None,
            stored: None,
        }
    }
}

/// One file of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedFile {
    /// Its name in the recording's directory.
    pub file: String,
    /// Whose track it holds.
    pub name: String,
    /// `audio` or `video`.
    pub kind: String,
    /// The codec's MIME type.
    pub codec: String,
    /// Its duration.
    pub duration_ms: u64,
    /// Its size.
    pub bytes: u64,
    /// Whether the file is complete (its track or take ended).
    pub complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_room_and_a_shard_signaling_url() {
        let good = RecordingSpec {
            room: "lesson".into(),
            from: "ws://10.0.0.1:7880/v1/signal".into(),
            compose: false,
        };
        assert!(good.validate().is_ok());
        for (room, from) in [
            ("../x", "ws://10.0.0.1:7880/v1/signal"),
            ("..", "ws://10.0.0.1:7880/v1/signal"),
            ("lesson", "http://10.0.0.1/v1/signal"),
            ("lesson", "ws://10.0.0.1/elsewhere"),
        ] {
            let bad = RecordingSpec {
                room: room.into(),
                from: from.into(),
                compose: false,
            };
            assert!(bad.validate().is_err(), "{room} {from}");
        }
        let long = RecordingSpec {
            from: format!("ws://{}/v1/signal", "a".repeat(MAX_FROM_LEN)),
            ..good
        };
        assert!(long.validate().is_err());
        assert!(
            serde_json::from_str::<RecordingSpec>(
                r#"{"room":"a","from":"ws://x/v1/signal","x":1}"#
            )
            .is_err()
        );
    }
}
