//! The recorder: records a room's tracks into files, one per track, without transcoding.
//!
//! It receives media the way an edge shard does (`crate::relay`): it joins the room at the
//! shard holding it as a hidden relay session whose `join` asks for a *pipe*, so every
//! track comes as SRTP to the recorder's own UDP socket, with keys exchanged over that
//! WebSocket (`docs/shard-protocol.md`, "Relay pipes"). It asks for the top layer of
//! every video track, asks for what gets lost (NACK) and for a key frame when a video
//! file needs one, and writes each track as it arrives (`track.rs`). Its manifest
//! (`manifest.rs`) says which file holds whom from when.
//!
//! A recording outlives its connections: when the room's shard goes away or the link
//! breaks, the recorder finds where the room is now and starts a new *take* there; the
//! gap between takes is in the manifest, and each take's tracks are files of their own.

mod av1;
pub mod compose;
pub mod credentials;
pub mod manifest;
pub mod registry;
pub mod retention;
pub mod store;
pub mod track;
pub mod upload;

use crate::media::loss::{LossConfig, LossTracker};
use crate::pipe_end::{Pipe, send_rtcp};
use futures_util::{SinkExt, StreamExt};
use manifest::{Manifest, Take, TrackEntry, WallClock};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::shared::marshal::Unmarshal;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use track::{RecordedCodec, TrackRecorder};
use tutti_shard_api::protocol::{
    ClientMessage, Quality, ServerMessage, TrackKind, decode_server, encode_client,
};

/// Finds the signaling URL of the shard that holds the room now, if any does.
pub type Locate = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What a recorder needs.
#[derive(Clone)]
pub struct RecorderOptions {
    /// The recording's name (in the participant id it joins with, and the manifest).
    pub recording: String,
    /// The room to record.
    pub room: String,
    /// Where the room is.
    pub locate: Locate,
    /// The token shards accept on their signaling endpoint.
    pub signal_token: String,
    /// The directory recordings go under: `<dir>/<room>/<UTC start>/`.
    pub dir: PathBuf,
    /// The address the recorder's UDP socket binds to: one the shards can send to.
    pub bind: IpAddr,
}

/// Tracks one take records at most (each publication is a track): past it, a track is not
/// recorded.
const MAX_TRACKS: usize = 64;
/// Tracks one recording lists at most, over all its takes.
const MAX_RECORDED_TRACKS: usize = 1_024;
/// Takes one recording makes at most.
const MAX_TAKES: usize = 1_000;
/// How often files are flushed and the manifest rewritten.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often holes, NACKs and key frame requests are looked at.
const TICK: Duration = Duration::from_millis(20);
/// Key frame requests per track at most this often.
const KEYFRAME_EVERY: Duration = Duration::from_millis(500);
/// Streams whose packets are held before their announcement, at most.
const MAX_EARLY_STREAMS: usize = 16;
/// Packets held per such stream, at most (the newest are kept).
const MAX_EARLY_PACKETS: usize = 512;
/// How long such packets are kept for an announcement.
const EARLY_KEEP: Duration = Duration::from_secs(2);
/// The largest datagram read.
const MAX_DATAGRAM: usize = 1_500;

