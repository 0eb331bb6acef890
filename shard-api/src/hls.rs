//! HLS packaging on a shard: what the control plane asks a shard to package
//! (`PUT /v1/hls/{broadcast}`), and the files of a broadcast's HLS directory, which the
//! packager writes and gateways serve.

use serde::{Deserialize, Serialize};

/// What a shard is asked to package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackagingSpec {
    /// The broadcast's stage room.
    pub room: String,
    /// The signaling URL (`ws://…/v1/signal`) of the shard holding it.
    pub from: String,
}

impl PackagingSpec {
    /// Checks the room's name and the URL's shape and length.
    pub fn validate(&self) -> Result<(), String> {
        crate::recording::validate_room_and_source(&self.room, &self.from)
    }
}

/// One broadcast a shard packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Packaging {
    /// The broadcast.
    pub broadcast: String,
    /// Its stage room.
    pub room: String,
    /// Where the stage is received from.
    pub from: String,
}

/// The playlist's name.
pub const PLAYLIST: &str = "index.m3u8";
/// The segments' names, as ffmpeg's `-hls_segment_filename` pattern.
pub const SEGMENT_PATTERN: &str = "seg-%06d.ts";

/// Whether `name` is one of the files a broadcast's HLS directory serves: the playlist
/// or a segment.
pub fn served_file(name: &str) -> bool {
    if name == PLAYLIST {
        return true;
    }
    name.strip_prefix("seg-")
        .and_then(|rest| rest.strip_suffix(".ts"))
        .is_some_and(|n| (1..=20).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_playlist_and_segments_are_served() {
        assert!(served_file("index.m3u8"));
        assert!(served_file("seg-000001.ts"));
        assert!(
            served_file("seg-1796378400123456.ts"),
            "numbered from the time in µs"
        );
        for bad in [
            "",
            "in.sdp",
            "seg-.ts",
            "seg-1.ts.tmp",
            "../index.m3u8",
            "seg-000000000000000000001.ts",
            "seg-1a.ts",
        ] {
            assert!(!served_file(bad), "{bad}");
        }
    }
}
