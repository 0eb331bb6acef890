//! One recorded track: its RTP packets in, one file out, without transcoding. Opus goes
//! into Ogg (RFC 7845), VP8, VP9 and AV1 into IVF; both carry the RTP timestamps (Ogg's
//! granule positions, IVF's presentation times in 1/90,000 s), so a gap in the stream is
//! a gap in the file and tracks recorded together can be aligned by the manifest's start
//! times.
//!
//! Packets arrive out of order and with holes: a small reorder buffer puts them back in
//! sequence and, after [`HOLD`], gives up on a hole (the recorder's NACK had its chance).
//! A video frame with a hole is not written; the file resumes at the next key frame, which
//! the caller asks for when [`Written::keyframe_wanted`] says so.

use crate::media::codec::red_primary;
use crate::srtp::estimate_index;
use bytes::Bytes;
use rtc::rtp;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::codec::vp9::Vp9Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

/// How long a hole in the sequence is waited on before the packets after it are written.
pub const HOLD: Duration = Duration::from_millis(300);
/// Packets held behind a hole at most; past it the hole is given up at once.
const MAX_HELD: usize = 1024;
/// A frame larger than this is not a frame but a fault (or an attack): dropped.
const MAX_FRAME: usize = 4 << 20;
/// Ogg pages are closed every this many packets, so that a crash loses less than this.
const PACKETS_PER_PAGE: u32 = 10;
/// The longest gap in an Ogg stream filled with packets of missing data: ten minutes.
const MAX_FILL: u64 = 48_000 * 600;
/// IVF's time base: RTP's video clock.
const IVF_CLOCK: u32 = 90_000;

/// The codecs a track may be recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedCodec {
    /// Opus, as sent.
    Opus,
    /// Opus inside RED (RFC 2198): the primary block is recorded.
    RedOpus,
    /// VP8.
    Vp8,
    /// VP9.
    Vp9,
    /// AV1.
    Av1,
}

impl RecordedCodec {
    /// The codec of a MIME type (`audio/opus`, `video/VP8`, ...), if it can be recorded.
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.to_ascii_lowercase().as_str() {
            "audio/opus" => Some(Self::Opus),
            "audio/red" => Some(Self::RedOpus),
            "video/vp8" => Some(Self::Vp8),
            "video/vp9" => Some(Self::Vp9),
            "video/av1" => Some(Self::Av1),
            _ => None,
        }
    }

    /// Whether it is a video codec.
    pub fn is_video(self) -> bool {
        matches!(self, Self::Vp8 | Self::Vp9 | Self::Av1)
    }

    /// The file name extension of its container.
    pub fn extension(self) -> &'static str {
        if self.is_video() { "ivf" } else { "ogg" }
    }

    /// The clock rate of its RTP timestamps.
    pub fn clock_rate(self) -> u32 {
        if self.is_video() { 90_000 } else { 48_000 }
    }
}

/// What one track's file holds so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Packets received (duplicates and late ones included).
    pub packets: u64,
    /// Packets given up as lost.
    pub lost: u64,
    /// Audio packets or video frames written.
    pub written: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// From the first written packet's timestamp to the last's, in the clock's ticks.
    pub span_ticks: u64,
    /// When the first written packet arrived (the instant the caller gave).
    pub first_at: Option<Instant>,
}

/// What pushing a packet did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// A video track lost part of a frame and waits for a key frame: ask for one.
    pub keyframe_wanted: bool,
}

/// A track being recorded into its file.
pub struct TrackRecorder {
    codec: RecordedCodec,
    reorder: Reorder,
    clock: Clock,
    sink: Sink,
    stats: TrackStats,
}

impl TrackRecorder {
    /// Starts the file `file` (created by the caller) for a track of `codec`; `channels`
    /// is the audio's channel count as negotiated.
    pub fn new(codec: RecordedCodec, channels: u16, file: File) -> std::io::Result<Self> {
        let sink = if codec.is_video() {
            Sink::Ivf(IvfSink::new(codec, file)?)
        } else {
            Sink::Ogg(OggSink::new(channels, file)?)
        };
        let mut recorder = Self {
            codec,
            reorder: Reorder::default(),
            clock: Clock::default(),
            sink,
            stats: TrackStats::default(),
        };
        recorder.stats.bytes = recorder.sink.bytes();
        Ok(recorder)
    }

