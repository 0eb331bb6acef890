//! Recordings as the gateway's HTTP API offers them: `POST`, `GET` and `DELETE` of
//! `/v1/rooms/{room}/recording`, for holders of a join token for the room with the
//! `record` grant. What a recording is and where it runs belongs to the mode: local mode
//! records in its own process ([`crate::local`]); a gateway without a [`RecordingControl`]
//! answers that recordings are not available here.

use serde::Serialize;
use std::path::Path;
use tutti_sfu::recorder::manifest::Manifest;

/// The state of a room's recording, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStatus {
    /// The room.
    pub room: String,
    /// `Recording` while it runs, `Composing` while its tracks are put into one file,
    /// `Stopped` once it ended.
    pub phase: &'static str,
    /// Where its files are, relative to the recordings directory: `<room>/<UTC start>`.
    pub path: String,
    /// When it started and ended, in milliseconds since the Unix epoch.
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
}

/// One file of a recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

impl RecordingStatus {
    /// The status a manifest describes in `phase`; `path` relative to the recordings
    /// directory.
    pub fn from_manifest(manifest: &Manifest, path: &Path, phase: &'static str) -> Self {
        let composed = manifest.composed.as_ref();
        Self {
            room: manifest.room.clone(),
            phase,
            composed: composed.and_then(|c| c.file.clone()),
            compose_error: composed.and_then(|c| c.error.clone()),
            path: path.display().to_string(),
            started_at_ms: manifest.started_at_ms,
            ended_at_ms: manifest.ended_at_ms,
            takes: manifest.takes.len(),
            duration_ms: manifest
                .tracks
                .iter()
                .map(|t| t.duration_ms)
                .max()
                .unwrap_or(0),
            bytes: manifest.tracks.iter().map(|t| t.bytes).sum(),
            files: manifest
                .tracks
                .iter()
                .map(|t| RecordedFile {
                    file: t.file.clone(),
                    name: t.name.clone(),
                    kind: t.kind.clone(),
                    codec: t.codec.clone(),
                    duration_ms: t.duration_ms,
                    bytes: t.bytes,
                    complete: t.complete,
                })
                .collect(),
        }
    }
}

/// Why a recording could not be started or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// The room is neither declared nor hosted.
    #[error("no such room is declared or hosted")]
    NoRoom,
    /// A recording of the room runs already (start) or none does (stop, status).
    #[error("{0}")]
    Conflict(&'static str),
    /// No recording of the room (stop, status).
    #[error("the room is not being recorded")]
    NotRecording,
    /// As many recordings as allowed run already.
    #[error("at most {0} recordings at once")]
    TooMany(usize),
    /// The files could not be started.
    #[error("the recording could not be started: {0}")]
    Storage(String),
}

/// Starts, stops and reports recordings of rooms.
pub trait RecordingControl: Send + Sync {
    /// Starts recording `room`.
    fn start(&self, room: &str) -> Result<RecordingStatus, RecordingError>;
    /// Stops the recording of `room`; returns what it holds once its files are ended.
    fn stop(
        &self,
        room: &str,
    ) -> futures_util::future::BoxFuture<'_, Result<RecordingStatus, RecordingError>>;
    /// The recording of `room`: the running one, else the last one this gateway made.
    fn status(&self, room: &str) -> Result<RecordingStatus, RecordingError>;
}
