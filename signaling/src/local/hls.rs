//! Local mode's HLS: a packager (`tutti_sfu::hls`) for each broadcast declared with
//! `hls = true`, writing into a directory the gateway serves.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tutti_sfu::hls::{PackagerOptions, ffmpeg::Encoding};
use tutti_store::{BroadcastRecord, LiveView, MemoryStore};

/// Where packagers write: the one given, or a private temporary directory removed when
/// this is dropped.
pub struct Directory {
    path: PathBuf,
    temporary: bool,
}

impl Directory {
    /// `given`, made if missing; else a new private directory under the temporary one.
    pub fn new(given: Option<PathBuf>) -> std::io::Result<Self> {
        let (path, temporary) = match given {
            Some(path) => (path, false),
            None => (
                std::env::temp_dir().join(format!(
                    "tutti-hls-{}-{}",
                    std::process::id(),
                    tutti_service::token::random_token(8)
                )),
                true,
            ),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        Ok(Self { path, temporary })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Starts packaging `broadcast` into `dir/<name>`, from wherever its stage is.
pub fn package(
    broadcast: &BroadcastRecord,
    store: &MemoryStore,
    signal_token: &str,
    media_bind: IpAddr,
    dir: &Path,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (store, stage) = (store.clone(), broadcast.stage.clone());
    let locate: tutti_sfu::recorder::Locate = Arc::new(move || {
        let route = store.route(&stage)?;
        Some(store.shard(&route.shard)?.signal_url)
    });
    // The shards send to the packager's socket: an address they can reach.
    let bind = if media_bind.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        media_bind
    };
    tutti_sfu::hls::spawn(
        PackagerOptions {
            broadcast: broadcast.name.clone(),
            room: broadcast.stage.clone(),
            locate,
            signal_token: signal_token.to_owned(),
            dir: dir.join(&broadcast.name),
            bind,
            ffmpeg: PathBuf::from("ffmpeg"),
            encoding: Encoding::default(),
        },
        stop,
    )
}
