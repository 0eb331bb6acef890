//! Deleting recordings past `--record-retention-days`: every hour, the recordings under the
//! directory whose manifest says they ended long enough ago.

use super::manifest;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How often old recordings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

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
    use crate::recorder::manifest::Manifest;

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
