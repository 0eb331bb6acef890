//! What the packager asks of `ffmpeg`: an SDP that describes the plain RTP it forwards,
//! and a command that transcodes it to H.264 and AAC (what every HLS player decodes) in
//! one-second MPEG-TS segments with a rolling playlist.

use std::path::Path;

/// The payload type video is forwarded with (whatever the stage's was).
pub const VIDEO_PT: u8 = 96;
/// The payload type audio is forwarded with.
pub const AUDIO_PT: u8 = 111;

pub use tutti_shard_api::hls::PLAYLIST;

/// One stream ffmpeg receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The codec's MIME type (`video/VP8`, `audio/opus`).
    pub mime: String,
    /// Audio channels.
    pub channels: u16,
    /// The loopback port it arrives on (RTCP on the next).
    pub port: u16,
}

/// The video codecs ffmpeg's RTP input takes, by MIME type, with their SDP names.
pub fn rtp_name(mime: &str) -> Option<&'static str> {
    match mime.to_ascii_lowercase().as_str() {
        "video/vp8" => Some("VP8/90000"),
        "video/vp9" => Some("VP9/90000"),
        "video/h264" => Some("H264/90000"),
        "audio/opus" => Some("opus/48000/2"),
        _ => None,
    }
}

/// The SDP of what is forwarded to ffmpeg on loopback.
pub fn sdp(video: Option<&Input>, audio: Option<&Input>) -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tutti-hls\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",
    );
    if let Some((video, name)) = video.and_then(|v| rtp_name(&v.mime).map(|n| (v, n))) {
        sdp.push_str(&format!(
            "m=video {} RTP/AVP {VIDEO_PT}\r\na=rtpmap:{VIDEO_PT} {name}\r\n",
            video.port
        ));
        if name.starts_with("H264") {
            sdp.push_str(&format!("a=fmtp:{VIDEO_PT} packetization-mode=1\r\n"));
        }
    }
    if let Some((audio, name)) = audio.and_then(|a| rtp_name(&a.mime).map(|n| (a, n))) {
        sdp.push_str(&format!(
            "m=audio {} RTP/AVP {AUDIO_PT}\r\na=rtpmap:{AUDIO_PT} {name}\r\n",
            audio.port
        ));
        if audio.channels >= 2 {
            sdp.push_str(&format!("a=fmtp:{AUDIO_PT} stereo=1\r\n"));
        }
    }
    sdp
}

/// How the segments are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Seconds per segment (a key frame starts each).
    pub segment_seconds: u32,
    /// Segments the playlist lists.
    pub list_size: u32,
    /// The output frame, `(width, height)`: the stage's video is scaled into it (and
    /// padded), so that a presenter changing resolution does not change the stream's.
    pub size: (u32, u32),
    /// Video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Audio bitrate, kbit/s.
    pub audio_kbps: u32,
}

impl Default for Encoding {
    fn default() -> Self {
        Self {
            segment_seconds: 1,
            list_size: 6,
            size: (1280, 720),
            video_kbps: 2_500,
            audio_kbps: 128,
        }
    }
}

