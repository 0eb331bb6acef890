//! The recordings a process runs, by name: started, moved, stopped and reported for the
//! shard's admin API (`/v1/recordings/{name}`), each a recorder ([`super::spawn`]) whose
//! room is at the signaling URL its spec names, composed when it stops if asked.

use super::RecorderOptions;
use super::manifest::{self, Manifest};
use super::store::ObjectStore;
use super::upload::{self, Uploader};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::recording::{RecordedFile, RecordingSpec, RecordingStatus};

/// Recordings running at once at most.
pub const MAX_RECORDINGS: usize = 16;
/// Recordings that ended kept for their status at most (the oldest go first).
const MAX_ENDED: usize = 256;
/// How long a stopped recorder may take to end its files before it is let go.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a stop request waits for that before it answers (`Stopping`): less than the
/// admin client waits for an answer.
const STOP_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Why a recording could not be started, moved or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    /// The name or the spec is invalid.
    #[error("invalid recording: {0}")]
    Invalid(String),
    /// A recording of that name records another room.
    #[error("{0}")]
    Conflict(&'static str),
    /// No recording of that name.
    #[error("no such recording")]
    NotFound,
    /// As many recordings as allowed run already.
    #[error("at most {0} recordings at once")]
    TooMany(usize),
    /// The files could not be started or read.
    #[error("recording storage: {0}")]
    Storage(String),
}

/// The status a recording's manifest describes in `phase`; `path` relative to the
/// recordings directory.
pub fn status(manifest: &Manifest, path: &Path, phase: &str) -> RecordingStatus {
    let composed = manifest.composed.as_ref();
    RecordingStatus {
        room: manifest.room.clone(),
        phase: phase.to_owned(),
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
        composed: composed.and_then(|c| c.file.clone()),
        compose_error: composed.and_then(|c| c.error.clone()),
        problem: None,
        stored: None,
    }
}

struct Running {
    room: String,
    dir: PathBuf,
    /// Where the room is; a new spec may move it.
    from: Arc<Mutex<String>>,
    compose: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Its copy in object storage, going up as it records: ends when told.
    upload: Option<(CancellationToken, tokio::task::JoinHandle<Uploader>)>,
}

struct Ended {
    dir: PathBuf,
    /// Where it is after its stop: [`STOPPING`], [`COMPOSING`], [`UPLOADING`] or
    /// [`STOPPED`].
    phase: Arc<AtomicU8>,
    order: u64,
}

/// A stopped recording's recorder is ending its files.
const STOPPING: u8 = 0;
/// Its files are ended and being composed.
const COMPOSING: u8 = 1;
/// Its files are being stored whole in object storage.
const UPLOADING: u8 = 3;
/// Its files, and its composed file if asked for, are complete (and stored).
const STOPPED: u8 = 2;

fn phase_name(phase: u8) -> &'static str {
    match phase {
        STOPPING => "Stopping",
        COMPOSING => "Composing",
        UPLOADING => "Uploading",
        _ => "Stopped",
    }
}

/// The recordings of one process.
pub struct Recorders {
    dir: PathBuf,
    signal_token: String,
    bind: IpAddr,
    store: Option<Arc<ObjectStore>>,
    stop: CancellationToken,
    running: Mutex<HashMap<String, Running>>,
    ended: Mutex<(u64, HashMap<String, Ended>)>,
}

impl Recorders {
    /// Recordings under `dir` (and in `store`, if any); recorders join with
    /// `signal_token`, receive on `bind` and stop with `stop`.
    pub fn new(
        dir: PathBuf,
        store: Option<Arc<ObjectStore>>,
        signal_token: String,
        bind: IpAddr,
        stop: CancellationToken,
    ) -> Self {
        Self {
            dir,
            signal_token,
            bind,
            store,
            stop,
            running: Mutex::new(HashMap::new()),
            ended: Mutex::new((0, HashMap::new())),
        }
    }

    fn status_of(&self, dir: &Path, phase: &str) -> Result<RecordingStatus, RecordingError> {
        let manifest = manifest::read(dir).map_err(|e| RecordingError::Storage(e.to_string()))?;
        let mut status = status(&manifest, dir.strip_prefix(&self.dir).unwrap_or(dir), phase);
        status.stored = upload::read_progress(dir).map(|p| p.status());
        Ok(status)
    }

    /// Starts recording `name` as `spec` says, or (for a recording that runs) points it
    /// at the room's shard the spec names. True when it started.
    pub fn put(
        &self,
        name: &str,
        spec: &RecordingSpec,
    ) -> Result<(bool, RecordingStatus), RecordingError> {
        if !tutti_shard_api::protocol::valid_id(name) || name.starts_with('.') {
            return Err(RecordingError::Invalid(
                "names are 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot".into(),
            ));
        }
        spec.validate().map_err(RecordingError::Invalid)?;
        let mut running = self
            .running
            .lock()
            .map_err(|_| RecordingError::Storage("poisoned".into()))?;
        running.retain(|_, r| !r.task.is_finished());
        if let Some(current) = running.get_mut(name) {
            if current.room != spec.room {
                return Err(RecordingError::Conflict(
                    "a recording of that name records another room",
                ));
            }
            if let Ok(mut from) = current.from.lock() {
                from.clone_from(&spec.from);
            }
            current.compose = spec.compose;
            let dir = current.dir.clone();
            drop(running);
            return Ok((false, self.status_of(&dir, "Recording")?));
        }
        if running.len() >= MAX_RECORDINGS {
            return Err(RecordingError::TooMany(MAX_RECORDINGS));
        }
        let (from, locate) = crate::pipe_end::movable_source(&spec.from);
        let stop = self.stop.child_token();
        let (dir, task) = super::spawn(
            RecorderOptions {
                recording: name.to_owned(),
                room: spec.room.clone(),
                locate,
                signal_token: self.signal_token.clone(),
                dir: self.dir.clone(),
                bind: self.bind,
            },
            stop.clone(),
        )
        .map_err(|e| RecordingError::Storage(e.to_string()))?;
        tracing::info!(recording = %name, room = %spec.room, dir = %dir.display(), "recording");
        let upload = self.store.as_ref().map(|store| {
            let ended = CancellationToken::new();
            let relative = dir.strip_prefix(&self.dir).unwrap_or(&dir).to_owned();
            let uploader = Uploader::new(store.clone(), dir.clone(), &relative);
            (ended.clone(), upload::spawn(uploader, ended))
        });
        running.insert(
            name.to_owned(),
            Running {
                room: spec.room.clone(),
                dir: dir.clone(),
                from,
                compose: spec.compose,
                stop,
                task,
                upload,
            },
        );
        drop(running);
        Ok((true, self.status_of(&dir, "Recording")?))
    }

