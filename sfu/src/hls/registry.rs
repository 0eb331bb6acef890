//! The broadcasts a shard packages as HLS, by name, as the control plane asks
//! (`/v1/hls/{broadcast}` on the admin API), each a packager ([`super::spawn`]) writing
//! into `<hls dir>/<broadcast>/`.

use super::{PackagerOptions, ffmpeg::Encoding};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tutti_shard_api::hls::{Packaging, PackagingSpec, served_file};

/// Broadcasts one shard packages at once at most (each is an ffmpeg transcoding).
pub const MAX_PACKAGERS: usize = 4;

/// Why packaging could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackagingError {
    /// The name or the spec is invalid.
    #[error("invalid packaging: {0}")]
    Invalid(String),
    /// A packager of that name packages another room.
    #[error("a packager of that name packages another room")]
    Conflict,
    /// No packager of that name.
    #[error("no such packager")]
    NotFound,
    /// As many packagers as allowed run already.
    #[error("at most {0} packagers at once")]
    TooMany(usize),
    /// Its directory could not be made.
    #[error("HLS storage: {0}")]
    Storage(String),
}

struct Running {
    room: String,
    from: Arc<Mutex<String>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The packagers of one shard.
pub struct Packagers {
    dir: PathBuf,
    signal_token: String,
    bind: IpAddr,
    ffmpeg: PathBuf,
    stop: CancellationToken,
    running: Mutex<HashMap<String, Running>>,
}

impl Packagers {
    /// Packagers writing under `dir`, joining with `signal_token`, receiving on `bind`,
    /// running `ffmpeg`, stopped with `stop`.
    pub fn new(
        dir: PathBuf,
        signal_token: String,
        bind: IpAddr,
        ffmpeg: PathBuf,
        stop: CancellationToken,
    ) -> Self {
        Self {
            dir,
            signal_token,
            bind,
            ffmpeg,
            stop,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn valid_name(name: &str) -> Result<(), PackagingError> {
        if tutti_shard_api::protocol::valid_id(name) && !name.starts_with('.') {
            Ok(())
        } else {
            Err(PackagingError::Invalid(
                "names are 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot".into(),
            ))
        }
    }

    /// Packages `broadcast` as `spec` says, or points its packager at the stage's shard
    /// the spec names. True when it started.
    pub fn put(
        &self,
        broadcast: &str,
        spec: &PackagingSpec,
    ) -> Result<(bool, Packaging), PackagingError> {
        Self::valid_name(broadcast)?;
        spec.validate().map_err(PackagingError::Invalid)?;
        let mut running = self
            .running
            .lock()
            .map_err(|_| PackagingError::Storage("poisoned".into()))?;
        running.retain(|_, r| !r.task.is_finished());
        let packaging = Packaging {
            broadcast: broadcast.to_owned(),
            room: spec.room.clone(),
            from: spec.from.clone(),
        };
        if let Some(current) = running.get(broadcast) {
            if current.room != spec.room {
                return Err(PackagingError::Conflict);
            }
            if let Ok(mut from) = current.from.lock() {
                from.clone_from(&spec.from);
            }
            return Ok((false, packaging));
        }
        if running.len() >= MAX_PACKAGERS {
            return Err(PackagingError::TooMany(MAX_PACKAGERS));
        }
        let (from, locate) = crate::pipe_end::movable_source(&spec.from);
        let stop = self.stop.child_token();
        let dir = self.dir.join(broadcast);
        // What an earlier packager of this name left is not this one's playlist.
        let _ = std::fs::remove_dir_all(&dir);
        let task = super::spawn(
            PackagerOptions {
                broadcast: broadcast.to_owned(),
                room: spec.room.clone(),
                locate,
                signal_token: self.signal_token.clone(),
                dir,
                bind: self.bind,
                ffmpeg: self.ffmpeg.clone(),
                encoding: Encoding::default(),
            },
            stop.clone(),
        )
        .map_err(|e| PackagingError::Storage(e.to_string()))?;
        tracing::info!(%broadcast, room = %spec.room, "packaging HLS");
        running.insert(
            broadcast.to_owned(),
            Running {
                room: spec.room.clone(),
                from,
                stop,
                task,
            },
        );
        Ok((true, packaging))
    }

    /// Stops packaging `broadcast` and removes its files.
    pub async fn stop(&self, broadcast: &str) -> Result<(), PackagingError> {
        let running = self
            .running
            .lock()
            .map_err(|_| PackagingError::Storage("poisoned".into()))?
            .remove(broadcast)
            .ok_or(PackagingError::NotFound)?;
        running.stop.cancel();
        let _ = running.task.await;
        let _ = tokio::fs::remove_dir_all(self.dir.join(broadcast)).await;
        Ok(())
    }

    /// The broadcasts packaged.
    pub fn list(&self) -> Vec<Packaging> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut list: Vec<Packaging> = running
            .iter()
            .map(|(broadcast, r)| Packaging {
                broadcast: broadcast.clone(),
                room: r.room.clone(),
                from: r.from.lock().map(|f| f.clone()).unwrap_or_default(),
            })
            .collect();
        list.sort_by(|a, b| a.broadcast.cmp(&b.broadcast));
        list
    }

    /// The path of `file` of a broadcast packaged here, if it is one that is served.
    pub fn file(&self, broadcast: &str, file: &str) -> Option<PathBuf> {
        let packaged = self
            .running
            .lock()
            .ok()
            .is_some_and(|r| r.contains_key(broadcast));
        (packaged && served_file(file)).then(|| self.dir.join(broadcast).join(file))
    }

    /// Stops every packager.
    pub async fn stop_all(&self) {
        let running: Vec<Running> = match self.running.lock() {
            Ok(mut running) => running.drain().map(|(_, r)| r).collect(),
            Err(_) => return,
        };
        for packager in running {
            packager.stop.cancel();
            let _ = packager.task.await;
        }
    }
}
