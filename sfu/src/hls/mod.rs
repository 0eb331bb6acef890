//! HLS for audiences beyond WebRTC: a broadcast's stage packaged by `ffmpeg`.
//!
//! The packager receives the stage the way the recorder does (`crate::recorder`): it
//! joins the stage's room at the shard holding it as a hidden relay session with a pipe,
//! asks for the top layer of the video, and gets SRTP on a socket of its own. It takes
//! one camera and one microphone (the first published; the next when one goes away),
//! decrypts their packets and forwards them as plain RTP on loopback to an `ffmpeg`
//! child, which transcodes them to H.264 and AAC in one-second segments with a rolling
//! playlist (`ffmpeg.rs`). A change of camera or microphone restarts ffmpeg, which
//! continues the playlist after a discontinuity; so does ffmpeg exiting.
//!
//! The gateway serves the directory (`/hls/{broadcast}/index.m3u8`).

pub mod api;
pub mod ffmpeg;
pub mod registry;

use crate::media::loss::{LossConfig, LossTracker};
use crate::pipe_end::{Pipe, send_rtcp};
use crate::recorder::Locate;
use futures_util::{SinkExt, StreamExt};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::protocol::{
    ClientMessage, PipeCodec, Quality, ServerMessage, TrackKind, decode_server, encode_client,
};

/// What a packager needs.
#[derive(Clone)]
pub struct PackagerOptions {
    /// The broadcast (in the session's participant id and the log).
    pub broadcast: String,
    /// Its stage's room.
    pub room: String,
    /// Where the room is.
    pub locate: Locate,
    /// The token shards accept on their signaling endpoint.
    pub signal_token: String,
    /// The directory the playlist and segments go to (made, private to this user).
    pub dir: PathBuf,
    /// The address the pipe's socket binds to: one the shards can send to.
    pub bind: IpAddr,
    /// The `ffmpeg` program.
    pub ffmpeg: PathBuf,
    /// How the segments are made.
    pub encoding: ffmpeg::Encoding,
}

/// Streams announced in one session at most (past it, none is considered).
const MAX_STREAMS: usize = 64;
/// How often NACKs, key frame requests and ffmpeg are looked at.
const TICK: Duration = Duration::from_millis(20);
/// Key frames are asked for this long after ffmpeg starts: it decodes nothing before one,
/// and the first request may reach the presenter before ffmpeg listens.
const KEYFRAME_REQUESTS_AFTER_START: [Duration; 4] = [
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// How long after an announcement the streams are chosen again.
const RECHOOSE_AFTER: Duration = Duration::from_millis(200);
/// Segments not in the playlist and older than this are a killed ffmpeg's leftovers.
const STALE_AFTER: Duration = Duration::from_secs(30);
/// How long ffmpeg may run without a playlist before that is reported.
const SILENT_AFTER: Duration = Duration::from_secs(15);
/// ffmpeg's last lines of errors kept for the log when it exits.
const STDERR_LINES: usize = 20;
/// The largest datagram read.
const MAX_DATAGRAM: usize = 1_500;

/// Runs the packager until `stop`: sessions one after another, wherever the stage is.
pub fn spawn(
    options: PackagerOptions,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&options.dir)?;
    Ok(tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        let mut locating = tokio::time::interval(Duration::from_millis(250));
        let mut ran_before = false;
        while !stop.is_cancelled() {
            let Some(url) = (options.locate)() else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = locating.tick() => continue,
                }
            };
            let mut session = Session::new(ran_before);
            let outcome = tokio::select! {
                _ = stop.cancelled() => Ok(false),
                outcome = session.run(&options, &url) => outcome,
            };
            ran_before |= session.started_ffmpeg;
            session.end().await;
            match outcome {
                Ok(true) => delay = Duration::from_millis(250),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(broadcast = %options.broadcast, %url, %err, retry_in = ?delay, "HLS packaging interrupted");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        tracing::info!(broadcast = %options.broadcast, "HLS packaging ended");
    }))
}