/// Runs the recording until `stop`: takes one after another, wherever the room is.
/// Returns the directory it wrote to, once it stops, or why it could not start.
pub fn spawn(
    options: RecorderOptions,
    stop: CancellationToken,
) -> std::io::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
    // The room is a directory's name: one that could climb out is refused.
    if options.room.is_empty() || options.room.starts_with('.') || options.room.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a room whose name starts with a dot is not recorded",
        ));
    }
    let started = SystemTime::now();
    let stamp = manifest::utc_stamp(manifest::unix_ms(started) / 1_000);
    let room_dir = options.dir.join(&options.room);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&room_dir)?;
    // Two recordings of a room started in the same second (on two shards writing to one
    // directory) get directories of their own.
    let mut dir = room_dir.join(&stamp);
    let mut attempt = 1;
    while let Err(err) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if err.kind() != std::io::ErrorKind::AlreadyExists || attempt >= 100 {
            return Err(err);
        }
        attempt += 1;
        dir = room_dir.join(format!("{stamp}-{attempt}"));
    }
    let mut recording = Recording {
        dir: dir.clone(),
        manifest: Manifest {
            recording: options.recording.clone(),
            room: options.room.clone(),
            started_at_ms: manifest::unix_ms(started),
            updated_at_ms: manifest::unix_ms(started),
            ended_at_ms: None,
            takes: Vec::new(),
            tracks: Vec::new(),
            composed: None,
        },
    };
    recording.save();
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        // The room's place is looked up this often until it has one.
        let mut locating = tokio::time::interval(Duration::from_millis(250));
        while !stop.is_cancelled() {
            let Some(url) = (options.locate)() else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = locating.tick() => continue,
                }
            };
            let take = recording.manifest.takes.len();
            if take >= MAX_TAKES {
                tracing::warn!(room = %options.room, "the recording reached its most takes: it ends");
                break;
            }
            recording.manifest.takes.push(Take {
                shard: url.clone(),
                started_at_ms: manifest::unix_ms(SystemTime::now()),
                ended_at_ms: None,
                ended_because: None,
            });
            let mut session = Session::new(take);
            // Stopping ends a take at once, even one still connecting.
            let outcome = tokio::select! {
                _ = stop.cancelled() => Ok(false),
                outcome = session.run(&options, &url, &mut recording, &stop) => outcome,
            };
            session.finish(&mut recording);
            // A take that never joined the room recorded nothing: it is not one.
            if !session.joined {
                recording.manifest.takes.truncate(take);
                if !stop.is_cancelled() && recording.manifest.takes.len() < MAX_TAKES {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let ended = manifest::unix_ms(SystemTime::now());
            if let Some(entry) = recording.manifest.takes.get_mut(take) {
                entry.ended_at_ms = Some(ended);
                entry.ended_because = outcome.as_ref().err().cloned();
            }
            recording.save();
            match outcome {
                Ok(true) => delay = Duration::from_millis(250),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(room = %options.room, %url, %err, retry_in = ?delay, "recording interrupted");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        recording.manifest.ended_at_ms = Some(manifest::unix_ms(SystemTime::now()));
        recording.save();
        tracing::info!(room = %options.room, dir = %recording.dir.display(), "recording ended");
    });
    Ok((dir, task))
}

/// Composes the recording in `dir` (see `compose.rs`) and records the outcome in its
/// manifest.
pub async fn compose_recording(dir: &std::path::Path) -> Result<String, String> {
    let mut manifest = manifest::read(dir).map_err(|e| e.to_string())?;
    let outcome = compose::compose(dir, &manifest).await;
    manifest.composed = Some(manifest::Composed {
        file: outcome.as_ref().ok().cloned(),
        error: outcome.as_ref().err().cloned(),
    });
    manifest.updated_at_ms = manifest::unix_ms(SystemTime::now());
    manifest::write(dir, &manifest).map_err(|e| e.to_string())?;
    outcome
}

/// A recording's directory and manifest.
struct Recording {
    dir: PathBuf,
    manifest: Manifest,
}

impl Recording {
    fn save(&mut self) {
        self.manifest.updated_at_ms = manifest::unix_ms(SystemTime::now());
        if let Err(err) = manifest::write(&self.dir, &self.manifest) {
            tracing::warn!(dir = %self.dir.display(), %err, "recording manifest not written");
        }
    }
}

/// A track being recorded in this take.
struct Recorded {
    file: TrackRecorder,
    entry: usize,
    loss: LossTracker,
    last_keyframe_request: Option<Instant>,
}

/// One take: a connection to the room's shard.
struct Session {
    take: usize,
    names: HashMap<String, String>,
    /// Track id → whether it is video (asked for its top layer once).
    video: HashMap<String, bool>,
    tracks: HashMap<u32, Recorded>,
    /// Packets of streams not announced yet, by SSRC ([`Self::hold_early`]).
    early: HashMap<u32, std::collections::VecDeque<(rtc::rtp::Packet, Instant)>>,
    /// Tracks this take started.
    started: usize,
    /// The shard accepted the join.
    joined: bool,
    clock: WallClock,
}

impl Session {
    fn new(take: usize) -> Self {
        Self {
            take,
            names: HashMap::new(),
            video: HashMap::new(),
            tracks: HashMap::new(),
            early: HashMap::new(),
            started: 0,
            joined: false,
            clock: WallClock::now(),
        }
    }

