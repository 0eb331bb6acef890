//! The files of a broadcast's HLS directory: what the packager writes and the gateway
//! serves.

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
        .is_some_and(|n| (1..=9).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_playlist_and_segments_are_served() {
        assert!(served_file("index.m3u8"));
        assert!(served_file("seg-000001.ts"));
        for bad in [
            "",
            "in.sdp",
            "seg-.ts",
            "seg-1.ts.tmp",
            "../index.m3u8",
            "seg-0000000001.ts",
            "seg-1a.ts",
        ] {
            assert!(!served_file(bad), "{bad}");
        }
    }
}