    /// The codec.
    pub fn codec(&self) -> RecordedCodec {
        self.codec
    }

    /// What the file holds so far.
    pub fn stats(&self) -> TrackStats {
        self.stats
    }

    /// A packet of the track arrived at `now`. Writes what is now in order.
    pub fn push(&mut self, packet: rtp::Packet, now: Instant) -> std::io::Result<Written> {
        self.stats.packets += 1;
        self.reorder.push(packet, now);
        self.drain(now)
    }

    /// Writes what waited on a hole for longer than [`HOLD`]; call it now and then.
    pub fn tick(&mut self, now: Instant) -> std::io::Result<Written> {
        self.drain(now)
    }

    /// Whether a video file waits for a key frame (at its start, and after a loss).
    pub fn waiting_for_keyframe(&self) -> bool {
        matches!(&self.sink, Sink::Ivf(ivf) if ivf.waiting_key)
    }

    /// When [`Self::tick`] next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        self.reorder.next_due()
    }

    fn drain(&mut self, now: Instant) -> std::io::Result<Written> {
        let mut written = Written::default();
        while let Some(out) = self.reorder.pop(now) {
            match out {
                Popped::Lost(count) => {
                    self.stats.lost += count;
                    written.keyframe_wanted |= self.sink.lose();
                }
                Popped::Packet(packet, arrived) => {
                    let ticks = self.clock.unwrap(packet.header.timestamp);
                    let payload = match self.codec {
                        RecordedCodec::RedOpus => match red_primary(&packet.payload) {
                            Some((_, start)) => packet.payload.slice(start..),
                            None => continue,
                        },
                        _ => packet.payload.clone(),
                    };
                    if payload.is_empty() {
                        continue; // padding
                    }
                    let outcome = self.sink.write(&packet.header, payload, ticks)?;
                    written.keyframe_wanted |= outcome.keyframe_wanted;
                    if outcome.wrote {
                        self.stats.written += 1;
                        self.stats.first_at.get_or_insert(arrived);
                        self.stats.span_ticks = self.sink.span_ticks();
                    }
                }
            }
        }
        self.stats.bytes = self.sink.bytes();
        Ok(written)
    }

    /// Pushes what is buffered to the file and brings its header up to date, so that a
    /// crash after this loses nothing before it.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()?;
        self.stats.bytes = self.sink.bytes();
        Ok(())
    }

    /// Writes what is held, ends the file and returns what it holds.
    pub fn finish(mut self) -> std::io::Result<TrackStats> {
        self.drain(Instant::now() + HOLD + HOLD)?;
        self.sink.finish()?;
        self.stats.bytes = self.sink.bytes();
        Ok(self.stats)
    }
}

// ------------------------------------------------------------------ reordering

enum Popped {
    Packet(rtp::Packet, Instant),
    Lost(u64),
}

/// Packets by extended sequence number, released in order.
#[derive(Default)]
struct Reorder {
    /// The next extended sequence number to release.
    next: Option<u64>,
    /// The highest seen.
    highest: Option<u64>,
    held: BTreeMap<u64, (rtp::Packet, Instant)>,
}

impl Reorder {
    fn push(&mut self, packet: rtp::Packet, now: Instant) {
        let index = estimate_index(self.highest, packet.header.sequence_number);
        if self.next.is_some_and(|next| index < next) {
            return; // late or repeated: already written or given up
        }
        self.next.get_or_insert(index);
        if self.highest.is_none_or(|h| index > h) {
            self.highest = Some(index);
        }
        self.held.entry(index).or_insert((packet, now));
    }

    fn pop(&mut self, now: Instant) -> Option<Popped> {
        let next = self.next?;
        let (&first, (_, arrived)) = self.held.first_key_value()?;
        if first == next {
            let (packet, arrived) = self.held.remove(&first)?;
            self.next = Some(next + 1);
            return Some(Popped::Packet(packet, arrived));
        }
        // A hole before `first`: given up once the packet after it has waited long
        // enough, or the buffer is full.
        if now.saturating_duration_since(*arrived) >= HOLD || self.held.len() >= MAX_HELD {
            self.next = Some(first);
            return Some(Popped::Lost(first - next));
        }
        None
    }