    /// Ok(true) once media flowed and the shard ended the session (the room moved or was
    /// released): try again at once. Ok(false) when stopped.
    async fn run(
        &mut self,
        options: &RecorderOptions,
        url: &str,
        recording: &mut Recording,
        stop: &CancellationToken,
    ) -> Result<bool, String> {
        let crate::pipe_end::Joining {
            socket,
            mut sink,
            mut stream,
            mut pipe,
        } = crate::pipe_end::join_receiving(
            url,
            &options.signal_token,
            &options.room,
            ("recorder", &options.recording),
            options.bind,
            true,
        )
        .await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut outgoing: Vec<ClientMessage> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                frame = stream.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            return Err("the shard closed the session".into());
                        }
                        Some(Ok(_)) => continue,
                    };
                    let Ok(message) = decode_server(&text) else {
                        continue;
                    };
                    if let Some(reconnect) =
                        self.on_message(message, &mut pipe, recording, &mut outgoing)?
                    {
                        return if reconnect {
                            Ok(true)
                        } else {
                            Err("the shard ended the session".into())
                        };
                    }
                    for message in outgoing.drain(..) {
                        sink.send(Message::Text(encode_client(&message).into()))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                received = socket.recv_from(&mut buf) => {
                    let Ok((len, _)) = received else { continue };
                    let now = Instant::now();
                    if let Some(ssrc) = self.on_datagram(&mut buf[..len], &mut pipe, now) {
                        self.keyframe_request(ssrc, &mut pipe, &socket, now).await;
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.on_tick(&mut pipe, &socket, now).await;
                }
                _ = flush.tick() => {
                    self.flush(recording);
                    recording.save();
                }
            }
        }
    }

    /// Handles one message from the shard. `Some(reconnect)` when the session ended.
    fn on_message(
        &mut self,
        message: ServerMessage,
        pipe: &mut Pipe,
        recording: &mut Recording,
        outgoing: &mut Vec<ClientMessage>,
    ) -> Result<Option<bool>, String> {
        match message {
            ServerMessage::Joined { participants, .. } => {
                self.joined = true;
                for p in participants {
                    self.names.insert(p.id.clone(), p.name.clone());
                    for track in &p.tracks {
                        self.learn(&track.id, track.kind == TrackKind::Video, outgoing);
                    }
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                self.names
                    .insert(participant.id.clone(), participant.name.clone());
            }
            ServerMessage::TrackPublished { track, .. } => {
                self.learn(&track.id, track.kind == TrackKind::Video, outgoing);
            }
            ServerMessage::Pipe { end } => pipe.answer(&end)?,
            ServerMessage::PipeTrack {
                participant,
                track,
                kind,
                codec,
                ssrc,
            } => self.start_track(participant, track, kind, codec, ssrc, recording),
            ServerMessage::TrackUnpublished { track, .. } => {
                let ended: Vec<u32> = self
                    .tracks
                    .iter()
                    .filter(|(_, r)| recording.manifest.tracks[r.entry].track == track)
                    .map(|(ssrc, _)| *ssrc)
                    .collect();
                for ssrc in ended {
                    if let Some(recorded) = self.tracks.remove(&ssrc) {
                        close(recorded, recording);
                    }
                }
            }
            ServerMessage::Left { reconnect, .. } => return Ok(Some(reconnect)),
            // A refused join ends the take; anything refused later is only logged.
            ServerMessage::Error { code, message } if !self.joined => {
                return Err(format!("the shard refused: {code:?}: {message}"));
            }
            ServerMessage::Error { code, message } => {
                tracing::debug!(?code, %message, "the shard refused a recorder's request");
            }
            _ => {}
        }
        Ok(None)
    }

    /// A track became known: a video track is asked for its top layer (its best simulcast
    /// layer, or all its spatial layers).
    fn learn(&mut self, track: &str, video: bool, outgoing: &mut Vec<ClientMessage>) {
        if self.video.len() >= MAX_TRACKS * 4 {
            return;
        }
        let before = self.video.insert(track.to_owned(), video);
        if video && before != Some(true) {
            outgoing.push(ClientMessage::SetQuality {
                track: track.to_owned(),
                quality: Quality::High,
            });
        }
    }

    fn start_track(
        &mut self,
        participant: String,
        track: String,
        kind: TrackKind,
        codec: tutti_shard_api::protocol::PipeCodec,
        ssrc: u32,
        recording: &mut Recording,
    ) {
        let Some(recorded_codec) = RecordedCodec::from_mime(&codec.mime) else {
            tracing::warn!(%participant, %track, mime = %codec.mime, "a track in a codec the recorder does not write");
            return;
        };
        if self.started >= MAX_TRACKS
            || recording.manifest.tracks.len() >= MAX_RECORDED_TRACKS
            || self.tracks.contains_key(&ssrc)
        {
            tracing::warn!(%participant, %track, "a track past the recording's bounds is not recorded");
            return;
        }
        self.started += 1;
        let file = format!(
            "{:02}-{}-{}.{}",
            self.take,
            file_part(&participant),
            file_part(&track),
            recorded_codec.extension()
        );
        let opened = std::fs::File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(recording.dir.join(&file))
            .and_then(|f| TrackRecorder::new(recorded_codec, codec.channels, f));
        let recorder = match opened {
            Ok(recorder) => recorder,
            Err(err) => {
                tracing::warn!(%file, %err, "a track file could not be started");
                return;
            }
        };
        let name = self
            .names
            .get(&participant)
            .cloned()
            .unwrap_or_else(|| participant.clone());
        recording.manifest.tracks.push(TrackEntry {
            file,
            take: self.take,
            participant,
            name,
            track,
            kind: if kind == TrackKind::Video {
                "video".into()
            } else {
                "audio".into()
            },
            codec: codec.mime,
            starts_at_ms: None,
            duration_ms: 0,
            packets: 0,
            lost: 0,
            written: 0,
            bytes: recorder.stats().bytes,
            complete: false,
        });
        let mut recorded = Recorded {
            file: recorder,
            entry: recording.manifest.tracks.len() - 1,
            loss: LossTracker::new(LossConfig::default()),
            last_keyframe_request: None,
        };
        // What arrived before the announcement, the first key frame perhaps.
        for (packet, at) in self.early.remove(&ssrc).unwrap_or_default() {
            recorded.loss.on_packet(packet.header.sequence_number, at);
            if let Err(err) = recorded.file.push(packet, at) {
                tracing::warn!(ssrc, %err, "a track file could not be written");
            }
        }
        self.tracks.insert(ssrc, recorded);
    }

    /// A datagram on the media socket: a track's packet is written. Returns the SSRC of a
    /// video track that needs a key frame.
    fn on_datagram(&mut self, datagram: &mut [u8], pipe: &mut Pipe, now: Instant) -> Option<u32> {
        if datagram.len() < 12 || crate::wire::classify(datagram) != crate::wire::DatagramKind::Rtp
        {
            return None;
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let len = pipe.receiver.as_mut()?.unprotect_rtp(datagram).ok()?;
        let packet = rtc::rtp::Packet::unmarshal(&mut &datagram[..len]).ok()?;
        let Some(recorded) = self.tracks.get_mut(&ssrc) else {
            self.hold_early(ssrc, packet, now);
            return None;
        };
        recorded.loss.on_packet(packet.header.sequence_number, now);
        match recorded.file.push(packet, now) {
            Ok(written) => written.keyframe_wanted.then_some(ssrc),
            Err(err) => {
                tracing::warn!(ssrc, %err, "a track file could not be written");
                None
            }
        }
    }

    /// Keeps a packet of a stream not announced yet: its `pipe_track` comes over the
    /// WebSocket, which may be behind the media, and a video's first key frame is among
    /// the first packets. Bounded in streams, packets and age.
    fn hold_early(&mut self, ssrc: u32, packet: rtc::rtp::Packet, now: Instant) {
        if !self.early.contains_key(&ssrc) && self.early.len() >= MAX_EARLY_STREAMS {
            return;
        }
        let held = self.early.entry(ssrc).or_default();
        if held.len() >= MAX_EARLY_PACKETS {
            held.pop_front();
        }
        held.push_back((packet, now));
    }

    async fn on_tick(&mut self, pipe: &mut Pipe, socket: &UdpSocket, now: Instant) {
        self.early.retain(|_, held| {
            held.back()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) < EARLY_KEEP)
        });
        let mut nacks: Vec<Box<dyn rtc::rtcp::packet::Packet>> = Vec::new();
        let mut keyframes = Vec::new();
        let mut lost = Vec::new();
        for (ssrc, recorded) in &mut self.tracks {
            match recorded.file.tick(now) {
                Ok(written) if written.keyframe_wanted => keyframes.push(*ssrc),
                Ok(_) => {}
                Err(err) => tracing::warn!(ssrc, %err, "a track file could not be written"),
            }
            // Asked again (throttled) for as long as the file waits for one: a request
            // lost or held back must not leave it frozen.
            if recorded.file.waiting_for_keyframe() && !keyframes.contains(ssrc) {
                keyframes.push(*ssrc);
            }
            lost.clear();
            recorded.loss.due(now, &mut lost);
            if !lost.is_empty() {
                nacks.push(Box::new(TransportLayerNack {
                    sender_ssrc: pipe.ssrc,
                    media_ssrc: *ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&lost),
                }));
            }
        }
        if !nacks.is_empty() {
            send_rtcp(pipe, socket, &nacks).await;
        }
        for ssrc in keyframes {
            self.keyframe_request(ssrc, pipe, socket, now).await;
        }
    }

    async fn keyframe_request(
        &mut self,
        ssrc: u32,
        pipe: &mut Pipe,
        socket: &UdpSocket,
        now: Instant,
    ) {
        let Some(recorded) = self.tracks.get_mut(&ssrc) else {
            return;
        };
        if !recorded.file.codec().is_video()
            || recorded
                .last_keyframe_request
                .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_EVERY)
        {
            return;
        }
        recorded.last_keyframe_request = Some(now);
        let pli: Box<dyn rtc::rtcp::packet::Packet> = Box::new(PictureLossIndication {
            sender_ssrc: pipe.ssrc,
            media_ssrc: ssrc,
        });
        send_rtcp(pipe, socket, &[pli]).await;
    }

    /// Flushes every file and brings the manifest's entries up to date.
    fn flush(&mut self, recording: &mut Recording) {
        for recorded in self.tracks.values_mut() {
            if let Err(err) = recorded.file.flush() {
                tracing::warn!(%err, "a track file could not be flushed");
            }
            update(
                &mut recording.manifest.tracks[recorded.entry],
                recorded.file.stats(),
                recorded.file.codec(),
                &self.clock,
            );
        }
    }

    /// Ends every file of the take.
    fn finish(&mut self, recording: &mut Recording) {
        for (_, recorded) in self.tracks.drain() {
            close(recorded, recording);
        }
        // Entries left by a track never seen again are complete too: the take is over.
        for entry in &mut recording.manifest.tracks {
            if entry.take == self.take {
                entry.complete = true;
            }
        }
    }
}