/// A stream the shard announced on the pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Its SSRC on the pipe.
    pub ssrc: u32,
    /// Its track.
    pub track: String,
    /// Video or audio.
    pub video: bool,
    /// Its codec.
    pub codec: PipeCodec,
}

/// The camera and microphone to package: the current ones while they last, else the
/// first announced of each kind in a codec ffmpeg takes.
pub fn choose(
    announced: &[Announced],
    current: (Option<u32>, Option<u32>),
) -> (Option<u32>, Option<u32>) {
    let pick = |video: bool, current: Option<u32>| {
        let usable = |a: &&Announced| a.video == video && ffmpeg::rtp_name(&a.codec.mime).is_some();
        current
            .filter(|ssrc| announced.iter().filter(usable).any(|a| a.ssrc == *ssrc))
            .or_else(|| announced.iter().find(usable).map(|a| a.ssrc))
    };
    (pick(true, current.0), pick(false, current.1))
}

/// A forwarded stream.
struct Forwarded {
    ssrc: u32,
    port: u16,
    payload_type: u8,
    loss: LossTracker,
}

/// ffmpeg running for one choice of streams.
struct Running {
    child: tokio::process::Child,
    started: Instant,
    keyframes_asked: usize,
    /// Whether its missing playlist was reported.
    silent_reported: bool,
    stderr: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
}

/// One connection to the stage's shard.
struct Session {
    announced: Vec<Announced>,
    video: Option<Forwarded>,
    audio: Option<Forwarded>,
    ffmpeg: Option<Running>,
    /// ffmpeg's exits in a row without a second of running.
    failures: u32,
    retry_at: Option<Instant>,
    /// The playlist already holds segments: a new ffmpeg continues it.
    continuing: bool,
    started_ffmpeg: bool,
    /// When the streams are chosen again: a moment after announcements, which come in
    /// bursts (a presenter's camera and microphone), so that one burst starts ffmpeg once.
    rechoose_at: Option<Instant>,
}

impl Session {
    fn new(continuing: bool) -> Self {
        Self {
            announced: Vec::new(),
            video: None,
            audio: None,
            ffmpeg: None,
            failures: 0,
            retry_at: None,
            continuing,
            started_ffmpeg: false,
            rechoose_at: None,
        }
    }

