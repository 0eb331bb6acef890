//! A recording's manifest: what was recorded, in which files, from when, and the gaps
//! between takes. Rewritten whole (to a temporary file, then renamed over the old one)
//! every second while the recording runs, so that a crash leaves a manifest at most a
//! second old beside files at most a second short.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The manifest of one recording.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The recording's name.
    pub recording: String,
    /// The room recorded.
    pub room: String,
    /// When the recording started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When this manifest was written.
    pub updated_at_ms: u64,
    /// When the recording ended; absent while it runs (or if it never ended cleanly).
    pub ended_at_ms: Option<u64>,
    /// Each connection to the room's shard; a gap between two takes is time not recorded.
    pub takes: Vec<Take>,
    /// Every track file.
    pub tracks: Vec<TrackEntry>,
    /// The composed file, once composing was tried (`compose.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composed: Option<Composed>,
}

/// What composing the tracks into one file gave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Composed {
    /// The composed file's name, when it succeeded.
    pub file: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One connection of the recorder to the shard holding the room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Take {
    /// The shard's signaling URL.
    pub shard: String,
    /// When it started receiving.
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// Why it ended, if not because the recording stopped.
    pub ended_because: Option<String>,
}

/// One track's file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrackEntry {
    /// The file's name, in the recording's directory.
    pub file: String,
    /// The take (index into `takes`) it belongs to.
    pub take: usize,
    /// The participant's id.
    pub participant: String,
    /// Their display name.
    pub name: String,
    /// The track's id.
    pub track: String,
    /// `audio` or `video`.
    pub kind: String,
    /// The codec's MIME type.
    pub codec: String,
    /// When the file's first packet arrived: the instant its time zero stands for, for
    /// aligning the tracks.
    pub starts_at_ms: Option<u64>,
    /// From the first packet's timestamp to the end of the last.
    pub duration_ms: u64,
    /// Packets received, and given up as lost.
    pub packets: u64,
    /// Packets given up as lost.
    pub lost: u64,
    /// Audio packets or video frames written.
    pub written: u64,
    /// The file's size.
    pub bytes: u64,
    /// The track ended (or the take did): the file is complete.
    pub complete: bool,
}

/// Milliseconds since the Unix epoch of a wall-clock time.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Converts the monotonic clock into wall-clock milliseconds from a pair read together.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    wall_ms: u64,
}

impl WallClock {
    /// The pair read now.
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall_ms: unix_ms(SystemTime::now()),
        }
    }

    /// The wall-clock milliseconds of `at`.
    pub fn ms(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.wall_ms + after.as_millis() as u64,
            None => self
                .wall_ms
                .saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }
}

/// A UTC timestamp for a directory name, `20261204T065012Z`, from seconds since the
/// epoch (the civil calendar from days, after Howard Hinnant's algorithm).
pub fn utc_stamp(unix_seconds: u64) -> String {
    let seconds = i64::try_from(unix_seconds).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(seconds)
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// The manifest's name in a recording's directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Reads the manifest of the recording in `dir`.
pub fn read(dir: &Path) -> std::io::Result<Manifest> {
    let text = std::fs::read(dir.join(MANIFEST_FILE))?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// Writes the manifest beside the files, readable by the owner only.
pub fn write(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    write_atomically(dir, MANIFEST_FILE, &text)
}

/// Replaces `dir/name` with `text` at once (a reader sees the old or the new whole),
/// readable by the owner only.
pub fn write_atomically(dir: &Path, name: &str, text: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text)?;
    file.sync_data()?;
    std::fs::rename(&temporary, dir.join(name))
}

/// A duration in milliseconds from ticks of a clock.
pub fn ticks_ms(ticks: u64, clock_rate: u32) -> u64 {
    Duration::from_micros(ticks.saturating_mul(1_000_000) / u64::from(clock_rate.max(1)))
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // 2026-12-04 06:50:12 UTC.
        assert_eq!(utc_stamp(1_796_367_012), "20261204T065012Z");
        // A leap day.
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn wall_clock_maps_instants_both_ways() {
        let clock = WallClock::now();
        let later = clock.instant + Duration::from_millis(1_500);
        assert_eq!(clock.ms(later), clock.wall_ms + 1_500);
        if let Some(earlier) = clock.instant.checked_sub(Duration::from_millis(200)) {
            assert_eq!(clock.ms(earlier), clock.wall_ms - 200);
        }
        assert_eq!(ticks_ms(96_000, 48_000), 2_000);
        assert_eq!(ticks_ms(45_000, 90_000), 500);
    }
}
