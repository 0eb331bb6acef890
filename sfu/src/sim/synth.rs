//! Synthetic media for test peers and the load generator.
//!
//! Packets look like what a real encoder sends where the shard looks (VP8 payload
//! descriptor and key-frame bit; Opus sizes and cadence), and carry a trailer that lets a
//! receiver check everything a user would notice: which packet it is (its index in the
//! stream), when it was sent, and whether its bytes arrived intact, since every payload
//! byte is a pure function of the stream id and the index.

use bytes::Bytes;
use std::time::{Duration, Instant};

/// Marks a synthetic payload's trailer.
pub const MAGIC: [u8; 4] = *b"TUTI";
/// Bytes of the trailer: magic, stream id (u32), index (u32), send time (u64 ns).
pub const TRAILER_LEN: usize = 20;

/// What a receiver learns from a synthetic payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Which synthetic stream it belongs to.
    pub stream: u32,
    /// The packet's index in that stream.
    pub index: u32,
    /// Nanoseconds since the sender's epoch when it was sent.
    pub sent_ns: u64,
    /// Whether every byte matches what the sender generated.
    pub intact: bool,
}

fn filler_byte(stream: u32, index: u32, position: usize) -> u8 {
    // A cheap mix, different per stream, packet and position.
    let x = stream.wrapping_mul(0x9E37_79B1)
        ^ index.wrapping_mul(0x85EB_CA77)
        ^ (position as u32).wrapping_mul(0xC2B2_AE3D);
    (x ^ (x >> 15)) as u8
}

/// Builds a payload: `header` bytes, filler up to `len - TRAILER_LEN`, then the trailer.
pub fn payload(header: &[u8], len: usize, stream: u32, index: u32, sent_ns: u64) -> Bytes {
    let len = len.max(header.len() + TRAILER_LEN);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(header);
    let body_end = len - TRAILER_LEN;
    for position in header.len()..body_end {
        out.push(filler_byte(stream, index, position));
    }
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
    Bytes::from(out)
}

/// Reads the trailer of a synthetic payload and checks its filler bytes. `header_len` is
/// how many leading bytes are codec header rather than filler.
pub fn probe(payload: &[u8], header_len: usize) -> Option<Probe> {
    if payload.len() < header_len + TRAILER_LEN {
        return None;
    }
    let trailer = &payload[payload.len() - TRAILER_LEN..];
    if trailer[..4] != MAGIC {
        return None;
    }
    let stream = u32::from_be_bytes(trailer[4..8].try_into().ok()?);
    let index = u32::from_be_bytes(trailer[8..12].try_into().ok()?);
    let sent_ns = u64::from_be_bytes(trailer[12..20].try_into().ok()?);
    let body_end = payload.len() - TRAILER_LEN;
    let intact = (header_len..body_end).all(|p| payload[p] == filler_byte(stream, index, p));
    Some(Probe {
        stream,
        index,
        sent_ns,
        intact,
    })
}

/// One packet to send.
#[derive(Debug, Clone)]
pub struct SynthPacket {
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (last packet of a video frame).
    pub marker: bool,
    /// The payload.
    pub payload: Bytes,
    /// Whether it starts a key frame.
    pub keyframe: bool,
}

/// Synthetic Opus: one 20 ms packet of `size` bytes per tick.
#[derive(Debug)]
pub struct OpusSource {
    stream: u32,
    index: u32,
    timestamp: u32,
    size: usize,
}

impl OpusSource {
    /// A source for synthetic stream `stream`.
    pub fn new(stream: u32) -> Self {
        Self {
            stream,
            index: 0,
            timestamp: rand::random(),
            size: 100,
        }
    }

    /// The spacing of packets.
    pub const INTERVAL: Duration = Duration::from_millis(20);

    /// The next packet, stamped with `sent_ns`.
    pub fn next(&mut self, sent_ns: u64) -> SynthPacket {
        let packet = SynthPacket {
            timestamp: self.timestamp,
            marker: self.index == 0,
            payload: payload(&[0xFC], self.size, self.stream, self.index, sent_ns),
            keyframe: false,
        };
        self.index = self.index.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(960);
        packet
    }
}

/// The video codecs the synthetic source imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741 payload descriptor).
    Vp8,
    /// H.264, one NAL unit per packet (RFC 6184 single NAL unit mode).
    H264,
}

