//! Recordings as the gateway's HTTP API offers them: `POST`, `GET` and `DELETE` of
//! `/v1/rooms/{room}/recording`, for holders of a join token for the room with the
//! `record` grant. The gateway only writes what is asked into the live state (a
//! recording record named after the room) and reads back what the control loop saw
//! (`tutti_control::recordings`, which runs it on the room's shard), the same in local
//! mode and in a cluster.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::time::Duration;
pub use tutti_shard_api::recording::{RecordedFile, RecordingStatus};
use tutti_store::{LiveView, LiveWriter, RecordingRecord};

/// Recordings asked for through gateways and not stopped, at most, in the whole system.
pub const MAX_RECORDINGS: usize = 64;
/// How long a stop waits for the recording's shard to end its files.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// The owner of the records the gateway's API writes.
pub const GATEWAY_OWNER: &str = "gateway";
/// The owner of the records a rooms file's `record = true` writes.
pub const FILE_OWNER: &str = "Gateway/file";

/// Why a recording could not be started or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// The room is neither declared nor hosted.
    #[error("no such room is declared or hosted")]
    NoRoom,
    /// A recording of the room runs already.
    #[error("{0}")]
    Conflict(&'static str),
    /// No recording of the room (stop, status).
    #[error("the room is not being recorded")]
    NotRecording,
    /// As many recordings as allowed run already.
    #[error("at most {0} recordings at once")]
    TooMany(usize),
    /// The live state could not be written or read.
    #[error("the recording could not be changed: {0}")]
    Storage(String),
}

/// Starts, stops and reports recordings of rooms.
pub trait RecordingControl: Send + Sync {
    /// Starts recording `room`.
    fn start(&self, room: &str) -> BoxFuture<'_, Result<RecordingStatus, RecordingError>>;
    /// Stops the recording of `room`; returns what it holds once its files are ended.
    fn stop(&self, room: &str) -> BoxFuture<'_, Result<RecordingStatus, RecordingError>>;
    /// The recording of `room`, running or the last one stopped.
    fn status(&self, room: &str) -> Result<RecordingStatus, RecordingError>;
}

/// Recordings in the live state.
pub struct StoreRecordings<S> {
    store: S,
    compose: bool,
}

impl<S: LiveView + LiveWriter + Send + Sync> StoreRecordings<S> {
    /// Recordings in `store`; `compose` asks for one composed file when each stops.
    pub fn new(store: S, compose: bool) -> Self {
        Self { store, compose }
    }

    /// Records `room` (a rooms file's `record = true`), unless a recording of that name
    /// exists: one stopped stays stopped, and one of another owner stays theirs.
    pub async fn declare(&self, room: &str) -> Result<(), RecordingError> {
        if self.store.recording(room).is_some() {
            return Ok(());
        }
        self.store
            .put_recording(RecordingRecord {
                name: room.to_owned(),
                room: room.to_owned(),
                compose: false,
                stopped: false,
                owner: Some(FILE_OWNER.to_owned()),
            })
            .await
            .map_err(|e| RecordingError::Storage(e.to_string()))
    }
}

/// Whether the gateway's API answers for `record` as the recording of `room`: named after
/// it, recording it, and asked for through a gateway (not a `Recording` resource, whose
/// name may be any room's).
fn ours(record: &RecordingRecord, room: &str) -> bool {
    record.name == room
        && record.room == room
        && matches!(record.owner.as_deref(), Some(GATEWAY_OWNER | FILE_OWNER))
}

/// The status shown before any shard reported on it.
fn pending(room: &str) -> RecordingStatus {
    RecordingStatus::empty(room, "Pending")
}

impl<S: LiveView + LiveWriter + Send + Sync> StoreRecordings<S> {
    /// What the recording of `room` looks like now: its current segment's status, or
    /// `Pending`; `None` when there is none.
    fn current(&self, room: &str) -> Option<RecordingStatus> {
        let record = self.store.recording(room).filter(|r| ours(r, room))?;
        let state = self.store.recording_state(room);
        let last = state.as_ref().and_then(|s| s.segments.last());
        let problem = state.as_ref().and_then(|s| s.problem.clone());
        let status = match last {
            Some(segment) => {
                let mut status = segment.status.clone();
                // A shard that went away cannot say the recording stopped.
                if record.stopped && status.phase == "Recording" {
                    status.phase = "Stopped".into();
                }
                status
            }
            None if record.stopped => RecordingStatus {
                phase: "Stopped".into(),
                ..pending(room)
            },
            None => pending(room),
        };
        Some(RecordingStatus { problem, ..status })
    }
}