/// ffmpeg's arguments: read `sdp_file`, write the playlist and segments into `dir`.
/// The stream always has video and audio, so that players never see its shape change:
/// what the stage does not send (`video`, `audio` false) is black or silence.
/// `continuing` appends to a playlist an earlier run left, marked as a discontinuity.
pub fn args(
    sdp_file: &Path,
    dir: &Path,
    video: bool,
    audio: bool,
    encoding: &Encoding,
    continuing: bool,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-protocol_whitelist",
        "file,udp,rtp",
        // Start as soon as the streams are known, and hold nothing back.
        "-fflags",
        "+nobuffer+genpts",
        "-flags",
        "low_delay",
        "-analyzeduration",
        "1000000",
        "-probesize",
        "1000000",
        "-reorder_queue_size",
        "64",
        "-i",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(sdp_file.display().to_string());
    let (width, height) = encoding.size;
    let seconds = encoding.segment_seconds.max(1);
    // Stand-ins, read at their own pace (`-re`) like the live input.
    let mut next_input = 1;
    let mut stand_in = |args: &mut Vec<String>, source: String| {
        args.extend(["-re", "-f", "lavfi", "-i"].map(str::to_owned));
        args.push(source);
        next_input += 1;
        next_input - 1
    };
    let video_input = if video {
        0
    } else {
        stand_in(&mut args, format!("color=c=black:s={width}x{height}:r=30"))
    };
    let audio_input = if audio {
        0
    } else {
        stand_in(&mut args, "anullsrc=r=48000:cl=stereo".to_owned())
    };
    {
        args.extend([
            "-map".to_owned(),
            format!("{video_input}:v:0"),
            "-vf".to_owned(),
            format!(
                "scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2,\
                     pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,format=yuv420p"
            ),
            "-c:v".to_owned(),
            "libx264".to_owned(),
            "-preset".to_owned(),
            "superfast".to_owned(),
            "-tune".to_owned(),
            "zerolatency".to_owned(),
            "-profile:v".to_owned(),
            "main".to_owned(),
            "-b:v".to_owned(),
            format!("{}k", encoding.video_kbps),
            "-maxrate".to_owned(),
            format!("{}k", encoding.video_kbps),
            "-bufsize".to_owned(),
            format!("{}k", encoding.video_kbps),
            "-sc_threshold".to_owned(),
            "0".to_owned(),
            "-force_key_frames".to_owned(),
            format!("expr:gte(t,n_forced*{seconds})"),
        ]);
    }
    {
        args.extend([
            "-map".to_owned(),
            format!("{audio_input}:a:0"),
            "-c:a".to_owned(),
            "aac".to_owned(),
            "-b:a".to_owned(),
            format!("{}k", encoding.audio_kbps),
            "-ar".to_owned(),
            "48000".to_owned(),
            "-ac".to_owned(),
            "2".to_owned(),
        ]);
    }
    let mut flags =
        "delete_segments+independent_segments+omit_endlist+program_date_time+temp_file".to_owned();
    if continuing {
        flags.push_str("+append_list+discont_start");
    }
    args.extend([
        "-f".to_owned(),
        "hls".to_owned(),
        "-hls_time".to_owned(),
        seconds.to_string(),
        "-hls_list_size".to_owned(),
        encoding.list_size.to_string(),
        "-hls_delete_threshold".to_owned(),
        "3".to_owned(),
        "-hls_flags".to_owned(),
        flags,
        "-hls_segment_type".to_owned(),
        "mpegts".to_owned(),
        // Numbered from the time in microseconds: a new packager (after a move or a
        // restart) never reuses a name a cache may still hold, and never goes back.
        "-hls_start_number_source".to_owned(),
        "epoch_us".to_owned(),
        "-hls_segment_filename".to_owned(),
        dir.join(tutti_shard_api::hls::SEGMENT_PATTERN)
            .display()
            .to_string(),
        dir.join(PLAYLIST).display().to_string(),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_sdp_names_what_is_forwarded_and_nothing_else() {
        let video = Input {
            mime: "video/VP8".into(),
            channels: 0,
            port: 50_000,
        };
        let audio = Input {
            mime: "audio/opus".into(),
            channels: 2,
            port: 50_002,
        };
        let both = sdp(Some(&video), Some(&audio));
        assert!(both.contains("m=video 50000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"));
        assert!(both.contains("m=audio 50002 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"));
        assert!(both.contains("a=fmtp:111 stereo=1"));
        let av1 = Input {
            mime: "video/AV1".into(),
            ..video
        };
        assert!(
            !sdp(Some(&av1), None).contains("m=video"),
            "ffmpeg takes no AV1 over RTP"
        );
        assert!(!sdp(None, Some(&audio)).contains("m=video"));
    }

    #[test]
    fn segments_start_with_key_frames_and_a_restart_continues_the_playlist() {
        let dir = PathBuf::from("/hls/concert");
        let encoding = Encoding::default();
        let first = args(Path::new("/hls/in.sdp"), &dir, true, true, &encoding, false);
        let joined = first.join(" ");
        assert!(joined.contains("-force_key_frames expr:gte(t,n_forced*1)"));
        assert!(joined.contains("-hls_time 1"));
        assert!(joined.contains("-c:v libx264"));
        assert!(joined.contains("-c:a aac"));
        assert!(!joined.contains("append_list"));
        assert_eq!(
            first.last().map(String::as_str),
            Some("/hls/concert/index.m3u8")
        );
        let again = args(Path::new("/hls/in.sdp"), &dir, false, true, &encoding, true).join(" ");
        assert!(again.contains("append_list+discont_start"));
        // No camera: black video in its place, the stream's shape unchanged.
        assert!(again.contains("-re -f lavfi -i color=c=black:s=1280x720:r=30"));
        assert!(again.contains("-map 1:v:0") && again.contains("-map 0:a:0"));
        assert!(again.contains("-c:v libx264"));
        let silent = args(
            Path::new("/hls/in.sdp"),
            &dir,
            true,
            false,
            &encoding,
            false,
        )
        .join(" ");
        assert!(silent.contains("-i anullsrc=r=48000:cl=stereo"));
        assert!(silent.contains("-map 0:v:0") && silent.contains("-map 1:a:0"));
        assert!(joined.contains("-hls_start_number_source epoch_us"));
    }
}
