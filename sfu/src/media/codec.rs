//! What the shard needs to know about a payload without decoding it: which codec family a
//! MIME type belongs to, whether a packet starts a keyframe, and the audio level a
//! publisher reports (RFC 6464). Payloads come from publishers, so every parser is bounded
//! and answers `false`/`None` for anything it cannot read.

use super::spatial::SpatialInfo;
use super::temporal::TemporalInfo;
use super::vp9::Scalability;

/// What the shard reads of one video packet's layers, once: from a VP9 payload descriptor
/// or an AV1 dependency descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameLayers {
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// Its temporal layer, when the stream says.
    pub temporal: Option<TemporalInfo>,
    /// Its spatial layer, when the stream says.
    pub spatial: Option<SpatialInfo>,
    /// The encoder's spatial layers, when the packet carries them (key pictures).
    pub scalability: Option<Scalability>,
}

/// The codec families the shard forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecFamily {
    /// Opus audio.
    Opus,
    /// VP8 video.
    Vp8,
    /// VP9 video.
    Vp9,
    /// H.264 video.
    H264,
    /// AV1 video.
    Av1,
    /// Redundant audio (RFC 2198): Opus frames, each packet carrying earlier ones again.
    Red,
    /// Anything else (forwarded, but keyframes are not recognised).
    Other,
}

impl CodecFamily {
    /// The family of an SDP MIME type such as `video/VP8`, ignoring case.
    pub fn from_mime(mime: &str) -> Self {
        let subtype = mime.rsplit('/').next().unwrap_or(mime);
        if subtype.eq_ignore_ascii_case("opus") {
            Self::Opus
        } else if subtype.eq_ignore_ascii_case("vp8") {
            Self::Vp8
        } else if subtype.eq_ignore_ascii_case("vp9") {
            Self::Vp9
        } else if subtype.eq_ignore_ascii_case("h264") {
            Self::H264
        } else if subtype.eq_ignore_ascii_case("av1") {
            Self::Av1
        } else if subtype.eq_ignore_ascii_case("red")
            && mime.to_ascii_lowercase().starts_with("audio/")
        {
            Self::Red
        } else {
            Self::Other
        }
    }

    /// Whether packets of this family are video.
    pub fn is_video(self) -> bool {
        matches!(self, Self::Vp8 | Self::Vp9 | Self::H264 | Self::Av1)
    }
}

/// Whether an RTP payload is the first packet of a keyframe (or carries the parameter sets
/// that start one, for H.264).
pub fn is_keyframe(family: CodecFamily, payload: &[u8]) -> bool {
    match family {
        CodecFamily::Vp8 => vp8_keyframe(payload),
        CodecFamily::Vp9 => vp9_keyframe(payload),
        CodecFamily::H264 => h264_keyframe(payload),
        CodecFamily::Av1 => av1_keyframe(payload),
        CodecFamily::Opus | CodecFamily::Red | CodecFamily::Other => false,
    }
}

/// RFC 7741 §4.2–4.3: payload descriptor, then the VP8 payload header whose P bit is 0 on
/// key frames. Only the start of partition 0 carries that header.
fn vp8_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut offset = 1;
    if extended {
        let Some(&ext) = payload.get(offset) else {
            return false;
        };
        offset += 1;
        if ext & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            offset += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(offset).is_some_and(|header| header & 0x01 == 0)
}

/// RFC 9628 §4.2, as [`super::vp9`] reads it.
fn vp9_keyframe(payload: &[u8]) -> bool {
    super::vp9::parse(payload).is_some_and(|descriptor| descriptor.keyframe())
}

/// RFC 6184: a keyframe starts with an IDR slice or carries an SPS, in a single NAL unit,
/// a STAP-A aggregate, or the first fragment of an FU-A.
fn h264_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1F {
        IDR | SPS => true,
        STAP_A => {
            let mut offset = 1;
            while offset + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[offset], payload[offset + 1]]));
                let Some(&nal) = payload.get(offset + 2) else {
                    return false;
                };
                if matches!(nal & 0x1F, IDR | SPS) {
                    return true;
                }
                offset += 2 + size;
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1F, IDR | SPS)),
        _ => false,
    }
}

/// AV1 RTP §4.4: the aggregation header's N bit marks the first packet of a coded video
/// sequence, which begins with a keyframe.
fn av1_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|header| header & 0x08 != 0)
}

/// An RFC 6464 audio level: whether the publisher's VAD flagged voice, and the level in
/// -dBov (0 is loudest, 127 silence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    /// The voice-activity flag.
    pub voice: bool,
    /// The level in -dBov.
    pub level: u8,
}

/// Where the primary (newest) block of a RED payload (RFC 2198 §3) starts, and its payload
/// type: a subscriber that did not negotiate RED gets just that block, as a plain packet
/// of the inner codec. `None` for a payload whose headers do not add up.
pub fn red_primary(payload: &[u8]) -> Option<(u8, usize)> {
    let mut at = 0;
    let mut redundant_bytes = 0usize;
    loop {
        let &first = payload.get(at)?;
        if first & 0x80 == 0 {
            // The last header: one byte, the primary block's payload type.
            let start = at + 1 + redundant_bytes;
            return (start <= payload.len()).then_some((first & 0x7F, start));
        }
        // A redundant block's header: F, PT (7), timestamp offset (14), length (10).
        let header = payload.get(at..at + 4)?;
        redundant_bytes += (usize::from(header[2] & 0x03) << 8) | usize::from(header[3]);
        at += 4;
    }
}