    fn next_due(&self) -> Option<Instant> {
        let next = self.next?;
        match self.held.first_key_value() {
            Some((&first, (_, arrived))) if first != next => Some(*arrived + HOLD),
            _ => None,
        }
    }
}

/// RTP timestamps unwrapped into a count of ticks from the first.
#[derive(Default)]
struct Clock {
    last: Option<(u32, i64)>,
}

impl Clock {
    fn unwrap(&mut self, timestamp: u32) -> i64 {
        let ticks = match self.last {
            None => 0,
            Some((last, ticks)) => ticks + i64::from(timestamp.wrapping_sub(last) as i32),
        };
        // Only forward: a packet from before a newer one keeps its own place, but does
        // not move the reference back.
        if self.last.is_none_or(|(_, t)| ticks >= t) {
            self.last = Some((timestamp, ticks));
        }
        ticks
    }
}

// ------------------------------------------------------------------ containers

struct SinkOutcome {
    wrote: bool,
    keyframe_wanted: bool,
}

enum Sink {
    Ogg(OggSink),
    Ivf(IvfSink),
}

impl Sink {
    fn write(
        &mut self,
        header: &rtp::Header,
        payload: Bytes,
        ticks: i64,
    ) -> std::io::Result<SinkOutcome> {
        match self {
            Self::Ogg(ogg) => ogg.write(&payload, ticks),
            Self::Ivf(ivf) => ivf.write(header, payload, ticks),
        }
    }

    /// Packets were lost: true if a key frame is now needed.
    fn lose(&mut self) -> bool {
        match self {
            Self::Ogg(_) => false, // the granule positions carry the gap
            Self::Ivf(ivf) => ivf.lose(),
        }
    }

