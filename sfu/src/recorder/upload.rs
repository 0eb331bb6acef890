//! A recording written to object storage as it goes, so that losing the shard (and its
//! disk) loses at most one upload interval.
//!
//! S3 cannot append, and an unfinished multipart upload is invisible and needs parts of
//! at least 5 MiB, so while a recording runs each file's new bytes go up every interval
//! as an object of their own, `<key>/chunks/<file>/<index>`: the file is its chunks
//! concatenated in order (`cat chunks/<file>/* > <file>`). A video file's header is
//! rewritten as the file grows, so it is chunk 0 on its own, stored again each round
//! the file grew. `manifest.json` and this
//! progress, `upload.json`, follow each round. When the recording ends (and is
//! composed, if asked), each file goes up whole as `<key>/<file>`, its chunks are
//! deleted, and the local files too unless they are to be kept.
//!
//! The local record dir is the staging area: the recorder writes there as it always does,
//! and this only reads.

use super::manifest::{self, Manifest};
use super::store::{ObjectStore, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;
use tutti_shard_api::recording::StoredRecording;

/// The progress file beside the manifest (and its copy in the bucket).
pub const PROGRESS_FILE: &str = "upload.json";
/// The most one chunk holds: a file that grew more in one interval goes up in several.
const MAX_CHUNK: u64 = 32 * 1024 * 1024;
/// Attempts to store a stopped recording whole before the chunks are left as its copy.
const FINISH_ATTEMPTS: u32 = 5;

/// How far a recording's files are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadProgress {
    /// `s3://bucket/<key>/`.
    pub location: String,
    /// Each file by name.
    pub files: BTreeMap<String, FileProgress>,
    /// Every file is stored whole.
    pub complete: bool,
    /// The last failure, until a round succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How far one file is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileProgress {
    /// Its first bytes stored, as chunks or whole.
    pub bytes: u64,
    /// Chunks `0..chunks` stored (and not yet deleted).
    pub chunks: u32,
    /// Stored whole as `<key>/<file>`.
    pub whole: bool,
}

impl UploadProgress {
    /// The status shown for it.
    pub fn status(&self) -> StoredRecording {
        StoredRecording {
            location: self.location.clone(),
            bytes: self.files.values().map(|f| f.bytes).sum(),
            complete: self.complete,
            error: self.error.clone(),
        }
    }
}

