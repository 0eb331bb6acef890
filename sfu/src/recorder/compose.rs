//! One file of the whole session from its tracks: every camera tiled on one picture and
//! every microphone mixed, each placed at the time it started (from the manifest), by
//! `ffmpeg` (Debian's package) after the recording ended. The tracks stay as they were;
//! the composed file is an H.264 and AAC MP4, which every player and site takes.

use super::manifest::{Manifest, TrackEntry};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// The composed file's name in the recording's directory.
pub const COMPOSED: &str = "composed.mp4";
/// Tiles on the composed picture at most (a 4 × 4 grid).
const MAX_TILES: usize = 16;
/// Microphones mixed at most.
const MAX_VOICES: usize = 32;
/// One tile's size.
const TILE: (u32, u32) = (640, 360);
/// The longest composing may take before it is given up (a 2-core machine composes a
/// lesson at several times real time; this bounds a stuck process).
const MAX_RUN: Duration = Duration::from_secs(3 * 3600);

/// The columns of the grid that holds `tiles` tiles.
fn columns(tiles: usize) -> usize {
    match tiles {
        0 | 1 => 1,
        2 | 4 => 2,
        3 | 5 | 6 | 9 => 3,
        _ => 4,
    }
}

/// The `ffmpeg` arguments that compose the recording `manifest` describes, run in its
/// directory; `None` when it holds no track that started.
pub fn command(manifest: &Manifest) -> Option<Vec<String>> {
    let started: Vec<&TrackEntry> = manifest
        .tracks
        .iter()
        .filter(|t| t.starts_at_ms.is_some() && t.written > 0)
        .collect();
    let origin = started.iter().filter_map(|t| t.starts_at_ms).min()?;
    let videos: Vec<&TrackEntry> = started
        .iter()
        .copied()
        .filter(|t| t.kind == "video")
        .take(MAX_TILES)
        .collect();
    let voices: Vec<&TrackEntry> = started
        .iter()
        .copied()
        .filter(|t| t.kind == "audio")
        .take(MAX_VOICES)
        .collect();
    let mut args: Vec<String> = ["-nostdin", "-y", "-v", "error"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for track in videos.iter().chain(&voices) {
        args.push("-i".into());
        args.push(track.file.clone());
    }
    let offset = |t: &TrackEntry| t.starts_at_ms.unwrap_or(origin).saturating_sub(origin);
    let mut graph = Vec::new();
    let (w, h) = TILE;
    for (i, track) in videos.iter().enumerate() {
        graph.push(format!(
            "[{i}:v]scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=25,tpad=start_duration={:.3}:color=black[v{i}]",
            offset(track) as f64 / 1000.0
        ));
    }
    match videos.len() {
        0 => {}
        1 => graph.push("[v0]null[v]".into()),
        n => {
            let cols = columns(n);
            let layout: Vec<String> = (0..n)
                .map(|i| format!("{}_{}", (i % cols) as u32 * w, (i / cols) as u32 * h))
                .collect();
            let inputs: String = (0..n).map(|i| format!("[v{i}]")).collect();
            graph.push(format!(
                "{inputs}xstack=inputs={n}:layout={}:fill=black[v]",
                layout.join("|")
            ));
        }
    }
    for (i, track) in voices.iter().enumerate() {
        graph.push(format!(
            "[{}:a]adelay={}:all=1[a{i}]",
            videos.len() + i,
            offset(track)
        ));
    }
    if !voices.is_empty() {
        let inputs: String = (0..voices.len()).map(|i| format!("[a{i}]")).collect();
        graph.push(format!(
            "{inputs}amix=inputs={}:normalize=0:duration=longest[a]",
            voices.len()
        ));
    }
    args.push("-filter_complex".into());
    args.push(graph.join(";"));
    if !videos.is_empty() {
        args.extend(
            [
                "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt",
                "yuv420p",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    if !voices.is_empty() {
        args.extend(
            ["-map", "[a]", "-c:a", "aac", "-b:a", "128k"]
                .iter()
                .map(|s| s.to_string()),
        );
    }
    args.extend(
        ["-movflags", "+faststart", COMPOSED]
            .iter()
            .map(|s| s.to_string()),
    );
    Some(args)
}

/// Composes the recording in `dir`; the composed file's name, or why it failed.
pub async fn compose(dir: &Path, manifest: &Manifest) -> Result<String, String> {
    let args = command(manifest).ok_or("nothing was recorded")?;
    let run = tokio::process::Command::new("ffmpeg")
        .args(&args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(MAX_RUN, run)
        .await
        .map_err(|_| "ffmpeg took too long".to_owned())?
        .map_err(|e| format!("ffmpeg could not be run: {e}"))?;
    if !output.status.success() {
        // Nothing half-written stays behind.
        let _ = std::fs::remove_file(dir.join(COMPOSED));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: String = stderr
            .lines()
            .last()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Err(format!("ffmpeg failed ({}): {last}", output.status));
    }
    let file = dir.join(COMPOSED);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(COMPOSED.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(file: &str, kind: &str, starts_at_ms: Option<u64>) -> TrackEntry {
        TrackEntry {
            file: file.into(),
            take: 0,
            participant: "p".into(),
            name: "P".into(),
            track: "t".into(),
            kind: kind.into(),
            codec: String::new(),
            starts_at_ms,
            duration_ms: 1_000,
            packets: 10,
            lost: 0,
            written: 10,
            bytes: 100,
            complete: true,
        }
    }

    fn manifest(tracks: Vec<TrackEntry>) -> Manifest {
        Manifest {
            recording: "r".into(),
            room: "r".into(),
            started_at_ms: 0,
            updated_at_ms: 0,
            ended_at_ms: None,
            takes: Vec::new(),
            tracks,
            composed: None,
        }
    }

    #[test]
    fn tracks_are_tiled_and_mixed_at_the_times_they_started() {
        let args = command(&manifest(vec![
            track("a1.ogg", "audio", Some(10_000)),
            track("v1.ivf", "video", Some(10_040)),
            track("a2.ogg", "audio", Some(11_500)),
            track("v2.ivf", "video", Some(11_520)),
            track("never.ivf", "video", None),
        ]))
        .expect("a command");
        let inputs: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-i")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(inputs, vec!["v1.ivf", "v2.ivf", "a1.ogg", "a2.ogg"]);
        let graph = &args[args.iter().position(|a| a == "-filter_complex").unwrap() + 1];
        assert!(graph.contains("[0:v]") && graph.contains("tpad=start_duration=0.040"));
        assert!(graph.contains("[1:v]") && graph.contains("tpad=start_duration=1.520"));
        assert!(graph.contains("xstack=inputs=2:layout=0_0|640_0:fill=black[v]"));
        assert!(graph.contains("[2:a]adelay=0:all=1[a0]"));
        assert!(graph.contains("[3:a]adelay=1500:all=1[a1]"));
        assert!(graph.contains("amix=inputs=2"));
        assert_eq!(args.last().map(String::as_str), Some(COMPOSED));
    }

    #[test]
    fn grids_grow_with_the_tiles_and_audio_alone_needs_no_picture() {
        assert_eq!(columns(1), 1);
        assert_eq!(columns(4), 2);
        assert_eq!(columns(5), 3);
        assert_eq!(columns(16), 4);
        let five: Vec<TrackEntry> = (0..5)
            .map(|i| track(&format!("v{i}.ivf"), "video", Some(0)))
            .collect();
        let args = command(&manifest(five)).expect("a command");
        let graph = &args[args.iter().position(|a| a == "-filter_complex").unwrap() + 1];
        assert!(graph.contains("layout=0_0|640_0|1280_0|0_360|640_360"));
        assert!(!args.iter().any(|a| a == "[a]"));
        let audio_only = command(&manifest(vec![track("a.ogg", "audio", Some(5))])).unwrap();
        assert!(!audio_only.iter().any(|a| a == "[v]" || a == "libx264"));
        assert!(command(&manifest(vec![track("x.ivf", "video", None)])).is_none());
    }
}
