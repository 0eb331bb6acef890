//! Temporal layers: sending a subscriber fewer frames of the layer it receives.
//!
//! A browser encodes each VP8 simulcast layer in three temporal layers (L1T3): every
//! second frame is on TL2, which nothing references, every fourth on TL1, and the rest on
//! TL0. Dropping TL2 halves the frame rate and takes roughly half the bits away; dropping
//! TL1 as well leaves a quarter of the frames. Unlike a move to a lower simulcast layer,
//! this needs no keyframe and takes effect at the next frame: the first, smooth step down
//! for a subscriber whose downlink falls short, and video at a lower frame rate where the
//! lowest layer at full rate no longer fits.
//!
//! Coming back up is safe only at a frame that references nothing above the layers the
//! subscriber has: a *layer sync* frame (the descriptor's Y bit) one layer up, or a
//! keyframe. The filter rises one layer per sync frame.
//!
//! VP9 in flexible mode (Chromium's since M129) says no more than that every frame may
//! start a layer (U is set on all of them), but names the pictures each frame references
//! ([`super::vp9`]): a subscriber moves up one layer at a frame of it all of whose
//! references it was sent. In non-flexible mode its U bit plays VP8's Y.
//!
//! A dropped VP8 frame leaves a gap in the picture IDs the subscriber receives, and
//! libwebrtc holds back any TL1 frame until every picture ID since its reference has
//! arrived; the shard therefore renumbers the pictures after a dropped one
//! ([`super::picture_id`]). A VP9 receiver reads references as differences of picture IDs,
//! so there the gap stays. Both close the sequence numbers' gap ([`super::sequencer`]).

use super::rate::RateMeter;
use std::time::Instant;

/// The temporal cap that lets every layer through.
pub const ALL_TEMPORAL: u8 = u8::MAX;

/// The temporal layers a browser's VP8 simulcast layer carries (L1T3).
pub const TEMPORAL_LAYERS: usize = 3;

/// What a packet's payload descriptor says of its frame's temporal layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalInfo {
    /// The temporal layer index (TID).
    pub tid: u8,
    /// The frame may be the first of its layer a subscriber receives: VP8's layer sync (Y),
    /// or the U bit of VP9 in non-flexible mode.
    pub sync: bool,
    /// The packet starts the frame (VP8: S set, partition 0; VP9: B at the base spatial
    /// layer).
    pub frame_start: bool,
    /// VP9 in flexible mode: the picture and those it references, which decide instead of
    /// `sync`.
    pub references: Option<References>,
}

/// A picture's ID and the IDs of the pictures it references: VP9's P_DIFFs, back from it
/// in the ID's own width, or the frame numbers of an AV1 dependency descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct References {
    picture: u16,
    mask: u16,
    diffs: [u16; MAX_REFERENCES],
    count: u8,
}

/// References one picture may name: more than a VP9 descriptor may carry (three), as many
/// as the dependency descriptor reader accepts.
const MAX_REFERENCES: usize = 4;

impl References {
    /// VP9 picture `picture` (15 bits when `long`, else 7) referencing those `diffs` back.
    pub fn new(picture: u16, long: bool, diffs: &[u8]) -> Self {
        let mask = if long { 0x7fff } else { 0x7f };
        Self::with_mask(picture, mask, diffs.iter().map(|&diff| u16::from(diff)))
    }

    /// AV1 frame number `frame` (16 bits) referencing the frames `diffs` back.
    pub fn frames(frame: u16, diffs: &[u16]) -> Self {
        Self::with_mask(frame, u16::MAX, diffs.iter().copied())
    }

    fn with_mask(picture: u16, mask: u16, diffs: impl Iterator<Item = u16>) -> Self {
        let mut kept = [0u16; MAX_REFERENCES];
        let mut count = 0;
        for (slot, diff) in kept.iter_mut().zip(diffs) {
            *slot = diff;
            count += 1;
        }
        Self {
            picture: picture & mask,
            mask,
            diffs: kept,
            count,
        }
    }

    /// The picture's own ID.
    pub fn picture(&self) -> u16 {
        self.picture
    }

    /// The IDs of the pictures it references.
    pub fn pictures(&self) -> impl Iterator<Item = u16> + '_ {
        self.diffs[..usize::from(self.count)]
            .iter()
            .map(|&diff| self.picture.wrapping_sub(diff) & self.mask)
    }
}

/// Pictures sent to one subscriber lately: enough to know whether a VP9 picture's
/// references (a few pictures back in a browser's L1T3 pattern) all reached it. One not
/// found counts as not sent, which only delays a move up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SentPictures {
    ids: [u16; 16],
    len: u8,
    next: u8,
}