/// Ends a track's file and records what it holds.
fn close(recorded: Recorded, recording: &mut Recording) {
    let codec = recorded.file.codec();
    let clock = WallClock::now();
    match recorded.file.finish() {
        Ok(stats) => {
            let entry = &mut recording.manifest.tracks[recorded.entry];
            update(entry, stats, codec, &clock);
            entry.complete = true;
        }
        Err(err) => tracing::warn!(%err, "a track file could not be ended"),
    }
}

fn update(
    entry: &mut TrackEntry,
    stats: track::TrackStats,
    codec: RecordedCodec,
    clock: &WallClock,
) {
    entry.starts_at_ms = stats.first_at.map(|at| clock.ms(at));
    entry.duration_ms = manifest::ticks_ms(stats.span_ticks, codec.clock_rate());
    entry.packets = stats.packets;
    entry.lost = stats.lost;
    entry.written = stats.written;
    entry.bytes = stats.bytes;
}

/// A participant's or track's id as part of a file name: the characters ids may hold,
/// anything else replaced, at most 64.
fn file_part(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_hold_only_safe_characters() {
        assert_eq!(file_part("alice"), "alice");
        assert_eq!(file_part("../etc/passwd"), "___etc_passwd");
        assert_eq!(file_part("{a b}"), "_a_b_");
        assert_eq!(file_part(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn packets_before_their_announcement_are_held_within_bounds() {
        let mut session = Session::new(0);
        let now = Instant::now();
        let packet = |seq: u16| rtc::rtp::Packet {
            header: rtc::rtp::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: bytes::Bytes::new(),
        };
        for ssrc in 0..(MAX_EARLY_STREAMS as u32 + 5) {
            session.hold_early(ssrc, packet(0), now);
        }
        assert_eq!(session.early.len(), MAX_EARLY_STREAMS);
        for seq in 0..(MAX_EARLY_PACKETS as u16 + 10) {
            session.hold_early(0, packet(seq), now);
        }
        let held = &session.early[&0];
        assert_eq!(held.len(), MAX_EARLY_PACKETS);
        assert_eq!(
            held.back().map(|(p, _)| p.header.sequence_number),
            Some(MAX_EARLY_PACKETS as u16 + 9),
            "the newest are kept"
        );
    }
}