    async fn run(&mut self, options: &PackagerOptions, url: &str) -> Result<bool, String> {
        let forward = UdpSocket::bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0))
            .await
            .map_err(|e| format!("no loopback socket: {e}"))?;
        let crate::pipe_end::Joining {
            socket,
            mut sink,
            mut stream,
            mut pipe,
        } = crate::pipe_end::join_receiving(
            url,
            &options.signal_token,
            &options.room,
            ("hls", &options.broadcast),
            options.bind,
            false,
        )
        .await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut joined = false;
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            return Err("the shard closed the session".into());
                        }
                        Some(Ok(_)) => continue,
                    };
                    let Ok(message) = decode_server(&text) else { continue };
                    let mut outgoing = Vec::new();
                    match message {
                        ServerMessage::Joined { participants, .. } => {
                            joined = true;
                            for track in participants.iter().flat_map(|p| &p.tracks) {
                                if track.kind == TrackKind::Video {
                                    outgoing.push(top_layer(&track.id));
                                }
                            }
                        }
                        ServerMessage::TrackPublished { track, .. } if track.kind == TrackKind::Video => {
                            outgoing.push(top_layer(&track.id));
                        }
                        ServerMessage::Pipe { end } => pipe.answer(&end)?,
                        ServerMessage::PipeTrack { track, kind, codec, ssrc, .. } => {
                            if self.announced.len() < MAX_STREAMS
                                && !self.announced.iter().any(|a| a.ssrc == ssrc)
                            {
                                self.announced.push(Announced {
                                    ssrc,
                                    track,
                                    video: kind == TrackKind::Video,
                                    codec,
                                });
                            }
                            self.rechoose_at.get_or_insert(Instant::now() + RECHOOSE_AFTER);
                        }
                        ServerMessage::TrackUnpublished { track, .. } => {
                            self.announced.retain(|a| a.track != track);
                            self.rechoose_at.get_or_insert(Instant::now() + RECHOOSE_AFTER);
                        }
                        ServerMessage::Left { reconnect, .. } => {
                            return if reconnect { Ok(true) } else { Err("the shard ended the session".into()) };
                        }
                        ServerMessage::Error { code, message } if !joined => {
                            return Err(format!("the shard refused: {code:?}: {message}"));
                        }
                        _ => {}
                    }
                    for message in outgoing {
                        sink.send(Message::Text(encode_client(&message).into()))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                received = socket.recv_from(&mut buf) => {
                    let Ok((len, _)) = received else { continue };
                    self.on_datagram(&mut buf[..len], &mut pipe, &forward, Instant::now()).await;
                }
                _ = tick.tick() => self.on_tick(options, &mut pipe, &socket, Instant::now()).await,
            }
        }
    }

    /// Forwards a chosen stream's packet to ffmpeg, in the clear, with its payload type.
    async fn on_datagram(
        &mut self,
        datagram: &mut [u8],
        pipe: &mut Pipe,
        forward: &UdpSocket,
        now: Instant,
    ) {
        if datagram.len() < 12 || crate::wire::classify(datagram) != crate::wire::DatagramKind::Rtp
        {
            return;
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        // Every stream's packets are decrypted, forwarded or not: the receiver follows each
        // one's rollover, so that a stream chosen later (the next camera) still decrypts
        // after its sequence numbers wrapped.
        let Some(len) = pipe
            .receiver
            .as_mut()
            .and_then(|r| r.unprotect_rtp(datagram).ok())
        else {
            return;
        };
        let Some(stream) = [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| s.ssrc == ssrc)
        else {
            return;
        };
        let sequence = u16::from_be_bytes([datagram[2], datagram[3]]);
        stream.loss.on_packet(sequence, now);
        datagram[1] = (datagram[1] & 0x80) | stream.payload_type;
        let _ = forward
            .send_to(&datagram[..len], (Ipv4Addr::LOCALHOST, stream.port))
            .await;
    }

    async fn on_tick(
        &mut self,
        options: &PackagerOptions,
        pipe: &mut Pipe,
        socket: &UdpSocket,
        now: Instant,
    ) {
        let mut packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = Vec::new();
        let mut lost = Vec::new();
        for stream in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            lost.clear();
            stream.loss.due(now, &mut lost);
            if !lost.is_empty() {
                packets.push(Box::new(TransportLayerNack {
                    sender_ssrc: pipe.ssrc,
                    media_ssrc: stream.ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&lost),
                }));
            }
        }
        if let (Some(running), Some(video)) = (self.ffmpeg.as_mut(), self.video.as_ref())
            && let Some(due) = KEYFRAME_REQUESTS_AFTER_START.get(running.keyframes_asked)
            && now.saturating_duration_since(running.started) >= *due
        {
            running.keyframes_asked += 1;
            packets.push(Box::new(PictureLossIndication {
                sender_ssrc: pipe.ssrc,
                media_ssrc: video.ssrc,
            }));
        }
        if !packets.is_empty() {
            send_rtcp(pipe, socket, &packets).await;
        }
        if self.rechoose_at.is_some_and(|at| now >= at) {
            self.rechoose_at = None;
            self.rechoose(options).await;
        }
        // ffmpeg running but writing nothing (streams it cannot decode): said once.
        if let Some(running) = self.ffmpeg.as_mut()
            && !running.silent_reported
            && now.saturating_duration_since(running.started) > SILENT_AFTER
            && !options.dir.join(ffmpeg::PLAYLIST).exists()
        {
            running.silent_reported = true;
            let last: Vec<String> = running
                .stderr
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            tracing::warn!(broadcast = %options.broadcast, stderr = ?last, "ffmpeg has written no segment yet");
        }
        // ffmpeg gone: started again, a little later each time it will not run.
        if let Some(running) = self.ffmpeg.as_mut()
            && let Ok(Some(status)) = running.child.try_wait()
        {
            let last: Vec<String> = running
                .stderr
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            tracing::warn!(broadcast = %options.broadcast, %status, stderr = ?last, "ffmpeg exited");
            let lived = now.saturating_duration_since(running.started);
            self.failures = if lived > Duration::from_secs(10) {
                0
            } else {
                self.failures + 1
            };
            self.ffmpeg = None;
            let backoff = Duration::from_millis(500) * 2u32.saturating_pow(self.failures.min(5));
            self.retry_at = Some(now + backoff.min(Duration::from_secs(15)));
        }
        if self.ffmpeg.is_none()
            && (self.video.is_some() || self.audio.is_some())
            && self.retry_at.is_some_and(|at| now >= at)
        {
            self.retry_at = None;
            self.start_ffmpeg(options).await;
        }
    }

    /// Chooses the streams again; a new choice restarts ffmpeg.
    async fn rechoose(&mut self, options: &PackagerOptions) {
        let current = (
            self.video.as_ref().map(|s| s.ssrc),
            self.audio.as_ref().map(|s| s.ssrc),
        );
        let chosen = choose(&self.announced, current);
        if chosen == current {
            return;
        }
        self.stop_ffmpeg().await;
        let forwarded = |ssrc: Option<u32>, payload_type: u8| {
            ssrc.map(|ssrc| Forwarded {
                ssrc,
                port: 0,
                payload_type,
                loss: LossTracker::new(LossConfig::default()),
            })
        };
        self.video = forwarded(chosen.0, ffmpeg::VIDEO_PT);
        self.audio = forwarded(chosen.1, ffmpeg::AUDIO_PT);
        self.failures = 0;
        if chosen != (None, None) {
            self.start_ffmpeg(options).await;
        }
    }

    async fn start_ffmpeg(&mut self, options: &PackagerOptions) {
        let input = |stream: &mut Option<Forwarded>| {
            let stream = stream.as_mut()?;
            let announced = self.announced.iter().find(|a| a.ssrc == stream.ssrc)?;
            stream.port = free_port_pair()?;
            Some(ffmpeg::Input {
                mime: announced.codec.mime.clone(),
                channels: announced.codec.channels,
                port: stream.port,
            })
        };
        let video = input(&mut self.video);
        let audio = input(&mut self.audio);
        sweep_stale(&options.dir, STALE_AFTER);
        let sdp_file = options.dir.join(".input.sdp");
        if let Err(err) = std::fs::write(&sdp_file, ffmpeg::sdp(video.as_ref(), audio.as_ref())) {
            tracing::warn!(%err, "the HLS packager's SDP was not written");
            return;
        }
        let args = ffmpeg::args(
            &sdp_file,
            &options.dir,
            video.is_some(),
            audio.is_some(),
            &options.encoding,
            self.continuing,
        );
        let spawned = tokio::process::Command::new(&options.ffmpeg)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                tracing::warn!(broadcast = %options.broadcast, %err, "ffmpeg could not be started");
                self.failures += 1;
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                return;
            }
        };
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        if let Some(out) = child.stderr.take() {
            let lines = stderr.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(mut lines) = lines.lock() {
                        if lines.len() >= STDERR_LINES {
                            lines.pop_front();
                        }
                        lines.push_back(line.chars().take(300).collect());
                    }
                }
            });
        }
        tracing::info!(broadcast = %options.broadcast, video = ?video.map(|v| v.mime), audio = ?audio.map(|a| a.mime), "packaging HLS");
        self.ffmpeg = Some(Running {
            child,
            started: Instant::now(),
            keyframes_asked: 0,
            silent_reported: false,
            stderr,
        });
        self.continuing = true;
        self.started_ffmpeg = true;
    }

    async fn stop_ffmpeg(&mut self) {
        if let Some(mut running) = self.ffmpeg.take() {
            // Its segments are written under temporary names and renamed whole, so one
            // cut short is never listed.
            let _ = running.child.kill().await;
        }
    }

    async fn end(&mut self) {
        self.stop_ffmpeg().await;
    }
}