    fn span_ticks(&self) -> u64 {
        match self {
            Self::Ogg(ogg) => ogg.span_ticks(),
            Self::Ivf(ivf) => ivf.span_ticks(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Self::Ogg(ogg) => ogg.out.bytes,
            Self::Ivf(ivf) => ivf.out.bytes,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Ogg(ogg) => ogg.out.flush(),
            Self::Ivf(ivf) => ivf.flush(),
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Self::Ogg(ogg) => ogg.finish(),
            Self::Ivf(ivf) => ivf.flush(),
        }
    }
}

/// A buffered file that counts what it was given.
struct Counted {
    file: BufWriter<File>,
    bytes: u64,
}

impl Counted {
    fn new(file: File) -> Self {
        Self {
            file: BufWriter::new(file),
            bytes: 0,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Opus in Ogg (RFC 7845), pages written as the packets come.
struct OggSink {
    out: Counted,
    serial: u32,
    /// Packets written since the last page ended.
    in_page: u32,
    /// The granule position of the last packet: the ticks of its end.
    granule: u64,
    /// The first packet's ticks, which granule positions count from.
    origin: Option<i64>,
    /// The page-building part of the `ogg` crate works on whole pages; it is fed packets
    /// and returns page bytes, which go to `out`.
    pages: ogg::writing::PacketWriter<'static, Vec<u8>>,
}

impl OggSink {
    fn new(channels: u16, file: File) -> std::io::Result<Self> {
        let serial = rand::random::<u32>();
        let mut sink = Self {
            out: Counted::new(file),
            serial,
            in_page: 0,
            granule: 0,
            origin: None,
            pages: ogg::writing::PacketWriter::new(Vec::new()),
        };
        // The identification header (RFC 7845 section 5.1): version 1, no pre-skip (the
        // file starts where the sound starts, so that it aligns with the others), 48 kHz,
        // no gain, mapping family 0.
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1);
        head.push(channels.clamp(1, 2) as u8);
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        sink.page(head, ogg::writing::PacketWriteEndInfo::EndPage, 0)?;
        let mut tags = Vec::with_capacity(24);
        tags.extend_from_slice(b"OpusTags");
        let vendor = b"Tutti";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        sink.page(tags, ogg::writing::PacketWriteEndInfo::EndPage, 0)?;
        Ok(sink)
    }

    fn page(
        &mut self,
        packet: Vec<u8>,
        end: ogg::writing::PacketWriteEndInfo,
        granule: u64,
    ) -> std::io::Result<()> {
        self.pages.write_packet(packet, self.serial, end, granule)?;
        let bytes = std::mem::take(self.pages.inner_mut());
        self.out.write_all(&bytes)
    }

    fn write(&mut self, payload: &[u8], ticks: i64) -> std::io::Result<SinkOutcome> {
        let origin = *self.origin.get_or_insert(ticks);
        let Some(samples) = opus_samples(payload) else {
            return Ok(SinkOutcome {
                wrote: false,
                keyframe_wanted: false,
            });
        };
        let start = u64::try_from(ticks - origin).unwrap_or(0);
        self.fill_gap(start)?;
        self.granule = self.granule.max(start + u64::from(samples));
        self.packet(payload.to_vec())?;
        Ok(SinkOutcome {
            wrote: true,
            keyframe_wanted: false,
        })
    }

    /// Appends a packet ending at the current granule position, ending the page every
    /// [`PACKETS_PER_PAGE`] packets.
    fn packet(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        self.in_page += 1;
        let end = if self.in_page >= PACKETS_PER_PAGE {
            self.in_page = 0;
            ogg::writing::PacketWriteEndInfo::EndPage
        } else {
            ogg::writing::PacketWriteEndInfo::NormalPacket
        };
        self.page(data, end, self.granule)
    }

    /// Fills the time between the last packet's end and `start` (lost packets, or a
    /// sender's silence) with packets that tell the decoder data is missing, as RFC 7845
    /// section 4.1 asks: Opus packets of no frame data (a TOC byte alone), 20 ms each, then
    /// shorter ones for the rest. A gap past [`MAX_FILL`] is left to the granule position.
    fn fill_gap(&mut self, start: u64) -> std::io::Result<()> {
        if start <= self.granule || start - self.granule > MAX_FILL {
            return Ok(());
        }
        // CELT-only, full band, one frame: 20, 10, 5 and 2.5 ms.
        for (toc, samples) in [(0xF8u8, 960u64), (0xF0, 480), (0xE8, 240), (0xE0, 120)] {
            while start - self.granule >= samples {
                self.granule += samples;
                self.packet(vec![toc])?;
            }
        }
        Ok(())
    }

    fn span_ticks(&self) -> u64 {
        self.granule
    }

    fn finish(&mut self) -> std::io::Result<()> {
        // The last page, marked as the end of the stream: an empty packet would be read as
        // a lost frame, so a short silence frame (a TOC byte of one 20 ms CELT frame, no
        // data: "DTX") ends it without moving the granule position on.
        self.page(
            vec![0xF8],
            ogg::writing::PacketWriteEndInfo::EndStream,
            self.granule,
        )?;
        self.out.flush()
    }
}

/// The samples (at 48 kHz) an Opus packet holds, from its TOC byte and frame count
/// (RFC 6716 section 3.1); `None` for a packet that is not Opus.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        // SILK narrow, medium, wide: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)],
        // Hybrid super-wide and full: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config & 1)],
        // CELT: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let samples = frame * frames;
    // At most 120 ms in one packet.
    (frames > 0 && samples <= 5_760).then_some(samples)
}

enum VideoDepacketizer {
    Vp8,
    Vp9,
    Av1(Box<super::av1::Av1Obus>),
}

/// VP8, VP9 or AV1 in IVF, a frame header (size and presentation time) before each frame.
struct IvfSink {
    out: Counted,
    depacketizer: VideoDepacketizer,
    /// The frame being put together and its ticks.
    frame: Vec<u8>,
    frame_ticks: Option<i64>,
    /// Part of the frame was lost: it is not written.
    broken: bool,
    /// Waiting for a key frame (at the start, and after a loss).
    waiting_key: bool,
    /// The first written frame's ticks, and the last's.
    origin: Option<i64>,
    last: i64,
    /// Frame dimensions, when known from a key frame.
    size: Option<(u16, u16)>,
    /// Where each VP9 layer frame of the picture being put together starts in `frame`:
    /// a picture of several spatial layers is written as a superframe.
    layer_starts: Vec<usize>,
}

/// The IVF file header's length: the part of a video file rewritten as it grows (its
/// size and duration), everything after it only appended to.
pub const IVF_HEADER: u64 = 32;

impl IvfSink {
    fn new(codec: RecordedCodec, file: File) -> std::io::Result<Self> {
        let depacketizer = match codec {
            RecordedCodec::Vp9 => VideoDepacketizer::Vp9,
            RecordedCodec::Av1 => VideoDepacketizer::Av1(Box::default()),
            _ => VideoDepacketizer::Vp8,
        };
        let mut sink = Self {
            out: Counted::new(file),
            depacketizer,
            frame: Vec::new(),
            frame_ticks: None,
            broken: false,
            waiting_key: true,
            origin: None,
            last: 0,
            size: None,
            layer_starts: Vec::new(),
        };
        let header = sink.header(codec);
        sink.out.write_all(&header)?;
        Ok(sink)
    }

