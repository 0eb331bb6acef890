//! Per-subscriber rewriting of the VP8 and VP9 picture ID and TL0PICIDX.
//!
//! A receiver orders frames and finds their references by picture ID: libwebrtc derives
//! its frame ids from it and drops a frame whose id is not newer than one it has decoded.
//! Every simulcast layer numbers its pictures on its own, from a random start, so when the
//! shard moves a subscriber to another layer the ids jump, backwards about half the time.
//! Chromium then drops the new layer's keyframe as old and decodes the delta frames that
//! follow against the previous layer's pictures: the viewer sees a corrupt picture at the
//! old layer's size, until the next keyframe with a newer id, which may never come. (Found
//! by the broadcast browser test: a viewer who chose "low" and then "high" again kept
//! decoding 160-pixel frames for as long as it watched.)
//!
//! As the sequencer does for sequence numbers, every source switch starts a segment whose
//! offsets make its first picture follow the last one sent. The fields are patched in the
//! subscriber's copy of the packet, which the shard writes anyway before encrypting it; a
//! subscriber that never switched has zero offsets and nothing is patched.
//!
//! A picture the shard drops on purpose (a temporal layer the subscriber does not receive,
//! see [`super::temporal`]) starts a segment too: the pictures after it are numbered one
//! lower, so the subscriber sees no picture missing. Each segment remembers the source
//! picture it starts at, so a late or retransmitted packet of an earlier picture is
//! numbered as its picture was.

use super::codec::CodecFamily;
use std::collections::VecDeque;

/// Past segments remembered, so retransmissions of their packets are patched alike: with
/// every other picture dropped, 64 cover two seconds of a 30-frame stream, longer than a
/// packet is kept for retransmission.
const MAX_SEGMENTS: usize = 64;

/// Where the rewritable fields of one payload descriptor are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// Offset of the picture ID and whether it is the 15-bit form.
    picture_id: Option<(usize, bool)>,
    /// Offset of TL0PICIDX.
    tl0: Option<usize>,
}

/// RFC 7741 §4.2: the VP8 payload descriptor's optional extension byte says which of
/// PictureID, TL0PICIDX and TID/KEYIDX follow, in that order.
fn vp8_fields(payload: &[u8]) -> Option<Fields> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some(Fields {
            picture_id: None,
            tl0: None,
        });
    }
    let ext = *payload.get(1)?;
    let mut offset = 2;
    let mut fields = Fields {
        picture_id: None,
        tl0: None,
    };
    if ext & 0x80 != 0 {
        let long = *payload.get(offset)? & 0x80 != 0;
        fields.picture_id = Some((offset, long));
        offset += if long { 2 } else { 1 };
    }
    if ext & 0x40 != 0 {
        payload.get(offset)?;
        fields.tl0 = Some(offset);
    }
    if let Some((at, long)) = fields.picture_id {
        payload.get(at + usize::from(long))?;
    }
    Some(fields)
}

/// RFC 9628 §4.2: the picture ID follows the first byte when I is set; in non-flexible
/// mode (F clear) with layer indices (L set), TL0PICIDX follows the layer-index byte.
fn vp9_fields(payload: &[u8]) -> Option<Fields> {
    let first = *payload.first()?;
    let mut offset = 1;
    let mut fields = Fields {
        picture_id: None,
        tl0: None,
    };
    if first & 0x80 != 0 {
        let long = *payload.get(offset)? & 0x80 != 0;
        payload.get(offset + usize::from(long))?;
        fields.picture_id = Some((offset, long));
        offset += if long { 2 } else { 1 };
    }
    let layers = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    if layers && !flexible {
        offset += 1;
        payload.get(offset)?;
        fields.tl0 = Some(offset);
    }
    Some(fields)
}

fn read_picture_id(payload: &[u8], (at, long): (usize, bool)) -> Option<u16> {
    if long {
        let high = u16::from(*payload.get(at)? & 0x7f);
        Some(high << 8 | u16::from(*payload.get(at + 1)?))
    } else {
        Some(u16::from(*payload.get(at)? & 0x7f))
    }
}