    /// Stops recording `name`; its status once its files are ended (`Composing` while
    /// they are being composed), or `Stopping` if that takes more than a few seconds.
    pub async fn stop(&self, name: &str) -> Result<RecordingStatus, RecordingError> {
        let recording = self
            .running
            .lock()
            .map_err(|_| RecordingError::Storage("poisoned".into()))?
            .remove(name)
            .ok_or(RecordingError::NotFound)?;
        recording.stop.cancel();
        // Ended (for its status) before anything is waited on, so that a second request
        // finds it whatever happens to this one; the waiting and composing go on alone.
        let phase = Arc::new(AtomicU8::new(STOPPING));
        if let Ok(mut ended) = self.ended.lock() {
            let (counter, map) = &mut *ended;
            *counter += 1;
            map.insert(
                name.to_owned(),
                Ended {
                    dir: recording.dir.clone(),
                    phase: phase.clone(),
                    order: *counter,
                },
            );
            if map.len() > MAX_ENDED
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.order)
                    .map(|(name, _)| name.clone())
            {
                map.remove(&oldest);
            }
        }
        let (dir, compose, task, upload, name_owned) = (
            recording.dir.clone(),
            recording.compose,
            recording.task,
            recording.upload,
            name.to_owned(),
        );
        let ending = phase.clone();
        tokio::spawn(async move {
            let ended_in_time = tokio::time::timeout(STOP_WAIT, task).await.is_ok();
            if !ended_in_time {
                tracing::warn!(recording = %name_owned, "a recorder did not end its files in time");
            }
            if compose {
                ending.store(COMPOSING, Ordering::Release);
                match super::compose_recording(&dir).await {
                    Ok(file) => tracing::info!(dir = %dir.display(), %file, "recording composed"),
                    Err(err) => {
                        tracing::warn!(dir = %dir.display(), %err, "recording not composed")
                    }
                }
            }
            if let Some((ended, uploading)) = upload {
                ending.store(UPLOADING, Ordering::Release);
                ended.cancel();
                if let Ok(mut uploader) = uploading.await {
                    // A recorder still running may still write: its files stay.
                    uploader.finish(!ended_in_time).await;
                }
            }
            ending.store(STOPPED, Ordering::Release);
        });
        let deadline = tokio::time::Instant::now() + STOP_ANSWER_WAIT;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        while phase.load(Ordering::Acquire) == STOPPING && tokio::time::Instant::now() < deadline {
            poll.tick().await;
        }
        self.status_of(&recording.dir, phase_name(phase.load(Ordering::Acquire)))
    }

    /// The recording `name`: running, or the last one of that name that ended.
    pub fn status(&self, name: &str) -> Result<RecordingStatus, RecordingError> {
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(name).map(|r| (r.dir.clone(), !r.task.is_finished())));
        if let Some((dir, running)) = running {
            return self.status_of(&dir, if running { "Recording" } else { "Stopped" });
        }
        let ended = self.ended.lock().ok().and_then(|e| {
            e.1.get(name)
                .map(|e| (e.dir.clone(), e.phase.load(Ordering::Acquire)))
        });
        match ended {
            Some((dir, phase)) => self.status_of(&dir, phase_name(phase)),
            None => Err(RecordingError::NotFound),
        }
    }

    /// The names of the recordings running.
    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops every recording and waits for their files to be ended (not composed), and
    /// their last bytes stored as chunks: the process is going away, and the control plane
    /// goes on recording elsewhere.
    pub async fn stop_all(&self) {
        let running: Vec<(String, Running)> = match self.running.lock() {
            Ok(mut running) => running.drain().collect(),
            Err(_) => return,
        };
        for (_, recording) in &running {
            recording.stop.cancel();
        }
        for (name, recording) in running {
            if tokio::time::timeout(STOP_WAIT, recording.task)
                .await
                .is_err()
            {
                tracing::warn!(recording = %name, "a recorder did not end its files in time");
            }
            if let Some((ended, uploading)) = recording.upload {
                ended.cancel();
                // The round in flight, then the last: bounded together, as the process is
                // going away.
                let last = async {
                    if let Ok(mut uploader) = uploading.await {
                        uploader.sync().await;
                    }
                };
                if tokio::time::timeout(STOP_WAIT, last).await.is_err() {
                    tracing::warn!(recording = %name, "a recording's last bytes were not stored in time");
                }
            }
        }
    }
}