    fn fourcc(&self) -> &'static [u8; 4] {
        match self.depacketizer {
            VideoDepacketizer::Vp8 => b"VP80",
            VideoDepacketizer::Vp9 => b"VP90",
            VideoDepacketizer::Av1(_) => b"AV01",
        }
    }

    /// The 32-byte file header. FFmpeg reads the field after the time base as the
    /// stream's duration in time-base units; the IVF writers that write a frame count
    /// there use the frame rate as their time base, where it is the same number.
    fn header(&self, _codec: RecordedCodec) -> [u8; IVF_HEADER as usize] {
        let mut header = [0u8; IVF_HEADER as usize];
        header[0..4].copy_from_slice(b"DKIF");
        header[6..8].copy_from_slice(&(IVF_HEADER as u16).to_le_bytes());
        header[8..12].copy_from_slice(self.fourcc());
        let (width, height) = self.size.unwrap_or((0, 0));
        header[12..14].copy_from_slice(&width.to_le_bytes());
        header[14..16].copy_from_slice(&height.to_le_bytes());
        header[16..20].copy_from_slice(&IVF_CLOCK.to_le_bytes());
        header[20..24].copy_from_slice(&1u32.to_le_bytes());
        let span = u32::try_from(self.span_ticks()).unwrap_or(u32::MAX);
        header[24..28].copy_from_slice(&span.to_le_bytes());
        header
    }

    fn lose(&mut self) -> bool {
        if self.frame_ticks.is_some() {
            self.broken = true;
        }
        if let VideoDepacketizer::Av1(av1) = &mut self.depacketizer {
            av1.reset();
        }
        self.waiting_key = true;
        true
    }

    fn span_ticks(&self) -> u64 {
        self.origin
            .map_or(0, |origin| u64::try_from(self.last - origin).unwrap_or(0))
    }