fn write_picture_id(payload: &mut [u8], (at, long): (usize, bool), id: u16) {
    if long {
        if let Some(high) = payload.get_mut(at) {
            *high = 0x80 | ((id >> 8) as u8 & 0x7f);
        }
        if let Some(low) = payload.get_mut(at + 1) {
            *low = id as u8;
        }
    } else if let Some(byte) = payload.get_mut(at) {
        *byte = id as u8 & 0x7f;
    }
}

/// Offsets are kept in the 15-bit space; a 7-bit picture ID is continued modulo 128,
/// which 2^15 is a multiple of.
const PICTURE_ID_MASK: u16 = 0x7fff;

/// Whether picture `a` is newer than `b` in a space of `mask + 1` IDs: the stream's own
/// width (15 bits from browsers, 7 from some encoders), or a 7-bit stream would never
/// again read as newer once it wrapped past 127.
fn picture_id_newer(a: u16, b: u16, mask: u16) -> bool {
    let ahead = a.wrapping_sub(b) & mask;
    ahead != 0 && ahead <= mask >> 1
}

/// The offsets of one run of packets from a single source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    source_ssrc: u32,
    /// The source picture ID it starts at, when the stream has them.
    first_picture: Option<u16>,
    picture_id: u16,
    tl0: u8,
}

/// How far `id` lies behind `newest`, in a space of `mask + 1` IDs.
fn behind(newest: u16, id: u16, mask: u16) -> u16 {
    newest.wrapping_sub(id) & mask
}

/// Pictures further back than a quarter of the ID space are taken as a segment's start
/// being out of reach: only a late packet of the last second or two is ever looked up
/// (of a 15-bit stream; a 7-bit one wraps every four seconds and is judged as well as it
/// can be), and a segment that began longer ago holds every one of them.
fn reach(mask: u16) -> u16 {
    mask / 4 + 1
}

/// The mask of a picture ID field's width.
fn width_mask(long: bool) -> u16 {
    if long { PICTURE_ID_MASK } else { 0x7f }
}

/// Rewrites the picture IDs of one outgoing video stream.
#[derive(Debug)]
pub struct PictureIds {
    family: CodecFamily,
    segments: VecDeque<Segment>,
    /// Newest picture ID and TL0PICIDX sent.
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
    /// The newest source picture forwarded or dropped, of the newest segment's source:
    /// what late packets are measured from.
    newest_source: Option<u16>,
    /// The picture ID space of the stream's newest packet (see [`picture_id_newer`]).
    mask: u16,
    /// The stream resumes after a pause: the next packet starts a segment even from the
    /// same source.
    resuming: bool,
}

impl PictureIds {
    /// A rewriter for a stream of `family` (only VP8 and VP9 carry picture IDs; any other
    /// codec passes through untouched).
    pub fn new(family: CodecFamily) -> Self {
        Self {
            family,
            segments: VecDeque::new(),
            last_picture_id: None,
            last_tl0: None,
            newest_source: None,
            mask: PICTURE_ID_MASK,
            resuming: false,
        }
    }

    fn fields(&self, payload: &[u8]) -> Option<Fields> {
        match self.family {
            CodecFamily::Vp8 => vp8_fields(payload),
            CodecFamily::Vp9 => vp9_fields(payload),
            _ => None,
        }
    }