impl VideoCodec {
    /// The SDP MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Vp8 => "video/VP8",
            Self::H264 => "video/H264",
        }
    }

    /// The codec of a MIME type, if synthetic media exists for it.
    pub fn from_mime(mime: &str) -> Option<Self> {
        if mime.eq_ignore_ascii_case("video/vp8") {
            Some(Self::Vp8)
        } else if mime.eq_ignore_ascii_case("video/h264") {
            Some(Self::H264)
        } else {
            None
        }
    }
}

/// Synthetic video at a target bitrate and frame rate, key frames every `keyframe_every`
/// frames or on request.
#[derive(Debug)]
pub struct VideoSource {
    codec: VideoCodec,
    stream: u32,
    index: u32,
    frame: u64,
    timestamp: u32,
    frame_bytes: usize,
    keyframe_every: u64,
    force_keyframe: bool,
    /// The VP8 picture ID of the next frame (15 bits, from a random start, as Chromium's
    /// encoder numbers each simulcast layer on its own).
    picture_id: u16,
    /// Largest payload per packet: near what libwebrtc puts in its 1,200-byte packets, so
    /// that a full packet tests the room left in a reused datagram buffer.
    pub mtu_payload: usize,
}

/// Bytes of VP8 header the synthetic source writes at the start of a frame's first packet:
/// the payload descriptor with a 15-bit picture ID, and the payload header.
pub const VP8_FIRST_HEADER: usize = 14;
/// Bytes of VP8 header in a frame's later packets: the payload descriptor.
pub const VP8_NEXT_HEADER: usize = 4;
/// Bytes of the VP8 payload header (frame tag, start code, size) after the descriptor.
const VP8_PAYLOAD_HEADER: usize = 10;

impl VideoSource {
    /// 30 frames per second at `bitrate` bit/s, a key frame every `keyframe_interval`.
    pub fn new(codec: VideoCodec, stream: u32, bitrate: u64, keyframe_interval: Duration) -> Self {
        let fps = 30;
        Self {
            codec,
            stream,
            index: 0,
            frame: 0,
            timestamp: rand::random(),
            frame_bytes: (bitrate / 8 / fps) as usize,
            keyframe_every: (keyframe_interval.as_millis() as u64 * fps / 1000).max(1),
            force_keyframe: true,
            picture_id: rand::random::<u16>() & 0x7fff,
            mtu_payload: 1180,
        }
    }

    /// The spacing of frames.
    pub const INTERVAL: Duration = Duration::from_micros(33_333);

    /// Makes the next frame a key frame (a PLI arrived).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// The packets of the next frame, stamped with `sent_ns`.
    pub fn next_frame(&mut self, sent_ns: u64) -> Vec<SynthPacket> {
        let keyframe = self.force_keyframe || self.frame.is_multiple_of(self.keyframe_every);
        self.force_keyframe = false;
        let mut remaining = self.frame_bytes.max(TRAILER_LEN + VP8_FIRST_HEADER);
        let mut packets = Vec::new();
        let mut first = true;
        while remaining > 0 {
            let len = remaining.min(self.mtu_payload);
            remaining -= len;
            let [high, low] = (0x8000 | self.picture_id).to_be_bytes();
            let header: Vec<u8> = match (self.codec, first) {
                // Descriptor X=1 S=1 PID=0, I=1 with a 15-bit picture ID; frame tag with P=0
                // for key frames; start code; size.
                (VideoCodec::Vp8, true) => {
                    let tag = if keyframe { 0x10 } else { 0x11 };
                    vec![
                        0x90, 0x80, high, low, tag, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0,
                        0x01,
                    ]
                }
                (VideoCodec::Vp8, false) => vec![0x80, 0x80, high, low],
                // NAL unit header: an IDR slice (type 5) starts a key frame, else type 1.
                (VideoCodec::H264, true) if keyframe => vec![0x65],
                (VideoCodec::H264, _) => vec![0x41],
            };
            let len = len.max(header.len() + TRAILER_LEN);
            packets.push(SynthPacket {
                timestamp: self.timestamp,
                marker: remaining == 0,
                payload: payload(&header, len, self.stream, self.index, sent_ns),
                keyframe: keyframe && first,
            });
            self.index = self.index.wrapping_add(1);
            first = false;
        }
        self.frame += 1;
        self.picture_id = self.picture_id.wrapping_add(1) & 0x7fff;
        self.timestamp = self.timestamp.wrapping_add(3000);
        packets
    }
}