/// The progress stored beside a recording's manifest, if it is stored anywhere.
pub fn read_progress(dir: &Path) -> Option<UploadProgress> {
    let text = std::fs::read(dir.join(PROGRESS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The key of a file's `index`th chunk under the recording's `key`.
pub fn chunk_key(key: &str, file: &str, index: u32) -> String {
    format!("{key}/chunks/{file}/{index:06}")
}

/// Stores one recording.
pub struct Uploader {
    store: Arc<ObjectStore>,
    dir: PathBuf,
    /// The recording's key: the prefix and its path under the recordings directory.
    key: String,
    progress: UploadProgress,
}

impl Uploader {
    /// An uploader of the recording in `dir`, whose path under the recordings directory is
    /// `relative`.
    pub fn new(store: Arc<ObjectStore>, dir: PathBuf, relative: &Path) -> Self {
        let key = store.key(&relative.to_string_lossy());
        let progress = UploadProgress {
            location: format!("{}/", store.url(&key)),
            ..UploadProgress::default()
        };
        Self {
            store,
            dir,
            key,
            progress,
        }
    }

    /// The recording's files as its manifest lists them (its composed file included),
    /// each with the length of its head that is rewritten as it grows.
    fn files(manifest: &Manifest) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = manifest
            .tracks
            .iter()
            .map(|t| {
                let head = if t.kind == "video" {
                    super::track::IVF_HEADER
                } else {
                    0
                };
                (t.file.clone(), head)
            })
            .collect();
        if let Some(file) = manifest.composed.as_ref().and_then(|c| c.file.clone()) {
            files.push((file, 0));
        }
        files
    }

    /// One round while the recording runs: every file's new bytes as chunks, then the
    /// manifest and the progress.
    pub async fn sync(&mut self) {
        let result = self.sync_chunks().await;
        self.settle(result).await;
    }

    async fn sync_chunks(&mut self) -> Result<(), StoreError> {
        let manifest = manifest::read(&self.dir)?;
        for (file, head) in Self::files(&manifest) {
            let path = self.dir.join(&file);
            let Ok(meta) = tokio::fs::metadata(&path).await else {
                continue;
            };
            // A video file shorter than its header has nothing to store yet, and storing
            // it would make chunk 0 more than the header.
            if meta.len() < head {
                continue;
            }
            let entry = self.progress.files.entry(file.clone()).or_default();
            let fresh = entry.chunks == 0 && meta.len() >= head;
            let grew = entry.chunks > 0 && meta.len() > entry.bytes;
            if head > 0 && !entry.whole && (fresh || grew) {
                // The head again, as it is now (chunk 0 is only ever the head).
                let body = read_range(&path, 0, head).await?;
                self.store
                    .put(&chunk_key(&self.key, &file, 0), body)
                    .await?;
                let entry = self.progress.files.entry(file.clone()).or_default();
                if entry.chunks == 0 {
                    entry.bytes = head;
                    entry.chunks = 1;
                }
            }
            loop {
                let entry = self.progress.files.entry(file.clone()).or_default();
                if entry.whole || meta.len() <= entry.bytes {
                    break;
                }
                let length = (meta.len() - entry.bytes).min(MAX_CHUNK);
                let body = read_range(&path, entry.bytes, length).await?;
                let key = chunk_key(&self.key, &file, entry.chunks);
                self.store.put(&key, body).await?;
                let entry = self.progress.files.entry(file.clone()).or_default();
                entry.bytes += length;
                entry.chunks += 1;
            }
        }
        self.put_local(manifest::MANIFEST_FILE).await
    }

    async fn put_local(&self, file: &str) -> Result<(), StoreError> {
        let body = tokio::fs::read(self.dir.join(file)).await?;
        self.store
            .put(&format!("{}/{file}", self.key), Bytes::from(body))
            .await
    }

    /// Writes the progress beside the manifest and into the bucket, with the outcome of
    /// the round.
    async fn settle(&mut self, result: Result<(), StoreError>) {
        self.progress.error = result.err().map(|e| e.to_string());
        if let Some(error) = &self.progress.error {
            tracing::warn!(dir = %self.dir.display(), %error, "recording not stored");
        }
        let Ok(text) = serde_json::to_vec_pretty(&self.progress) else {
            return;
        };
        if let Err(err) = manifest::write_atomically(&self.dir, PROGRESS_FILE, &text) {
            tracing::warn!(dir = %self.dir.display(), %err, "upload progress not written");
        }
        if let Err(err) = self
            .store
            .put(&format!("{}/{PROGRESS_FILE}", self.key), Bytes::from(text))
            .await
        {
            tracing::debug!(%err, "upload progress not stored");
        }
    }

    /// Once the recording ended: every file whole, its chunks deleted, the manifest; the
    /// local files deleted unless `keep_local` (or `keep`: the recorder may still be
    /// writing them). Tried a few times; the chunks stay the recording's copy if it never
    /// succeeds, with the files' last bytes among them.
    pub async fn finish(&mut self, keep: bool) {
        if let Err(err) = self.sync_chunks().await {
            tracing::warn!(dir = %self.dir.display(), %err, "a recording's last bytes not stored as chunks");
        }
        for attempt in 0..FINISH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
            }
            let result = self.store_whole().await;
            let stored = result.is_ok();
            self.progress.complete = stored;
            self.settle(result).await;
            if stored {
                break;
            }
        }
        if self.progress.complete && !keep && !self.store.config().keep_local {
            for (file, progress) in &self.progress.files {
                if progress.whole {
                    let _ = tokio::fs::remove_file(self.dir.join(file)).await;
                }
            }
        }
    }

    async fn store_whole(&mut self) -> Result<(), StoreError> {
        let manifest = manifest::read(&self.dir)?;
        let mut leftovers = None;
        for (file, _) in Self::files(&manifest) {
            let key = format!("{}/{file}", self.key);
            let path = self.dir.join(&file);
            let whole = self.progress.files.get(&file).is_some_and(|f| f.whole);
            if !whole && tokio::fs::try_exists(&path).await.unwrap_or(false) {
                let size = self.store.put_file(&key, &path).await?;
                // Trusted only once the bucket says it holds that many bytes: the local
                // copy and the chunks are deleted after this.
                let stored = self.store.size(&key).await?;
                if stored != Some(size) {
                    return Err(StoreError::Transport(format!(
                        "{file}: {size} bytes written, the bucket holds {stored:?}"
                    )));
                }
                let entry = self.progress.files.entry(file.clone()).or_default();
                entry.bytes = size;
                entry.whole = true;
            }
            let Some(entry) = self.progress.files.get_mut(&file) else {
                continue;
            };
            if entry.whole && entry.chunks > 0 {
                let keys: Vec<String> = (0..entry.chunks)
                    .map(|index| chunk_key(&self.key, &file, index))
                    .collect();
                match self.store.delete(&keys).await {
                    Ok(()) => entry.chunks = 0,
                    // The whole file is stored; chunks left over cost space, not data,
                    // and are tried again.
                    Err(err) => leftovers = Some(err),
                }
            }
        }
        self.put_local(manifest::MANIFEST_FILE).await?;
        leftovers.map_or(Ok(()), Err)
    }
}

async fn read_range(path: &Path, start: u64, length: u64) -> Result<Bytes, StoreError> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut body = Vec::with_capacity(length as usize);
    file.take(length).read_to_end(&mut body).await?;
    Ok(Bytes::from(body))
}

/// Runs `uploader` a round every interval until `ended`; returns it for its last round
/// (whole, or chunks only when the process is going away).
pub fn spawn(
    mut uploader: Uploader,
    ended: CancellationToken,
) -> tokio::task::JoinHandle<Uploader> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(uploader.store.config().upload_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = ended.cancelled() => return uploader,
                _ = every.tick() => uploader.sync().await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_sort_in_the_order_they_join() {
        let keys: Vec<String> = [0, 1, 9, 10, 100, 999_999]
            .iter()
            .map(|&i| chunk_key("rec/lesson/20261204T090000Z", "a.ogg", i))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys[0], "rec/lesson/20261204T090000Z/chunks/a.ogg/000000");
    }

    #[test]
    fn progress_shows_the_bytes_stored() {
        let mut progress = UploadProgress {
            location: "s3://b/k/".into(),
            ..UploadProgress::default()
        };
        progress.files.insert(
            "a.ogg".into(),
            FileProgress {
                bytes: 10,
                chunks: 2,
                whole: false,
            },
        );
        progress.files.insert(
            "b.ivf".into(),
            FileProgress {
                bytes: 5,
                chunks: 0,
                whole: true,
            },
        );
        let status = progress.status();
        assert_eq!(status.bytes, 15);
        assert!(!status.complete);
    }
}