    /// Patches the subscriber's copy of a payload of source `ssrc`, which the downtrack
    /// decided to forward. A packet from another source than the last starts a segment.
    pub fn forward(&mut self, ssrc: u32, payload: &mut [u8]) {
        let Some(fields) = self.fields(payload) else {
            return;
        };
        let picture_id = fields
            .picture_id
            .and_then(|at| read_picture_id(payload, at));
        let tl0 = fields.tl0.and_then(|at| payload.get(at).copied());
        if let Some((_, long)) = fields.picture_id {
            self.mask = width_mask(long);
        }
        let mask = self.mask;
        if std::mem::take(&mut self.resuming)
            || self.segments.back().is_none_or(|s| s.source_ssrc != ssrc)
        {
            self.newest_source = None;
            let segment = Segment {
                source_ssrc: ssrc,
                first_picture: picture_id,
                picture_id: match (self.last_picture_id, picture_id) {
                    (Some(last), Some(first)) => {
                        last.wrapping_add(1).wrapping_sub(first) & PICTURE_ID_MASK
                    }
                    _ => 0,
                },
                tl0: match (self.last_tl0, tl0) {
                    (Some(last), Some(first)) => last.wrapping_add(1).wrapping_sub(first),
                    _ => 0,
                },
            };
            self.push(segment);
        }
        let Some(segment) = self.segment_of(ssrc, picture_id) else {
            return;
        };
        if let Some(id) = picture_id
            && self
                .newest_source
                .is_none_or(|newest| picture_id_newer(id, newest, mask))
        {
            self.newest_source = Some(id);
        }
        if let Some(id) = picture_id {
            let out = id.wrapping_add(segment.picture_id) & PICTURE_ID_MASK;
            if self
                .last_picture_id
                .is_none_or(|last| picture_id_newer(out, last, mask))
            {
                self.last_picture_id = Some(out);
            }
        }
        if let Some(index) = tl0 {
            let out = index.wrapping_add(segment.tl0);
            if self
                .last_tl0
                .is_none_or(|last| out != last && out.wrapping_sub(last) < 0x80)
            {
                self.last_tl0 = Some(out);
            }
        }
        patch(payload, fields, segment)
    }

    /// The codec family whose picture ids it rewrites.
    pub fn family(&self) -> CodecFamily {
        self.family
    }

    /// The stream resumes after a pause (the downtrack's [`super::downtrack::Decision`]
    /// says so): its next picture follows the last one sent, as after a switch, however
    /// many pictures the source numbered meanwhile. Call before [`Self::forward`].
    pub fn resume(&mut self) {
        self.resuming = true;
    }

    /// A payload of source `ssrc` that the downtrack dropped on purpose: the pictures
    /// after its picture are numbered one lower from now on. Every packet of the picture
    /// may be passed; it counts once. VP8 only: a VP9 picture names its references as
    /// differences back from its own ID (flexible mode) or by its place in a group of
    /// pictures (non-flexible), and renumbering would point both at the wrong pictures;
    /// its receiver reads a gap left by a dropped temporal layer as it should.
    pub fn drop_picture(&mut self, ssrc: u32, payload: &[u8]) {
        if self.family != CodecFamily::Vp8 {
            return;
        }
        let Some(at) = self.fields(payload).and_then(|fields| fields.picture_id) else {
            return;
        };
        let Some(id) = read_picture_id(payload, at) else {
            return;
        };
        self.mask = width_mask(at.1);
        let mask = self.mask;
        let Some(current) = self.segments.back().copied() else {
            return; // nothing sent yet: there is no numbering to keep continuous
        };
        // Only a picture newer than any sent or dropped: an older one's place is settled
        // (the pictures after it went out already), and each packet of one picture counts
        // once.
        if current.source_ssrc != ssrc
            || self
                .newest_source
                .is_some_and(|newest| !picture_id_newer(id, newest, mask))
        {
            return;
        }
        self.newest_source = Some(id);
        self.push(Segment {
            first_picture: Some(id.wrapping_add(1) & PICTURE_ID_MASK),
            picture_id: current.picture_id.wrapping_sub(1) & PICTURE_ID_MASK,
            ..current
        });
    }

    /// Patches the copy of a retransmitted payload of source `ssrc` like the original was.
    pub fn retransmission(&self, ssrc: u32, payload: &mut [u8]) {
        let Some(fields) = self.fields(payload) else {
            return;
        };
        let picture_id = fields
            .picture_id
            .and_then(|at| read_picture_id(payload, at));
        if let Some(segment) = self.segment_of(ssrc, picture_id) {
            patch(payload, fields, segment);
        }
    }

