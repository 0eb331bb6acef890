//! Local mode's recordings: recorders in this process (`tutti_sfu::recorder`), each
//! following its room to whichever embedded shard holds it, writing under
//! `--record-dir`; and the hourly deletion of recordings past `--record-retention-days`.

use crate::recordings::{RecordingControl, RecordingError, RecordingStatus};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tutti_sfu::recorder::{self, RecorderOptions, manifest};
use tutti_store::{LiveView, MemoryStore};

/// Recordings running at once at most.
pub const MAX_RECORDINGS: usize = 16;
/// How long stopping waits for a recorder to end its files.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How often old recordings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A running recording.
struct Running {
    dir: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The recordings of local mode.
pub struct LocalRecordings {
    dir: PathBuf,
    store: MemoryStore,
    signal_token: String,
    bind: IpAddr,
    stop: CancellationToken,
    running: Mutex<HashMap<String, Running>>,
    /// The last recording of each room that ended, for its status, and its composing.
    ended: Mutex<HashMap<String, Ended>>,
    /// Whether a recording stopped over the API is composed into one file.
    compose: bool,
}

/// A recording that ended.
struct Ended {
    dir: PathBuf,
    composing: Option<tokio::task::JoinHandle<()>>,
}

impl LocalRecordings {
    /// Recordings under `dir` of rooms in `store`; recorders bind `bind` and stop with
    /// `stop`.
    pub fn new(
        dir: PathBuf,
        store: MemoryStore,
        signal_token: String,
        bind: IpAddr,
        stop: CancellationToken,
        compose: bool,
    ) -> Self {
        Self {
            dir,
            store,
            signal_token,
            bind,
            stop,
            running: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            compose,
        }
    }

    fn status_of(
        &self,
        dir: &Path,
        phase: &'static str,
    ) -> Result<RecordingStatus, RecordingError> {
        let manifest = manifest::read(dir).map_err(|e| RecordingError::Storage(e.to_string()))?;
        let relative = dir.strip_prefix(&self.dir).unwrap_or(dir);
        Ok(recorder::registry::status(&manifest, relative, phase))
    }

    /// Stops every recording and waits for their files to be ended.
    pub async fn stop_all(&self) {
        let running: Vec<(String, Running)> = match self.running.lock() {
            Ok(mut running) => running.drain().collect(),
            Err(_) => return,
        };
        for (_, recording) in &running {
            recording.stop.cancel();
        }
        for (room, recording) in running {
            if tokio::time::timeout(STOP_WAIT, recording.task)
                .await
                .is_err()
            {
                tracing::warn!(%room, "a recorder did not end its files in time");
            }
        }
    }
}

impl RecordingControl for LocalRecordings {
    fn start(&self, room: &str) -> Result<RecordingStatus, RecordingError> {
        if self.store.room(room).is_none() {
            return Err(RecordingError::NoRoom);
        }
        let mut running = self
            .running
            .lock()
            .map_err(|_| RecordingError::Storage("poisoned".into()))?;
        running.retain(|_, r| !r.task.is_finished());
        if running.contains_key(room) {
            return Err(RecordingError::Conflict(
                "the room is being recorded already",
            ));
        }
        if running.len() >= MAX_RECORDINGS {
            return Err(RecordingError::TooMany(MAX_RECORDINGS));
        }
        let located = self.store.clone();
        let name = room.to_owned();
        let locate: recorder::Locate = Arc::new(move || {
            let route = located.route(&name)?;
            Some(located.shard(&route.shard)?.signal_url)
        });
        let stop = self.stop.child_token();
        let (dir, task) = recorder::spawn(
            RecorderOptions {
                recording: room.to_owned(),
                room: room.to_owned(),
                locate,
                signal_token: self.signal_token.clone(),
                dir: self.dir.clone(),
                bind: self.bind,
            },
            stop.clone(),
        )
        .map_err(|e| RecordingError::Storage(e.to_string()))?;
        tracing::info!(%room, dir = %dir.display(), "recording the room");
        running.insert(
            room.to_owned(),
            Running {
                dir: dir.clone(),
                stop,
                task,
            },
        );
        drop(running);
        self.status_of(&dir, "Recording")
    }