impl<S: LiveView + LiveWriter + Send + Sync> RecordingControl for StoreRecordings<S> {
    fn start(&self, room: &str) -> BoxFuture<'_, Result<RecordingStatus, RecordingError>> {
        let room = room.to_owned();
        async move {
            if self.store.room(&room).is_none() && self.store.route(&room).is_none() {
                return Err(RecordingError::NoRoom);
            }
            let running: Vec<RecordingRecord> = self
                .store
                .recordings()
                .into_iter()
                .filter(|r| !r.stopped)
                .collect();
            // By this API or by a Recording resource of any name.
            if running.iter().any(|r| r.room == room) {
                return Err(RecordingError::Conflict(
                    "the room is being recorded already",
                ));
            }
            if self
                .store
                .recording(&room)
                .is_some_and(|r| !ours(&r, &room))
            {
                return Err(RecordingError::Conflict(
                    "a Recording resource has the room's name",
                ));
            }
            if running.len() >= MAX_RECORDINGS {
                return Err(RecordingError::TooMany(MAX_RECORDINGS));
            }
            // A new recording: what the last one left is forgotten (its files stay).
            self.store
                .delete_recording_state(&room)
                .await
                .map_err(|e| RecordingError::Storage(e.to_string()))?;
            self.store
                .put_recording(RecordingRecord {
                    name: room.clone(),
                    room: room.clone(),
                    compose: self.compose,
                    stopped: false,
                    owner: Some(GATEWAY_OWNER.into()),
                })
                .await
                .map_err(|e| RecordingError::Storage(e.to_string()))?;
            Ok(pending(&room))
        }
        .boxed()
    }

    fn stop(&self, room: &str) -> BoxFuture<'_, Result<RecordingStatus, RecordingError>> {
        let room = room.to_owned();
        async move {
            let record = self
                .store
                .recording(&room)
                .filter(|r| !r.stopped && ours(r, &room))
                .ok_or(RecordingError::NotRecording)?;
            self.store
                .put_recording(RecordingRecord {
                    stopped: true,
                    ..record
                })
                .await
                .map_err(|e| RecordingError::Storage(e.to_string()))?;
            // The control loop stops it on its shard; its files are ended once the state
            // says it runs nowhere.
            let deadline = tokio::time::Instant::now() + STOP_WAIT;
            let mut poll = tokio::time::interval(Duration::from_millis(100));
            while tokio::time::Instant::now() < deadline {
                poll.tick().await;
                let runs = self
                    .store
                    .recording_state(&room)
                    .is_some_and(|s| s.shard.is_some());
                if !runs {
                    break;
                }
            }
            self.current(&room).ok_or(RecordingError::NotRecording)
        }
        .boxed()
    }

    fn status(&self, room: &str) -> Result<RecordingStatus, RecordingError> {
        self.current(room).ok_or(RecordingError::NotRecording)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_store::{MemoryStore, RecordingSegment, RecordingStateRecord, RoomRecord};

    #[tokio::test]
    async fn recordings_are_asked_for_in_the_live_state_and_read_back_from_it() {
        let store = MemoryStore::new();
        store
            .put_room(RoomRecord::with_defaults("lesson"))
            .await
            .unwrap();
        let recordings = StoreRecordings::new(store.clone(), true);
        assert_eq!(
            recordings.start("nowhere").await,
            Err(RecordingError::NoRoom)
        );
        assert_eq!(
            recordings.status("lesson"),
            Err(RecordingError::NotRecording)
        );
        let started = recordings.start("lesson").await.unwrap();
        assert_eq!(started.phase, "Pending");
        let record = store.recording("lesson").unwrap();
        assert!(record.compose && !record.stopped);
        assert_eq!(record.owner.as_deref(), Some(GATEWAY_OWNER));
        assert!(matches!(
            recordings.start("lesson").await,
            Err(RecordingError::Conflict(_))
        ));
        // What the loop saw is what the API shows.
        let mut status = pending("lesson");
        status.phase = "Recording".into();
        status.duration_ms = 4_000;
        store
            .put_recording_state(RecordingStateRecord {
                name: "lesson".into(),
                shard: None,
                segments: vec![RecordingSegment {
                    shard: "s1".into(),
                    status: status.clone(),
                }],
                problem: None,
            })
            .await
            .unwrap();
        assert_eq!(recordings.status("lesson").unwrap().duration_ms, 4_000);
        // Stopped: the record says so at once, and a second stop finds nothing running.
        let stopped = recordings.stop("lesson").await.unwrap();
        assert_eq!(stopped.phase, "Stopped");
        assert!(store.recording("lesson").unwrap().stopped);
        assert_eq!(
            recordings.stop("lesson").await,
            Err(RecordingError::NotRecording)
        );
        // Started again: a new recording, the old state forgotten.
        assert_eq!(recordings.start("lesson").await.unwrap().phase, "Pending");
        assert!(store.recording_state("lesson").is_none());
    }

    #[tokio::test]
    async fn recordings_of_resources_are_not_the_apis_to_stop_or_show_and_block_a_second() {
        let store = MemoryStore::new();
        for room in ["lesson", "other"] {
            store
                .put_room(RoomRecord::with_defaults(room))
                .await
                .unwrap();
        }
        // A Recording resource named "other" records the lesson.
        store
            .put_recording(RecordingRecord {
                name: "other".into(),
                room: "lesson".into(),
                compose: false,
                stopped: false,
                owner: Some("Recording/music/other".into()),
            })
            .await
            .unwrap();
        let recordings = StoreRecordings::new(store.clone(), false);
        assert!(matches!(
            recordings.start("lesson").await,
            Err(RecordingError::Conflict(_))
        ));
        assert!(matches!(
            recordings.start("other").await,
            Err(RecordingError::Conflict(_))
        ));
        assert_eq!(
            recordings.status("other"),
            Err(RecordingError::NotRecording)
        );
        assert_eq!(
            recordings.stop("other").await,
            Err(RecordingError::NotRecording)
        );
        assert!(!store.recording("other").unwrap().stopped);
        // A rooms file's recording is declared once, and never over another's.
        recordings.declare("other").await.unwrap();
        assert_eq!(
            store.recording("other").unwrap().owner.as_deref(),
            Some("Recording/music/other")
        );
    }
}