fn top_layer(track: &str) -> ClientMessage {
    ClientMessage::SetQuality {
        track: track.to_owned(),
        quality: Quality::High,
    }
}

/// Removes what a killed ffmpeg left in `dir`: segments being written (`.tmp`) and
/// segments its playlist no longer lists, once older than `after` (a player may still be
/// fetching one that just left the list).
fn sweep_stale(dir: &std::path::Path, after: Duration) {
    let listed = std::fs::read_to_string(dir.join(ffmpeg::PLAYLIST)).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let segment = name.starts_with("seg-") && (name.ends_with(".ts") || name.ends_with(".tmp"));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > after);
        if segment && old && (name.ends_with(".tmp") || !listed.contains(&name)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An even loopback UDP port whose successor is free too (ffmpeg takes RTCP there).
fn free_port_pair() -> Option<u16> {
    for _ in 0..32 {
        let probe = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let port = probe.local_addr().ok()?.port() & !1;
        drop(probe);
        let first = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        let second = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port.wrapping_add(1)));
        if port > 1024 && first.is_ok() && second.is_ok() {
            return Some(port);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(ssrc: u32, video: bool, mime: &str) -> Announced {
        Announced {
            ssrc,
            track: format!("t{ssrc}"),
            video,
            codec: PipeCodec {
                mime: mime.into(),
                clock_rate: if video { 90_000 } else { 48_000 },
                channels: if video { 0 } else { 2 },
                payload_type: 100,
                fmtp: String::new(),
            },
        }
    }

    #[test]
    fn a_killed_ffmpegs_leftovers_are_swept_and_listed_segments_kept() {
        let dir = std::env::temp_dir().join(format!("tutti-hls-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["seg-1.ts", "seg-2.ts", "seg-3.ts.tmp", "index.m3u8"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        std::fs::write(dir.join("index.m3u8"), "#EXTM3U\n#EXTINF:1.0,\nseg-2.ts\n").unwrap();
        sweep_stale(&dir, Duration::ZERO);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["index.m3u8", "seg-2.ts"]);
        // Fresh ones are left for a while: a player may be fetching them.
        std::fs::write(dir.join("seg-4.ts"), b"x").unwrap();
        sweep_stale(&dir, Duration::from_secs(30));
        assert!(dir.join("seg-4.ts").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_first_camera_and_microphone_are_packaged_until_they_go() {
        let mut stage = vec![
            announced(1, false, "audio/opus"),
            announced(2, true, "video/AV1"),
            announced(3, true, "video/VP8"),
            announced(4, true, "video/VP8"),
        ];
        assert_eq!(
            choose(&stage, (None, None)),
            (Some(3), Some(1)),
            "AV1 is not for ffmpeg"
        );
        assert_eq!(
            choose(&stage, (Some(4), Some(1))),
            (Some(4), Some(1)),
            "kept while it lasts"
        );
        stage.retain(|a| a.ssrc != 4);
        assert_eq!(choose(&stage, (Some(4), Some(1))), (Some(3), Some(1)));
        stage.retain(|a| a.ssrc != 1);
        assert_eq!(choose(&stage, (Some(3), Some(1))), (Some(3), None));
        assert_eq!(choose(&[], (Some(3), None)), (None, None));
    }
}