    fn push(&mut self, segment: Segment) {
        if self.segments.len() == MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.segments.push_back(segment);
    }

    /// The segment a picture of source `ssrc` belongs to: the newest of that source that
    /// starts at or before it (the current one, but for late packets). Distances are
    /// measured back from the newest picture, so a stream numbered past the 15-bit wrap
    /// long ago still finds its segment.
    fn segment_of(&self, ssrc: u32, picture_id: Option<u16>) -> Option<Segment> {
        let back = self.segments.back().copied()?;
        let late = match (back.source_ssrc == ssrc, picture_id, self.newest_source) {
            (true, Some(id), Some(newest)) if picture_id_newer(newest, id, self.mask) => {
                Some((id, newest))
            }
            (true, _, _) => return Some(back),
            (false, _, _) => None,
        };
        self.segments
            .iter()
            .rev()
            .find(|s| {
                s.source_ssrc == ssrc
                    && match (late, s.first_picture) {
                        (Some((id, newest)), Some(first)) => {
                            let start = behind(newest, first, self.mask);
                            start >= reach(self.mask) || behind(newest, id, self.mask) <= start
                        }
                        _ => true,
                    }
            })
            .or_else(|| self.segments.iter().find(|s| s.source_ssrc == ssrc))
            .copied()
    }
}