impl SentPictures {
    fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
    }

    fn push(&mut self, id: u16) {
        self.ids[usize::from(self.next)] = id;
        self.next = (self.next + 1) % self.ids.len() as u8;
        self.len = (self.len + 1).min(self.ids.len() as u8);
    }

    fn contains(&self, id: u16) -> bool {
        self.ids[..usize::from(self.len)].contains(&id)
    }
}

/// RFC 7741 §4.2: the TID and Y bits, present when the extension byte's T bit is set.
/// `None` for a packet without them (a stream with one temporal layer, or malformed).
pub fn vp8_temporal(payload: &[u8]) -> Option<TemporalInfo> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let ext = *payload.get(1)?;
    if ext & 0x20 == 0 {
        return None;
    }
    let mut offset = 2;
    if ext & 0x80 != 0 {
        offset += if *payload.get(offset)? & 0x80 != 0 {
            2
        } else {
            1
        };
    }
    if ext & 0x40 != 0 {
        offset += 1;
    }
    let byte = *payload.get(offset)?;
    Some(TemporalInfo {
        tid: byte >> 6,
        sync: byte & 0x20 != 0,
        frame_start: first & 0x10 != 0 && first & 0x07 == 0,
        references: None,
    })
}

/// Which temporal layers of the layer it forwards one subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalFilter {
    /// The highest temporal layer the subscriber is to receive.
    target: u8,
    /// The highest it receives now: above the target only until the next frame, below it
    /// until a frame the subscriber can decode from what it has.
    current: u8,
    /// VP9 in flexible mode: the pictures sent since the last keyframe.
    sent: SentPictures,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        Self {
            target: ALL_TEMPORAL,
            current: ALL_TEMPORAL,
            sent: SentPictures::default(),
        }
    }
}

impl TemporalFilter {
    /// Sets the highest temporal layer to send ([`ALL_TEMPORAL`] for all). Going down
    /// takes effect at the next frame; going up at a frame that allows it.
    pub fn set_target(&mut self, target: u8) {
        self.target = target;
    }

    /// The highest temporal layer to send.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// The highest temporal layer sent now ([`ALL_TEMPORAL`] once every layer of an L1T3
    /// stream is, with nothing capped).
    pub fn current(&self) -> u8 {
        self.current
    }

    /// Whether a packet of the forwarded layer goes to the subscriber. A packet without
    /// temporal information always does.
    pub fn forward(&mut self, info: Option<TemporalInfo>, keyframe: bool) -> bool {
        let Some(info) = info else {
            return true;
        };
        if info.frame_start {
            if keyframe {
                self.sent.clear();
            }
            let sync = match info.references {
                Some(references) => references.pictures().all(|id| self.sent.contains(id)),
                None => info.sync,
            };
            if keyframe || self.target <= self.current {
                self.current = self.target;
            } else if sync && self.current.checked_add(1) == Some(info.tid) {
                // Back at the top of a browser's three layers, uncapped: all of them, as
                // before the cap (a fourth layer, which browsers do not send, would need a
                // keyframe).
                self.current = if usize::from(info.tid) + 1 >= TEMPORAL_LAYERS {
                    self.target
                } else {
                    info.tid
                };
            }
        }
        let sent = info.tid <= self.current;
        if sent
            && info.frame_start
            && let Some(references) = info.references
        {
            self.sent.push(references.picture());
        }
        sent
    }
}

/// What each temporal layer of a layer brings in: what the layer costs a subscriber
/// receiving it up to a given temporal layer.
#[derive(Debug, Default, Clone)]
pub struct TemporalRates {
    meters: [RateMeter; TEMPORAL_LAYERS],
}

impl TemporalRates {
    /// `bytes` of temporal layer `tid` arrived at `now` (a TID beyond three is counted
    /// as the top layer: nobody would receive it without the rest).
    pub fn add(&mut self, now: Instant, tid: u8, bytes: usize) {
        let index = usize::from(tid).min(TEMPORAL_LAYERS - 1);
        self.meters[index].add(now, bytes);
    }