/// Parses the one-byte payload of the `ssrc-audio-level` header extension.
pub fn audio_level(extension: &[u8]) -> Option<AudioLevel> {
    let &byte = extension.first()?;
    Some(AudioLevel {
        voice: byte & 0x80 != 0,
        level: byte & 0x7F,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_families() {
        assert_eq!(CodecFamily::from_mime("video/VP8"), CodecFamily::Vp8);
        assert_eq!(CodecFamily::from_mime("video/h264"), CodecFamily::H264);
        assert_eq!(CodecFamily::from_mime("audio/opus"), CodecFamily::Opus);
        assert_eq!(CodecFamily::from_mime("video/AV1"), CodecFamily::Av1);
        assert_eq!(CodecFamily::from_mime("weird"), CodecFamily::Other);
        assert!(CodecFamily::Vp9.is_video());
        assert!(!CodecFamily::Opus.is_video());
    }

    #[test]
    fn vp8_keyframes() {
        // S=1, PID=0, no extension; payload header P=0 → keyframe.
        assert!(is_keyframe(
            CodecFamily::Vp8,
            &[0x10, 0x10, 0x02, 0x00, 0x9d]
        ));
        // Same with P=1 → interframe.
        assert!(!is_keyframe(CodecFamily::Vp8, &[0x10, 0x11]));
        // Continuation packet (S=0).
        assert!(!is_keyframe(CodecFamily::Vp8, &[0x00, 0x10]));
        // Extended descriptor with a 15-bit PictureID, TL0PICIDX and TID byte.
        assert!(is_keyframe(
            CodecFamily::Vp8,
            &[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x10]
        ));
        assert!(!is_keyframe(CodecFamily::Vp8, &[0x90, 0xE0, 0x81]));
        assert!(!is_keyframe(CodecFamily::Vp8, &[]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(is_keyframe(CodecFamily::H264, &[0x65, 0x88])); // IDR
        assert!(is_keyframe(CodecFamily::H264, &[0x67, 0x42])); // SPS
        assert!(!is_keyframe(CodecFamily::H264, &[0x41, 0x9a])); // non-IDR slice
        // STAP-A holding SPS then PPS.
        assert!(is_keyframe(
            CodecFamily::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
        ));
        // STAP-A whose size field lies.
        assert!(!is_keyframe(CodecFamily::H264, &[0x78, 0xFF, 0xFF]));
        // FU-A start of an IDR, and a middle fragment.
        assert!(is_keyframe(CodecFamily::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(CodecFamily::H264, &[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn vp9_and_av1_keyframes() {
        // B=1, P=0, no layers.
        assert!(is_keyframe(CodecFamily::Vp9, &[0x08]));
        // P=1.
        assert!(!is_keyframe(CodecFamily::Vp9, &[0x48]));
        // I=1 with 7-bit picture id, L=1 with SID=0 and TL0PICIDX (non-flexible); then
        // SID=1; then flexible mode, which has no TL0PICIDX.
        assert!(is_keyframe(CodecFamily::Vp9, &[0xA8, 0x05, 0x00, 0x07]));
        assert!(!is_keyframe(CodecFamily::Vp9, &[0xA8, 0x05, 0x02, 0x07]));
        assert!(is_keyframe(CodecFamily::Vp9, &[0xB8, 0x05, 0x00]));
        // Cut short before its TL0PICIDX: not read as anything.
        assert!(!is_keyframe(CodecFamily::Vp9, &[0xA8, 0x05, 0x00]));
        assert!(is_keyframe(CodecFamily::Av1, &[0x18]));
        assert!(!is_keyframe(CodecFamily::Av1, &[0x10]));
        assert!(!is_keyframe(CodecFamily::Opus, &[0xFF]));
    }

    #[test]
    fn red_primary_blocks() {
        // Primary only: a one-byte header (PT 111) then the frame.
        assert_eq!(red_primary(&[111, 0xAA, 0xBB]), Some((111, 1)));
        // One redundant block of 3 bytes (PT 111, offset 960), then the primary.
        let ts_offset: u16 = 960;
        let payload = [
            0x80 | 111,
            (ts_offset >> 6) as u8,
            ((ts_offset & 0x3F) << 2) as u8,
            3,
            111,
            1,
            2,
            3,
            0xAA,
            0xBB,
        ];
        assert_eq!(red_primary(&payload), Some((111, 8)));
        assert_eq!(&payload[8..], &[0xAA, 0xBB]);
        // Truncated headers or blocks longer than the payload are refused.
        assert_eq!(red_primary(&[]), None);
        assert_eq!(red_primary(&[0x80 | 111, 0, 0]), None);
        assert_eq!(red_primary(&[0x80 | 111, 0, 0, 200, 111, 1]), None);
        // An empty primary block is still well formed.
        assert_eq!(red_primary(&[111]), Some((111, 1)));
        assert_eq!(CodecFamily::from_mime("audio/red"), CodecFamily::Red);
        assert_eq!(CodecFamily::from_mime("video/red"), CodecFamily::Other);
    }

    #[test]
    fn audio_levels() {
        assert_eq!(
            audio_level(&[0x80 | 30]),
            Some(AudioLevel {
                voice: true,
                level: 30
            })
        );
        assert_eq!(audio_level(&[]), None);
    }
}