/// Applies a segment's offsets; a zero offset costs nothing.
fn patch(payload: &mut [u8], fields: Fields, segment: Segment) {
    if let Some(at) = fields.picture_id.filter(|_| segment.picture_id != 0)
        && let Some(id) = read_picture_id(payload, at)
    {
        let mask = width_mask(at.1);
        write_picture_id(payload, at, id.wrapping_add(segment.picture_id) & mask);
    }
    if let Some(at) = fields.tl0.filter(|_| segment.tl0 != 0)
        && let Some(byte) = payload.get_mut(at)
    {
        *byte = byte.wrapping_add(segment.tl0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// What `ids` makes of a forwarded payload: a patched copy.
    fn forward(ids: &mut PictureIds, ssrc: u32, payload: Bytes) -> Bytes {
        let mut copy = payload.to_vec();
        ids.forward(ssrc, &mut copy);
        copy.into()
    }

    fn resend(ids: &PictureIds, ssrc: u32, payload: Bytes) -> Bytes {
        let mut copy = payload.to_vec();
        ids.retransmission(ssrc, &mut copy);
        copy.into()
    }

    /// A VP8 payload with a 15-bit picture ID and TL0PICIDX, then one byte of frame data.
    fn vp8(picture_id: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![
            0x90, // X, S
            0xC0, // I, L
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x00,
        ])
    }

    fn vp8_ids(payload: &[u8]) -> (u16, u8) {
        let fields = vp8_fields(payload).unwrap();
        (
            read_picture_id(payload, fields.picture_id.unwrap()).unwrap(),
            payload[fields.tl0.unwrap()],
        )
    }

    #[test]
    fn a_stream_that_never_switches_passes_through_unchanged() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        let packet = vp8(1000, 7);
        assert_eq!(forward(&mut ids, 1, packet.clone()), packet);
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(1001, 8))), (1001, 8));
    }

    #[test]
    fn a_switch_continues_from_the_last_picture_sent() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(20_000, 100));
        forward(&mut ids, 1, vp8(20_001, 101));
        // The other layer numbers its pictures from far behind.
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(300, 5))), (20_002, 102));
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(301, 6))), (20_003, 103));
        // Back to the first layer: still moving forward.
        assert_eq!(
            vp8_ids(&forward(&mut ids, 1, vp8(20_050, 130))),
            (20_004, 104)
        );
    }

    #[test]
    fn picture_ids_wrap_in_fifteen_bits() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(0x7fff, 255));
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(10, 3))), (0, 0));
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(11, 4))), (1, 1));
    }

    #[test]
    fn retransmissions_are_patched_like_their_segment() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(5000, 1));
        forward(&mut ids, 2, vp8(100, 9));
        let resent = resend(&ids, 2, vp8(100, 9));
        assert_eq!(vp8_ids(&resent), (5001, 2));
        // The first segment had no offset.
        assert_eq!(vp8_ids(&resend(&ids, 1, vp8(5000, 1))), (5000, 1));
        assert_eq!(resend(&ids, 3, vp8(7, 7)), vp8(7, 7));
    }

    #[test]
    fn pictures_after_a_dropped_one_close_the_gap() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(100, 10))), (100, 10));
        // Picture 101 (a TL2 frame, two packets) is dropped; 102 (TL1) follows 100.
        ids.drop_picture(1, &vp8(101, 10));
        ids.drop_picture(1, &vp8(101, 10));
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(102, 10))), (101, 10));
        ids.drop_picture(1, &vp8(103, 10));
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(104, 11))), (102, 11));
        // A late packet of picture 102, and a retransmission of 100 and of 104: each as
        // its picture was numbered.
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(102, 10))), (101, 10));
        assert_eq!(vp8_ids(&resend(&ids, 1, vp8(100, 10))), (100, 10));
        assert_eq!(vp8_ids(&resend(&ids, 1, vp8(104, 11))), (102, 11));
        // A switch to another layer continues from the last picture sent.
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(7000, 50))), (103, 12));
        // A drop of the layer no longer forwarded changes nothing.
        ids.drop_picture(1, &vp8(105, 11));
        assert_eq!(vp8_ids(&forward(&mut ids, 2, vp8(7001, 50))), (104, 12));
    }

    #[test]
    fn drops_after_a_long_steady_run_still_close_the_gap() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(5, 1));
        // Another layer for far longer than half the 15-bit space (about 18 minutes).
        let mut id = 100u16;
        let mut sent = 0;
        for _ in 0..20_000 {
            sent = vp8_ids(&forward(&mut ids, 2, vp8(id, 0))).0;
            id = (id + 1) & PICTURE_ID_MASK;
        }
        // The next picture is dropped; the one after it follows the last one sent.
        ids.drop_picture(2, &vp8(id, 0));
        let after = vp8_ids(&forward(&mut ids, 2, vp8((id + 1) & PICTURE_ID_MASK, 0))).0;
        assert_eq!(after, (sent + 1) & PICTURE_ID_MASK);
        // A late packet of the picture before the drop keeps its number.
        let late = (id + PICTURE_ID_MASK) & PICTURE_ID_MASK;
        assert_eq!(vp8_ids(&resend(&ids, 2, vp8(late, 0))).0, sent);
    }

    #[test]
    fn a_stream_resumed_after_a_pause_follows_the_last_picture_sent() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(100, 10));
        ids.drop_picture(1, &vp8(101, 10));
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(102, 11))), (101, 11));
        // Paused for twelve minutes at 30 pictures a second: the source numbered on by
        // 21,600 (more than half the 15-bit space), and TL0PICIDX by 5,400.
        let later = (102 + 21_600) & PICTURE_ID_MASK;
        ids.resume();
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(later, 60))), (102, 12));
        // Dropping still closes up from there.
        ids.drop_picture(1, &vp8(later + 1, 60));
        assert_eq!(
            vp8_ids(&forward(&mut ids, 1, vp8(later + 2, 61))),
            (103, 13)
        );
    }

    #[test]
    fn a_late_picture_cannot_renumber_pictures_already_sent() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        forward(&mut ids, 1, vp8(100, 1));
        forward(&mut ids, 1, vp8(102, 1));
        // 101 was lost upstream; its packets come late and are dropped for their layer.
        ids.drop_picture(1, &vp8(101, 1));
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(103, 1))).0, 103);
    }

    #[test]
    fn seven_bit_picture_ids_keep_closing_up_across_their_wrap() {
        // X, S; I with a 7-bit picture ID; then a byte of frame data.
        let short = |id: u16| Bytes::from(vec![0x90, 0x80, id as u8 & 0x7f, 0x00]);
        let id_of = |payload: &[u8]| u16::from(payload[2]);
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        let mut expected = 10u16;
        assert_eq!(id_of(&forward(&mut ids, 1, short(10))), 10);
        // Every other picture dropped, for three wraps of the 7-bit space.
        let mut source = 11u16;
        for _ in 0..200 {
            ids.drop_picture(1, &short(source));
            let out = forward(&mut ids, 1, short(source + 1));
            expected = (expected + 1) & 0x7f;
            assert_eq!(id_of(&out), expected, "source picture {}", source + 1);
            source += 2;
        }
    }

    #[test]
    fn a_dropped_picture_before_anything_was_sent_changes_nothing() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        ids.drop_picture(1, &vp8(99, 10));
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(100, 10))), (100, 10));
        // Nor does one older than the segment, or without a picture ID.
        ids.drop_picture(1, &vp8(50, 10));
        ids.drop_picture(1, &[0x10, 0x00]);
        assert_eq!(vp8_ids(&forward(&mut ids, 1, vp8(101, 10))), (101, 10));
    }

    #[test]
    fn short_picture_ids_and_missing_fields_are_handled() {
        let mut ids = PictureIds::new(CodecFamily::Vp8);
        // 7-bit picture ID, no TL0PICIDX.
        forward(&mut ids, 1, Bytes::from_static(&[0x90, 0x80, 0x05, 0x00]));
        let out = forward(&mut ids, 2, Bytes::from_static(&[0x90, 0x80, 0x7e, 0x00]));
        assert_eq!(&out[..], &[0x90, 0x80, 0x06, 0x00]);
        // No extension at all, and truncated descriptors: forwarded unchanged.
        for payload in [
            &[0x10, 0x00][..],
            &[0x90][..],
            &[0x90, 0x80, 0x85][..],
            &[][..],
        ] {
            let payload = Bytes::copy_from_slice(payload);
            assert_eq!(forward(&mut ids, 3, payload.clone()), payload);
        }
    }

    #[test]
    fn vp9_picture_id_and_tl0_are_rewritten() {
        // I, L, B (non-flexible); picture ID 15-bit; layer indices; TL0PICIDX.
        let vp9 = |id: u16, tl0: u8| {
            Bytes::from(vec![
                0xA8,
                0x80 | (id >> 8) as u8,
                id as u8,
                0x00,
                tl0,
                0x00,
            ])
        };
        let mut ids = PictureIds::new(CodecFamily::Vp9);
        forward(&mut ids, 1, vp9(9000, 50));
        let out = forward(&mut ids, 2, vp9(12, 3));
        let fields = vp9_fields(&out).unwrap();
        assert_eq!(
            read_picture_id(&out, fields.picture_id.unwrap()),
            Some(9001)
        );
        assert_eq!(out[fields.tl0.unwrap()], 51);
    }

    #[test]
    fn vp9_pictures_keep_their_ids_over_a_dropped_picture() {
        // I, P, L, F, B (flexible): picture ID 15-bit, layer indices, one P_DIFF of 1.
        let vp9 = |id: u16| {
            Bytes::from(vec![
                0xF8,
                0x80 | (id >> 8) as u8,
                id as u8,
                0x00,
                0x02,
                0x00,
            ])
        };
        let mut ids = PictureIds::new(CodecFamily::Vp9);
        forward(&mut ids, 1, vp9(500));
        ids.drop_picture(1, &vp9(501));
        // Its reference is 502 - 1 = 501, which was left out on purpose: renumbering it
        // to 501 would point it at 500 instead.
        let out = forward(&mut ids, 1, vp9(502));
        assert_eq!(out, vp9(502));
    }

    #[test]
    fn other_codecs_pass_through() {
        let mut ids = PictureIds::new(CodecFamily::H264);
        let packet = Bytes::from_static(&[0x90, 0xC0, 0x81, 0x00, 0x05, 0x00]);
        forward(&mut ids, 1, packet.clone());
        assert_eq!(forward(&mut ids, 2, packet.clone()), packet);
    }
}