    /// The layer's rate up to temporal layer `tid`, for each `tid` below the highest one
    /// that flows (which is the whole layer): `(tid, bps)`, lowest first. Empty for a layer
    /// without temporal layers. A temporal layer counts what it brought in while it last
    /// flowed: one just resumed reads as silent for its first second, and would otherwise
    /// vanish from the offers, or make the ones below it look cheaper than they are.
    pub fn partial(&self) -> impl Iterator<Item = (u8, f64)> + '_ {
        let cost = |meter: &RateMeter| meter.bps().max(meter.flowing_bps().unwrap_or(0.0));
        let top = self.meters.iter().rposition(|m| cost(m) > 0.0).unwrap_or(0);
        let mut sum = 0.0;
        self.meters[..top]
            .iter()
            .enumerate()
            .map(move |(tid, meter)| {
                sum += cost(meter);
                (tid as u8, sum)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 descriptor with a 15-bit picture ID, TL0PICIDX and the TID/Y byte.
    fn vp8(picture_id: u16, tl0: u8, tid: u8, sync: bool, start: bool) -> Vec<u8> {
        vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            tid << 6 | if sync { 0x20 } else { 0 },
            0x01, // an interframe's payload header
        ]
    }

    fn info(tid: u8, sync: bool) -> Option<TemporalInfo> {
        Some(TemporalInfo {
            tid,
            sync,
            frame_start: true,
            references: None,
        })
    }

    #[test]
    fn the_descriptor_gives_tid_sync_and_frame_start() {
        assert_eq!(
            vp8_temporal(&vp8(300, 7, 2, true, true)),
            Some(TemporalInfo {
                tid: 2,
                sync: true,
                frame_start: true,
                references: None,
            })
        );
        assert_eq!(
            vp8_temporal(&vp8(300, 7, 1, false, false)),
            Some(TemporalInfo {
                tid: 1,
                sync: false,
                frame_start: false,
                references: None,
            })
        );
        // A 7-bit picture ID and no TL0PICIDX: T|K only.
        assert_eq!(
            vp8_temporal(&[0x90, 0xa0, 0x05, 0x40]).map(|i| i.tid),
            Some(1)
        );
        // No T bit, no extension, or cut short: nothing to go by.
        assert_eq!(vp8_temporal(&[0x90, 0xc0, 0x85, 0x01, 0x07]), None);
        assert_eq!(vp8_temporal(&[0x10, 0x00]), None);
        assert_eq!(vp8_temporal(&[0x90, 0xe0, 0x81]), None);
        assert_eq!(vp8_temporal(&[]), None);
    }

    #[test]
    fn going_down_takes_effect_at_the_next_frame() {
        let mut filter = TemporalFilter::default();
        assert!(filter.forward(info(2, false), false));
        filter.set_target(0);
        // The rest of a frame already started is not cut.
        let rest = Some(TemporalInfo {
            tid: 2,
            sync: false,
            frame_start: false,
            references: None,
        });
        assert!(filter.forward(rest, false));
        assert!(filter.forward(info(0, false), false));
        assert!(!filter.forward(info(2, false), false));
        assert!(!filter.forward(rest, false));
        assert!(!filter.forward(info(1, false), false));
        assert_eq!(filter.current(), 0);
    }

    #[test]
    fn going_up_waits_for_a_sync_frame_one_layer_up() {
        let mut filter = TemporalFilter::default();
        filter.set_target(0);
        assert!(filter.forward(info(0, false), false));
        filter.set_target(ALL_TEMPORAL);
        // Not a sync frame, or a sync frame two layers up: TL1 frames after it would
        // reference TL1 frames the subscriber never got.
        assert!(!filter.forward(info(1, false), false));
        assert!(!filter.forward(info(2, true), false));
        assert!(filter.forward(info(1, true), false));
        assert_eq!(filter.current(), 1);
        assert!(filter.forward(info(1, false), false));
        assert!(!filter.forward(info(2, false), false));
        assert!(filter.forward(info(2, true), false));
        assert!(filter.forward(info(2, false), false));
        // Every layer again: reported as uncapped, as the allocation needs to see it.
        assert_eq!(filter.current(), ALL_TEMPORAL);
    }

    #[test]
    fn a_keyframe_opens_every_layer_up_to_the_target() {
        let mut filter = TemporalFilter::default();
        filter.set_target(0);
        assert!(filter.forward(info(0, false), false));
        filter.set_target(1);
        assert!(filter.forward(info(0, false), true));
        assert!(filter.forward(info(1, false), false));
        assert!(!filter.forward(info(2, true), false));
    }

    /// The start of a VP9 picture in flexible mode: `picture` referencing `refs`.
    fn vp9(tid: u8, picture: u16, refs: &[u16]) -> Option<TemporalInfo> {
        let diffs: Vec<u8> = refs.iter().map(|r| (picture - r) as u8).collect();
        Some(TemporalInfo {
            tid,
            sync: false,
            frame_start: true,
            references: Some(References::new(picture, true, &diffs)),
        })
    }

    #[test]
    fn vp9_moves_up_at_a_frame_whose_references_were_all_sent() {
        let mut filter = TemporalFilter::default();
        filter.set_target(0);
        // Chromium's L1T3: TL0 references the last TL0, TL1 the TL0, the first TL2 the
        // TL0 and the second TL2 the TL1.
        assert!(filter.forward(vp9(0, 100, &[]), true));
        assert!(!filter.forward(vp9(2, 101, &[100]), false));
        assert!(!filter.forward(vp9(1, 102, &[100]), false));
        assert!(!filter.forward(vp9(2, 103, &[102]), false));
        assert!(filter.forward(vp9(0, 104, &[100]), false));
        filter.set_target(ALL_TEMPORAL);
        // Two layers up: not yet, whatever it references.
        assert!(!filter.forward(vp9(2, 105, &[104]), false));
        // A TL1 frame that also references the TL1 picture the subscriber was not sent
        // (a long-term reference) cannot be decoded: wait.
        assert!(!filter.forward(vp9(1, 106, &[104, 102]), false));
        assert!(!filter.forward(vp9(2, 107, &[106]), false));
        assert!(filter.forward(vp9(0, 108, &[104]), false));
        assert!(!filter.forward(vp9(2, 109, &[108]), false));
        // Every reference sent: up one layer, and the TL2 after it, which references it.
        assert!(filter.forward(vp9(1, 110, &[108]), false));
        assert_eq!(filter.current(), 1);
        assert!(filter.forward(vp9(2, 111, &[110]), false));
        assert_eq!(filter.current(), ALL_TEMPORAL);
    }

    #[test]
    fn vp9_waits_when_the_frame_it_would_build_on_was_left_out() {
        let mut filter = TemporalFilter::default();
        filter.set_target(0);
        assert!(filter.forward(vp9(0, 200, &[]), true));
        assert!(!filter.forward(vp9(1, 202, &[200]), false));
        assert!(filter.forward(vp9(0, 204, &[200]), false));
        filter.set_target(ALL_TEMPORAL);
        assert!(filter.forward(vp9(1, 206, &[204]), false));
        assert_eq!(filter.current(), 1);
        // TL2 building on the TL1 picture 202, which was left out: not this one.
        assert!(!filter.forward(vp9(2, 207, &[202]), false));
        assert_eq!(filter.current(), 1);
        assert!(filter.forward(vp9(0, 208, &[204]), false));
        assert!(filter.forward(vp9(2, 209, &[208]), false));
        assert_eq!(filter.current(), ALL_TEMPORAL);
        // A keyframe forgets the pictures before it: nothing after it may build on them.
        filter.set_target(0);
        assert!(filter.forward(vp9(0, 300, &[]), true));
        filter.set_target(ALL_TEMPORAL);
        assert!(!filter.forward(vp9(1, 302, &[208]), false));
        assert!(filter.forward(vp9(1, 304, &[300]), false));
    }

    #[test]
    fn partial_rates_add_up_the_temporal_layers_below_the_top() {
        let t0 = Instant::now();
        let mut rates = TemporalRates::default();
        assert_eq!(rates.partial().count(), 0);
        for frame in 0..60u32 {
            let at = t0 + std::time::Duration::from_millis(u64::from(frame) * 33);
            let tid = match frame % 4 {
                0 => 0,
                2 => 1,
                _ => 2,
            };
            rates.add(at, tid, 1000);
        }
        let partial: Vec<(u8, f64)> = rates.partial().collect();
        assert_eq!(partial.len(), 2, "{partial:?}");
        let (tl0, tl01) = (partial[0], partial[1]);
        assert_eq!((tl0.0, tl01.0), (0, 1));
        assert!(tl0.1 > 0.0 && tl01.1 > tl0.1 * 1.5, "{partial:?}");
        // Silent for a while (paused at the publisher) and just resumed: still offered at
        // what it cost while it flowed.
        let resumed = t0 + std::time::Duration::from_secs(10);
        for tid in [0, 2, 1, 2] {
            rates.add(resumed, tid, 1000);
        }
        assert_eq!(rates.partial().collect::<Vec<_>>(), partial);
        // A layer with one temporal layer offers nothing partial.
        let mut single = TemporalRates::default();
        single.add(t0, 0, 1000);
        single.add(t0 + std::time::Duration::from_secs(2), 0, 1000);
        assert_eq!(single.partial().count(), 0);
    }

    #[test]
    fn packets_without_temporal_layers_always_pass() {
        let mut filter = TemporalFilter::default();
        filter.set_target(0);
        assert!(filter.forward(None, false));
    }
}