    fn write(
        &mut self,
        header: &rtp::Header,
        payload: Bytes,
        ticks: i64,
    ) -> std::io::Result<SinkOutcome> {
        let mut outcome = SinkOutcome {
            wrote: false,
            keyframe_wanted: false,
        };
        // A packet of a new frame while the last never saw its marker: the last is
        // incomplete.
        if self.frame_ticks.is_some_and(|t| t != ticks) {
            self.frame.clear();
            self.frame_ticks = None;
            self.broken = false;
            self.waiting_key = true;
            if let VideoDepacketizer::Av1(av1) = &mut self.depacketizer {
                av1.reset();
            }
            outcome.keyframe_wanted = true;
        }
        let (data, starts_frame, key) = match &mut self.depacketizer {
            VideoDepacketizer::Vp8 => {
                let mut vp8 = Vp8Packet::default();
                let Ok(data) = vp8.depacketize(&payload) else {
                    return Ok(outcome);
                };
                let starts = vp8.s == 1 && vp8.pid == 0;
                let key = starts && data.first().is_some_and(|b| b & 1 == 0);
                if key && let Some(size) = vp8_size(&data) {
                    self.size = Some(size);
                }
                (data, starts, key)
            }
            VideoDepacketizer::Vp9 => {
                let mut vp9 = Vp9Packet::default();
                let Ok(data) = vp9.depacketize(&payload) else {
                    return Ok(outcome);
                };
                // A key picture's first packet: the start of a frame that refers to none.
                let starts = vp9.b && (self.frame_ticks.is_none() || self.frame.is_empty());
                if vp9.b && (self.frame_ticks.is_some() || starts) {
                    if self.frame_ticks.is_none() {
                        self.layer_starts.clear();
                    }
                    self.layer_starts.push(self.frame.len());
                }
                (data, starts, vp9.b && !vp9.p)
            }
            VideoDepacketizer::Av1(av1) => {
                let starts = self.frame_ticks.is_none();
                let room = MAX_FRAME.saturating_sub(self.frame.len());
                let mut data = Vec::new();
                match av1.push(&payload, &mut data, room) {
                    Ok(new_sequence) => (Bytes::from(data), starts, starts && new_sequence),
                    Err(_) => {
                        av1.reset();
                        if self.frame_ticks.is_some() {
                            self.broken = true;
                        }
                        return Ok(outcome);
                    }
                }
            }
        };
        if self.frame_ticks.is_none() {
            // A frame of a time already written (a layer that came after the picture's
            // marker) would give the file two frames at one time: it is left out.
            let behind = self.origin.is_some() && ticks <= self.last;
            if !starts_frame || (self.waiting_key && !key) || behind {
                return Ok(outcome);
            }
            self.waiting_key = false;
            self.frame_ticks = Some(ticks);
            if matches!(self.depacketizer, VideoDepacketizer::Av1(_)) {
                // A temporal delimiter OBU starts each temporal unit in IVF's AV1.
                self.frame.extend_from_slice(&[0x12, 0x00]);
            }
        }
        if self.frame.len() + data.len() > MAX_FRAME {
            self.broken = true;
        } else {
            self.frame.extend_from_slice(&data);
        }
        if !header.marker {
            return Ok(outcome);
        }
        let broken = std::mem::take(&mut self.broken);
        self.frame_ticks = None;
        let layers = std::mem::take(&mut self.layer_starts);
        if broken {
            self.frame.clear();
            self.waiting_key = true;
            outcome.keyframe_wanted = true;
            return Ok(outcome);
        }
        if matches!(self.depacketizer, VideoDepacketizer::Vp9) {
            append_superframe_index(&mut self.frame, &layers);
        }
        let origin = *self.origin.get_or_insert(ticks);
        let pts = ticks - origin;
        self.last = self.last.max(ticks);
        let mut frame_header = [0u8; 12];
        frame_header[0..4].copy_from_slice(&(self.frame.len() as u32).to_le_bytes());
        frame_header[4..12].copy_from_slice(&pts.to_le_bytes());
        self.out.write_all(&frame_header)?;
        self.out.write_all(&self.frame)?;
        self.frame.clear();
        outcome.wrote = true;
        Ok(outcome)
    }

    /// Flushes the frames and rewrites the header with the size and duration so far.
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.file.flush()?;
        let header = self.header(RecordedCodec::Vp8);
        let file = self.out.file.get_mut();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header)?;
        file.seek(SeekFrom::End(0))?;
        file.sync_data()
    }
}

/// Ends a VP9 picture of several layer frames (starting at `starts` in `frame`) with a
/// superframe index (VP9 bitstream specification, Annex B), which is how decoders find
/// the frames in one IVF frame: a marker byte, each frame's size in four bytes, the
/// marker again. A picture of one frame, or of more than eight, is left as it is.
fn append_superframe_index(frame: &mut Vec<u8>, starts: &[usize]) {
    if !(2..=8).contains(&starts.len()) || starts.first() != Some(&0) {
        return;
    }
    let mut sizes = Vec::with_capacity(starts.len());
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(frame.len());
        let Some(size) = end.checked_sub(*start).and_then(|s| u32::try_from(s).ok()) else {
            return;
        };
        sizes.push(size);
    }
    // 0b110 | bytes per size - 1 (3: four bytes) | frames - 1.
    let marker = 0xC0 | (3 << 3) | (starts.len() as u8 - 1);
    frame.push(marker);
    for size in sizes {
        frame.extend_from_slice(&size.to_le_bytes());
    }
    frame.push(marker);
}

