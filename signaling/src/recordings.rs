//! Recordings as the gateway's HTTP API offers them: `POST`, `GET` and `DELETE` of
//! `/v1/rooms/{room}/recording`, for holders of a join token for the room with the
//! `record` grant. What a recording is and where it runs belongs to the mode: local mode
//! records in its own process ([`crate::local`]); a gateway without a [`RecordingControl`]
//! answers that recordings are not available here.

pub use tutti_shard_api::recording::{RecordedFile, RecordingStatus};

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