    fn stop(&self, room: &str) -> BoxFuture<'_, Result<RecordingStatus, RecordingError>> {
        let room = room.to_owned();
        async move {
            let recording = self
                .running
                .lock()
                .map_err(|_| RecordingError::Storage("poisoned".into()))?
                .remove(&room)
                .ok_or(RecordingError::NotRecording)?;
            recording.stop.cancel();
            if tokio::time::timeout(STOP_WAIT, recording.task)
                .await
                .is_err()
            {
                tracing::warn!(%room, "a recorder did not end its files in time");
            }
            let composing = self.compose.then(|| {
                let dir = recording.dir.clone();
                tokio::spawn(async move {
                    match recorder::compose_recording(&dir).await {
                        Ok(file) => {
                            tracing::info!(dir = %dir.display(), %file, "recording composed")
                        }
                        Err(err) => {
                            tracing::warn!(dir = %dir.display(), %err, "recording not composed")
                        }
                    }
                })
            });
            let phase = if composing.is_some() {
                "Composing"
            } else {
                "Stopped"
            };
            if let Ok(mut ended) = self.ended.lock() {
                ended.insert(
                    room.clone(),
                    Ended {
                        dir: recording.dir.clone(),
                        composing,
                    },
                );
            }
            self.status_of(&recording.dir, phase)
        }
        .boxed()
    }

    fn status(&self, room: &str) -> Result<RecordingStatus, RecordingError> {
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(room).map(|r| (r.dir.clone(), !r.task.is_finished())));
        if let Some((dir, running)) = running {
            return self.status_of(&dir, if running { "Recording" } else { "Stopped" });
        }
        let ended = self.ended.lock().ok().and_then(|e| {
            e.get(room).map(|e| {
                let composing = e.composing.as_ref().is_some_and(|c| !c.is_finished());
                (e.dir.clone(), composing)
            })
        });
        match ended {
            Some((dir, true)) => self.status_of(&dir, "Composing"),
            Some((dir, false)) => self.status_of(&dir, "Stopped"),
            None => Err(RecordingError::NotRecording),
        }
    }
}

/// Deletes, every hour until `stop`, the recordings under `dir` that ended more than
/// `days` days ago.
pub async fn sweep_old(dir: PathBuf, days: u32, stop: CancellationToken) {
    let keep = Duration::from_secs(u64::from(days) * 86_400);
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let (dir, removed) = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let removed = remove_ended_before(&dir, SystemTime::now(), keep);
                (dir, removed)
            })
            .await
            .unwrap_or_else(|_| (PathBuf::new(), 0))
        };
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "old recordings deleted");
        }
    }
}

/// Removes the recordings (`<dir>/<room>/<start>/`) whose manifest says they ended more
/// than `keep` before `now`; returns how many. A recording without a readable manifest,
/// or one still running, is left alone.
pub fn remove_ended_before(dir: &Path, now: SystemTime, keep: Duration) -> usize {
    let cutoff = manifest::unix_ms(now).saturating_sub(keep.as_millis() as u64);
    let mut removed = 0;
    let Ok(rooms) = std::fs::read_dir(dir) else {
        return 0;
    };
    for room in rooms.flatten() {
        let Ok(recordings) = std::fs::read_dir(room.path()) else {
            continue;
        };
        for recording in recordings.flatten() {
            let path = recording.path();
            let ended = manifest::read(&path).ok().and_then(|m| m.ended_at_ms);
            if ended.is_some_and(|ended| ended < cutoff) && std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_sfu::recorder::manifest::Manifest;

    fn recording(dir: &Path, room: &str, stamp: &str, ended_at_ms: Option<u64>) -> PathBuf {
        let path = dir.join(room).join(stamp);
        std::fs::create_dir_all(&path).expect("dir");
        let manifest = Manifest {
            recording: room.into(),
            room: room.into(),
            started_at_ms: 1,
            updated_at_ms: 1,
            ended_at_ms,
            takes: Vec::new(),
            tracks: Vec::new(),
            composed: None,
        };
        manifest::write(&path, &manifest).expect("manifest");
        path
    }

    #[test]
    fn only_recordings_that_ended_long_enough_ago_are_deleted() {
        let dir = std::env::temp_dir().join(format!("tutti-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let day = 86_400_000;
        let now_ms = 100 * day;
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        let old = recording(&dir, "lesson", "a", Some(now_ms - 8 * day));
        let recent = recording(&dir, "lesson", "b", Some(now_ms - 6 * day));
        let running = recording(&dir, "concert", "c", None);
        let unreadable = dir.join("concert").join("d");
        std::fs::create_dir_all(&unreadable).expect("dir");
        assert_eq!(
            remove_ended_before(&dir, now, Duration::from_secs(7 * 86_400)),
            1
        );
        assert!(!old.exists());
        assert!(recent.exists() && running.exists() && unreadable.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