/// RFC 7741 §4.2: the length of a VP8 payload descriptor, and the picture ID it carries.
fn vp8_descriptor(payload: &[u8]) -> Option<(usize, Option<u16>)> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some((1, None));
    }
    let ext = *payload.get(1)?;
    let mut len = 2;
    let mut picture_id = None;
    if ext & 0x80 != 0 {
        let high = *payload.get(len)?;
        if high & 0x80 != 0 {
            picture_id = Some(u16::from(high & 0x7f) << 8 | u16::from(*payload.get(len + 1)?));
            len += 2;
        } else {
            picture_id = Some(u16::from(high));
            len += 1;
        }
    }
    if ext & 0x40 != 0 {
        len += 1;
    }
    if ext & 0x30 != 0 {
        len += 1;
    }
    Some((len, picture_id))
}

/// Whether a VP8 payload starts partition 0 of a frame (where the payload header is).
fn vp8_starts_frame(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0)
}

/// The VP8 picture ID of a received payload, if it carries one.
pub fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    vp8_descriptor(payload).and_then(|(_, id)| id)
}

/// Whether a received synthetic video payload starts a key frame.
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => {
            vp8_starts_frame(payload)
                && vp8_descriptor(payload)
                    .and_then(|(len, _)| payload.get(len))
                    .is_some_and(|tag| tag & 0x01 == 0)
        }
        VideoCodec::H264 => payload.first().is_some_and(|b| b & 0x1F == 5),
    }
}

/// How long the codec header of a received synthetic payload is (`None` for audio).
pub fn header_len(codec: Option<VideoCodec>, payload: &[u8]) -> usize {
    match codec {
        None | Some(VideoCodec::H264) => 1,
        Some(VideoCodec::Vp8) => {
            let descriptor = vp8_descriptor(payload).map_or(1, |(len, _)| len);
            if vp8_starts_frame(payload) {
                descriptor + VP8_PAYLOAD_HEADER
            } else {
                descriptor
            }
        }
    }
}

/// A shared epoch for send timestamps of one process.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Default for Epoch {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Epoch {
    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_detect_corruption() {
        let p = payload(&[1, 2, 3], 200, 7, 42, 123_456);
        let probe = probe(&p, 3).unwrap();
        assert_eq!(
            (probe.stream, probe.index, probe.sent_ns, probe.intact),
            (7, 42, 123_456, true)
        );
        let mut corrupt = p.to_vec();
        corrupt[50] ^= 1;
        assert!(!super::probe(&corrupt, 3).unwrap().intact);
        assert!(super::probe(&p[..10], 3).is_none());
    }

    #[test]
    fn vp8_source_sizes_and_keyframes() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let mut source = VideoSource::new(codec, 1, 1_000_000, Duration::from_secs(2));
            let frame = source.next_frame(0);
            let bytes: usize = frame.iter().map(|p| p.payload.len()).sum();
            assert!((4100..4300).contains(&bytes), "{bytes}");
            assert!(frame[0].keyframe && is_keyframe(codec, &frame[0].payload));
            assert!(frame.last().unwrap().marker);
            let next = source.next_frame(0);
            assert!(!next[0].keyframe && !is_keyframe(codec, &next[0].payload));
            source.request_keyframe();
            assert!(source.next_frame(0)[0].keyframe);
            if codec == VideoCodec::Vp8 {
                // Every packet of a frame carries its picture ID; frames count up by one.
                let ids = |f: &[SynthPacket]| -> Vec<Option<u16>> {
                    f.iter().map(|p| vp8_picture_id(&p.payload)).collect()
                };
                let (a, b) = (ids(&frame), ids(&next));
                let first = a[0].unwrap();
                assert!(a.iter().all(|id| *id == Some(first)));
                assert!(b.iter().all(|id| *id == Some((first + 1) & 0x7fff)));
            }
            for p in frame.iter().chain(&next) {
                let header = header_len(Some(codec), &p.payload);
                assert!(probe(&p.payload, header).unwrap().intact);
            }
        }
    }
}