/// The width and height a VP8 key frame's header gives (RFC 6386 section 9.1).
fn vp8_size(frame: &[u8]) -> Option<(u16, u16)> {
    let bytes = frame.get(3..10)?;
    if bytes[0..3] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([bytes[3], bytes[4]]) & 0x3FFF;
    let height = u16::from_le_bytes([bytes[5], bytes[6]]) & 0x3FFF;
    Some((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> rtp::Packet {
        rtp::Packet {
            header: rtp::Header {
                version: 2,
                sequence_number: seq,
                timestamp,
                marker,
                ssrc: 7,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("tutti-track-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("file");
        (path, file)
    }

    #[test]
    fn vp9_pictures_of_several_layers_get_a_superframe_index() {
        let mut frame = vec![1, 2, 3, 4, 5];
        append_superframe_index(&mut frame, &[0, 2]);
        // Frames of 2 and 3 bytes; marker 0b110_11_001.
        assert_eq!(
            frame,
            vec![1, 2, 3, 4, 5, 0xD9, 2, 0, 0, 0, 3, 0, 0, 0, 0xD9]
        );
        let mut single = vec![1, 2, 3];
        append_superframe_index(&mut single, &[0]);
        assert_eq!(single, vec![1, 2, 3]);
        let mut odd = vec![1, 2, 3];
        append_superframe_index(&mut odd, &[1, 2]);
        assert_eq!(
            odd,
            vec![1, 2, 3],
            "a layer list that does not start the frame"
        );
    }

    #[test]
    fn opus_packet_lengths_follow_the_toc() {
        // CELT full band 20 ms, one frame.
        assert_eq!(opus_samples(&[0xF8, 1, 2]), Some(960));
        // SILK wide 60 ms, two frames of equal size.
        assert_eq!(opus_samples(&[(11 << 3) | 1]), Some(5_760));
        // Code 3 with 3 frames of 10 ms hybrid.
        assert_eq!(opus_samples(&[(12 << 3) | 3, 3]), Some(1_440));
        // Code 3 without its count byte, and a count that makes more than 120 ms.
        assert_eq!(opus_samples(&[(12 << 3) | 3]), None);
        assert_eq!(opus_samples(&[(31 << 3) | 3, 63]), None);
        assert_eq!(opus_samples(&[]), None);
    }

    #[test]
    fn reorder_releases_in_order_and_gives_up_a_hole_after_the_hold() {
        let t0 = Instant::now();
        let mut reorder = Reorder::default();
        reorder.push(packet(65_534, 0, false, &[1]), t0);
        reorder.push(packet(0, 0, false, &[1]), t0); // 65_535 missing, across the wrap
        let Some(Popped::Packet(p, _)) = reorder.pop(t0) else {
            panic!("the first packet is released");
        };
        assert_eq!(p.header.sequence_number, 65_534);
        assert!(reorder.pop(t0).is_none(), "the hole is waited on");
        assert_eq!(reorder.next_due(), Some(t0 + HOLD));
        // The missing one comes late, within the hold: in order.
        reorder.push(packet(65_535, 0, false, &[1]), t0 + HOLD / 2);
        let seqs: Vec<u16> = std::iter::from_fn(|| match reorder.pop(t0 + HOLD / 2) {
            Some(Popped::Packet(p, _)) => Some(p.header.sequence_number),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, vec![65_535, 0]);
        // A hole that stays: given up after the hold, counted.
        reorder.push(packet(3, 0, false, &[1]), t0 + HOLD);
        assert!(reorder.pop(t0 + HOLD).is_none());
        assert!(matches!(reorder.pop(t0 + HOLD * 2), Some(Popped::Lost(2))));
        assert!(matches!(
            reorder.pop(t0 + HOLD * 2),
            Some(Popped::Packet(..))
        ));
        // Late and repeated packets are dropped.
        reorder.push(packet(1, 0, false, &[1]), t0 + HOLD * 2);
        reorder.push(packet(3, 0, false, &[1]), t0 + HOLD * 2);
        assert!(reorder.pop(t0 + HOLD * 3).is_none());
    }

    #[test]
    fn timestamps_unwrap_across_the_wrap() {
        let mut clock = Clock::default();
        assert_eq!(clock.unwrap(u32::MAX - 959), 0);
        assert_eq!(clock.unwrap(0), 960);
        assert_eq!(
            clock.unwrap(u32::MAX - 959),
            0,
            "a late packet keeps its place"
        );
        assert_eq!(clock.unwrap(960), 1_920);
    }

    #[test]
    fn an_ogg_file_holds_every_packet_with_its_time() {
        let (path, file) = temp_file("audio.ogg");
        let mut track = TrackRecorder::new(RecordedCodec::Opus, 2, file).expect("track");
        let now = Instant::now();
        // 50 packets of 20 ms, one missing in the middle (a gap of 20 ms in the file).
        for i in 0..50u16 {
            if i == 20 {
                continue;
            }
            let ts = 1_000 + u32::from(i) * 960;
            track
                .push(packet(100 + i, ts, false, &[0xFC, 0xFF, 0xFE]), now)
                .expect("written");
        }
        let stats = track.finish().expect("finished");
        assert_eq!(stats.written, 49);
        assert_eq!(stats.lost, 1);
        assert_eq!(stats.span_ticks, 50 * 960);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(stats.bytes, bytes.len() as u64);
        // Read back with the same crate: headers, then each packet, the last page's
        // granule position the end of the last packet.
        let mut reader = ogg::reading::PacketReader::new(std::io::Cursor::new(bytes));
        let head = reader.read_packet_expected().expect("head");
        assert_eq!(&head.data[..8], b"OpusHead");
        assert_eq!(head.data[9], 2);
        let tags = reader.read_packet_expected().expect("tags");
        assert_eq!(&tags.data[..8], b"OpusTags");
        let mut audio = 0;
        let mut last_granule = 0;
        while let Some(p) = reader.read_packet().expect("packet") {
            audio += 1;
            last_granule = p.absgp_page();
        }
        assert_eq!(
            audio, 51,
            "49 packets, one that says the missing one is missing, the end-of-stream frame"
        );
        assert_eq!(last_granule, 50 * 960);
    }

    /// A VP8 payload descriptor (S bit on a partition start) and a frame's first bytes:
    /// a key frame's header with its size, or an inter frame's.
    fn vp8(start: bool, key: bool) -> Vec<u8> {
        let mut out = vec![if start { 0x10 } else { 0x00 }];
        if start && key {
            out.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
        } else if start {
            out.extend_from_slice(&[0x01, 0x00, 0x00]);
        } else {
            out.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD]);
        }
        out
    }

    #[test]
    fn an_ivf_file_holds_whole_frames_from_a_key_frame_and_skips_broken_ones() {
        let (path, file) = temp_file("video.ivf");
        let mut track = TrackRecorder::new(RecordedCodec::Vp8, 0, file).expect("track");
        let now = Instant::now();
        let mut seq = 10u16;
        let mut push = |track: &mut TrackRecorder, ts: u32, key: bool, skip_second: bool| {
            let first = packet(seq, ts, false, &vp8(true, key));
            let second = packet(seq + 1, ts, true, &vp8(false, key));
            seq += 2;
            let mut wanted = track.push(first, now).expect("push").keyframe_wanted;
            if !skip_second {
                wanted |= track.push(second, now).expect("push").keyframe_wanted;
            }
            wanted
        };
        // An inter frame before any key frame: not written.
        push(&mut track, 0, false, false);
        assert!(
            !push(&mut track, 3_000, true, false),
            "a whole key frame needs nothing"
        );
        push(&mut track, 6_000, false, false);
        // Packets of a time already written (after its marker): left out.
        push(&mut track, 6_000, false, false);
        // A frame whose second packet is lost: dropped once the hold is over, and a key
        // frame asked for; the inter frame after it waits for the key frame.
        push(&mut track, 9_000, false, true);
        push(&mut track, 12_000, false, false);
        let wanted = track.tick(now + HOLD).expect("tick").keyframe_wanted;
        assert!(wanted, "a key frame is asked for after a loss");
        push(&mut track, 15_000, true, false);
        let stats = track.finish().expect("finished");
        assert_eq!(stats.written, 3, "key, inter, key");
        assert_eq!(stats.span_ticks, 12_000);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 640);
        assert_eq!(u16::from_le_bytes([bytes[14], bytes[15]]), 480);
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            12_000
        );
        // Frame headers: sizes and presentation times.
        let mut at = 32;
        let mut times = Vec::new();
        while at < bytes.len() {
            let size = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            times.push(i64::from_le_bytes(
                bytes[at + 4..at + 12].try_into().unwrap(),
            ));
            at += 12 + size;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(times, vec![0, 3_000, 12_000]);
    }
}
