//! The forwarding decision for one subscriber of one published track.
//!
//! For every packet of any layer of the track, the downtrack decides whether this
//! subscriber gets it and under which sequence number and timestamp. Video starts, and
//! changes layer, only on a keyframe of the layer it moves to, so a decoder never receives
//! a delta frame it has no reference for; until then the subscriber keeps the layer it
//! had (or nothing, when it just joined) and a keyframe is requested for the new one.

use super::allocation::Allotment;
use super::sequencer::{Rewritten, Sequencer, SourcePosition};
use super::simulcast::{Quality, select_layer_up_to};
use super::spatial::{SpatialFilter, SpatialInfo};
use super::temporal::{ALL_TEMPORAL, TemporalFilter, TemporalInfo};
use std::time::{Duration, Instant};
use tutti_service::ratelimit::TokenBucket;

/// How long a subscriber waits for a keyframe before asking again.
const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);

/// What to do with one packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Forward with these numbers, or drop when `None`.
    pub forward: Option<Rewritten>,
    /// Ask the publisher for a keyframe on this layer index.
    pub request_keyframe: Option<usize>,
    /// Dropped for its temporal layer: the pictures after it are to be renumbered.
    pub dropped_picture: bool,
    /// The first packet forwarded after a pause: its pictures are numbered on from the
    /// last one sent, as after a switch of layer.
    pub resumed: bool,
    /// The packet ends the picture for this subscriber (the last of the highest spatial
    /// layer it receives): its copy carries the RTP marker whatever the source's says.
    pub marker: bool,
    /// Dropped, but late: the place kept for it while it was missing, which a padding-only
    /// packet is to fill, or the subscriber would ask for it again and again.
    pub fill: Option<Rewritten>,
}

/// One subscriber's view of one published track.
#[derive(Debug)]
pub struct Downtrack {
    video: bool,
    target: Quality,
    /// What the subscriber's downlink lets it receive (video only).
    allotment: Allotment,
    current: Option<usize>,
    pending: Option<(usize, Instant)>,
    sequencer: Sequencer,
    /// Paused since the last packet forwarded: the next one resumes the stream.
    resuming: bool,
    /// Which temporal layers of the current layer go out (video only).
    temporal: TemporalFilter,
    /// Which spatial layers of the current layer go out (an SVC stream's).
    spatial: SpatialFilter,
    /// When a key picture was last asked for, to move up a spatial layer.
    spatial_asked: Option<Instant>,
    budget: TokenBucket,
}

impl Downtrack {
    /// The stream goes on with another track of the same kind (a WHEP viewer's section
    /// whose track went away): its layers are chosen afresh from the next keyframe, while
    /// its numbering runs on, so the receiver sees one continuous stream.
    pub fn change_source(&mut self, clock_rate: u32) {
        let mut fresh = Self::new(self.video, clock_rate);
        std::mem::swap(&mut fresh.sequencer, &mut self.sequencer);
        // What the new track sends next follows on from the last packet sent.
        fresh.sequencer.pause();
        fresh.sequencer.set_clock_rate(clock_rate);
        fresh.target = self.target;
        fresh.allotment = self.allotment;
        fresh.resuming = true;
        *self = fresh;
    }

    /// A downtrack for a track of the given kind and RTP clock rate.
    pub fn new(video: bool, clock_rate: u32) -> Self {
        Self {
            video,
            target: Quality::High,
            allotment: Allotment::ALL,
            current: None,
            pending: None,
            sequencer: Sequencer::new(clock_rate),
            resuming: false,
            temporal: TemporalFilter::default(),
            spatial: SpatialFilter::default(),
            spatial_asked: None,
            budget: TokenBucket::new(200, 100),
        }
    }

    /// The quality the subscriber asked for: [`Quality::Off`] (a hidden tile) stops the
    /// video at once, like a paused allotment; asking again resumes it on a keyframe.
    pub fn set_target(&mut self, target: Quality) {
        let was = self.max_rank();
        self.target = target;
        self.pause_if_stopped(was);
    }

    /// The quality the subscriber asked for.
    pub fn target(&self) -> Quality {
        self.target
    }

    /// What the subscriber's downlink allows this track (see [`super::allocation`]): a
    /// lower cap moves it down at the lower layer's next keyframe; `Paused` stops it at
    /// once, and it resumes on a keyframe, continuing the stream without a gap.
    pub fn set_allotment(&mut self, allotment: Allotment) {
        let was = self.max_rank();
        self.allotment = allotment;
        self.pause_if_stopped(was);
    }

    /// The highest layer rank this subscriber is to receive now, by what it asked for and
    /// what its downlink allows; `None` when it is to receive none of the video.
    pub fn max_rank(&self) -> Option<u8> {
        match self.allotment {
            Allotment::Paused => None,
            Allotment::UpTo { rank, .. } => self.target.rank().map(|wanted| wanted.min(rank)),
        }
    }

    /// Stops a video stream that was flowing (`was` its rank cap) and is to receive
    /// nothing now; its sequence numbers continue without a gap when it resumes.
    fn pause_if_stopped(&mut self, was: Option<u8>) {
        if self.video && was.is_some() && self.max_rank().is_none() {
            self.current = None;
            self.pending = None;
            self.sequencer.pause();
            self.resuming = true;
        }
    }

    /// What the subscriber's downlink allows this track.
    pub fn allotment(&self) -> Allotment {
        self.allotment
    }

    /// The layer index currently forwarded.
    pub fn current_layer(&self) -> Option<usize> {
        self.current
    }

    /// Decides about one packet. `layers` lists `(rank, active)` for each layer of the
    /// track; `layer` is the index this packet belongs to; `temporal` and `spatial` what
    /// its payload descriptor says of its temporal layer and, in a stream of spatial layers
    /// (SVC), of its spatial layer. In such a stream the ranks of what the subscriber may
    /// receive are its spatial layers.
    #[allow(clippy::too_many_arguments)]
    pub fn on_packet(
        &mut self,
        layers: &[(u8, bool)],
        layer: usize,
        keyframe: bool,
        temporal: Option<TemporalInfo>,
        spatial: Option<SpatialInfo>,
        packet: (u32, u16, u32),
        now: Instant,
    ) -> Decision {
        let (ssrc, seq, timestamp) = packet;
        if !self.video {
            return Decision {
                forward: self.sequencer.rewrite(ssrc, seq, timestamp, now),
                request_keyframe: None,
                dropped_picture: false,
                resumed: false,
                marker: false,
                fill: None,
            };
        }
        let Some(max_rank) = self.max_rank() else {
            return Decision {
                forward: None,
                request_keyframe: None,
                dropped_picture: false,
                resumed: false,
                marker: false,
                fill: None,
            };
        };
        let mut request_keyframe = None;
        let desired = select_layer_up_to(layers, max_rank);
        if let Some(desired) = desired {
            let waiting_for = self.pending.map(|(pending, _)| pending);
            if Some(desired) == self.current {
                self.pending = None;
            } else if waiting_for != Some(desired) {
                self.pending = Some((desired, now));
                request_keyframe = Some(desired);
            } else if let Some((pending, asked_at)) = self.pending
                && now.saturating_duration_since(asked_at) >= KEYFRAME_RETRY
            {
                self.pending = Some((pending, now));
                request_keyframe = Some(pending);
            }
        }
        if keyframe && self.pending.is_some_and(|(pending, _)| pending == layer) {
            self.current = Some(layer);
            self.pending = None;
        }
        let mut dropped_picture = false;
        let mut marker = false;
        let mut fill = None;
        if self.current == Some(layer) {
            self.temporal.set_target(self.temporal_target(layers));
        }
        let forward = if self.current != Some(layer) {
            None
        } else if !self.temporal.forward(temporal, keyframe) {
            // A temporal layer the subscriber does not receive: its numbers close up.
            fill = self.drop_packet(packet);
            dropped_picture = true;
            None
        } else if let Some(info) = spatial {
            self.spatial.set_target(max_rank);
            let decision = self.spatial.on_packet(info, keyframe);
            if !decision.wants_keyframe {
                // Up where it was to be: a later move up asks at once.
                self.spatial_asked = None;
            }
            if decision.wants_keyframe
                && request_keyframe.is_none()
                && self
                    .spatial_asked
                    .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_RETRY)
            {
                self.spatial_asked = Some(now);
                request_keyframe = Some(layer);
            }
            marker = decision.marker;
            if decision.forward {
                self.sequencer.rewrite(ssrc, seq, timestamp, now)
            } else {
                // A spatial layer above the subscriber's: its numbers close up too.
                fill = self.drop_packet(packet);
                None
            }
        } else {
            self.sequencer.rewrite(ssrc, seq, timestamp, now)
        };
        let resumed = forward.is_some() && std::mem::take(&mut self.resuming);
        Decision {
            forward,
            request_keyframe,
            dropped_picture,
            resumed,
            marker,
            fill,
        }
    }

    /// A packet of a layer the subscriber does not receive: its number closes up, or, when
    /// it came late, the place kept for it is given back to be filled with padding.
    fn drop_packet(&mut self, (ssrc, seq, timestamp): (u32, u16, u32)) -> Option<Rewritten> {
        let kept = self.sequencer.kept_place(ssrc, seq, timestamp);
        if kept.is_none() {
            self.sequencer.skip(ssrc, seq);
        }
        kept
    }

    /// The highest spatial layer of an SVC stream the subscriber receives now.
    pub fn spatial_layer(&self) -> u8 {
        self.spatial.current()
    }

    /// Whether a resent copy of a packet of an SVC stream ends the picture for the
    /// subscriber (see [`SpatialFilter::marks`]).
    pub fn marks(&self, spatial: SpatialInfo) -> bool {
        self.spatial.marks(spatial)
    }

    /// The highest temporal layer the forwarded layer is to send: what the allotment
    /// says, but only the base (TL0) while a move down to a lower layer waits for that
    /// layer's keyframe — the first, smooth step down, at once and without a keyframe,
    /// where the current layer at its full rate would go on overfilling the downlink.
    fn temporal_target(&self, layers: &[(u8, bool)]) -> u8 {
        let rank = |index: usize| layers.get(index).map(|&(rank, _)| rank);
        let stepping_down = match (self.pending, self.current) {
            (Some((pending, _)), Some(current)) => rank(pending) < rank(current),
            _ => false,
        };
        match self.allotment {
            _ if stepping_down => 0,
            Allotment::UpTo { temporal, .. } => temporal,
            Allotment::Paused => ALL_TEMPORAL,
        }
    }

    /// The highest temporal layer of the forwarded layer the subscriber receives now
    /// ([`ALL_TEMPORAL`] when it is not limited).
    pub fn temporal_layer(&self) -> u8 {
        self.temporal.current()
    }

    /// The timestamp of the last packet this stream sent; `None` before any.
    pub fn last_timestamp(&self) -> Option<u32> {
        self.sequencer.last_timestamp()
    }

    /// The outgoing position of a padding-only packet (a probe) on this stream: video that
    /// has sent something, flowing or paused (a paused track's probe is what resumes it).
    pub fn padding(&mut self) -> Option<Rewritten> {
        if !self.video {
            return None;
        }
        self.sequencer.padding()
    }

    /// The publisher's packet right after the last forwarded one was dropped on purpose.
    pub fn skip(&mut self, layer: usize, ssrc: u32, seq: u16) {
        if !self.video || self.current == Some(layer) {
            self.sequencer.skip(ssrc, seq);
        }
    }

    /// Maps a NACKed outgoing sequence number to the source packet, if the subscriber's
    /// retransmission budget allows another one.
    pub fn retransmission_source(&mut self, out_seq: u16, now: Instant) -> Option<SourcePosition> {
        let source = self.sequencer.source_of(out_seq)?;
        self.budget.take(now).then_some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULCAST: [(u8, bool); 3] = [(0, true), (1, true), (2, true)];

    #[test]
    fn video_waits_for_a_keyframe_then_forwards_continuously() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        let single = [(0u8, true)];
        let first = down.on_packet(&single, 0, false, None, None, (1, 10, 0), t0);
        assert_eq!(first.forward, None);
        assert_eq!(first.request_keyframe, Some(0));
        // Still waiting: no second request inside the retry interval.
        let second = down.on_packet(&single, 0, false, None, None, (1, 11, 0), t0);
        assert_eq!(
            second,
            Decision {
                forward: None,
                request_keyframe: None,
                dropped_picture: false,
                resumed: false,
                marker: false,
                fill: None
            }
        );
        let key = down.on_packet(&single, 0, true, None, None, (1, 12, 3000), t0);
        let key_out = key.forward.expect("keyframe forwarded");
        let next = down
            .on_packet(&single, 0, false, None, None, (1, 13, 3000), t0)
            .forward
            .unwrap();
        assert_eq!(next.seq, key_out.seq.wrapping_add(1));
    }

    #[test]
    fn asks_again_when_the_keyframe_does_not_come() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        let single = [(0u8, true)];
        assert_eq!(
            down.on_packet(&single, 0, false, None, None, (1, 1, 0), t0)
                .request_keyframe,
            Some(0)
        );
        let later = t0 + KEYFRAME_RETRY;
        assert_eq!(
            down.on_packet(&single, 0, false, None, None, (1, 2, 0), later)
                .request_keyframe,
            Some(0)
        );
    }

    #[test]
    fn switches_layers_only_on_a_keyframe_of_the_new_layer() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        down.set_target(Quality::Low);
        // Start on layer 0.
        assert!(
            down.on_packet(&SIMULCAST, 0, true, None, None, (100, 1, 0), t0)
                .forward
                .is_some()
        );
        assert_eq!(down.current_layer(), Some(0));
        // Packets of other layers are not forwarded.
        assert!(
            down.on_packet(&SIMULCAST, 2, true, None, None, (102, 1, 0), t0)
                .forward
                .is_none()
        );
        // Ask for high: keyframe requested for layer 2, layer 0 keeps flowing meanwhile.
        down.set_target(Quality::High);
        let asked = down.on_packet(&SIMULCAST, 0, false, None, None, (100, 2, 3000), t0);
        assert_eq!(asked.request_keyframe, Some(2));
        let last_low = asked.forward.expect("old layer still forwarded");
        assert!(
            down.on_packet(&SIMULCAST, 2, false, None, None, (102, 2, 3000), t0)
                .forward
                .is_none()
        );
        let switched = down
            .on_packet(
                &SIMULCAST,
                2,
                true,
                None,
                None,
                (102, 3, 6000),
                t0 + Duration::from_millis(33),
            )
            .forward
            .expect("switch on keyframe");
        assert_eq!(switched.seq, last_low.seq.wrapping_add(1));
        assert!(
            down.on_packet(&SIMULCAST, 0, false, None, None, (100, 3, 6000), t0)
                .forward
                .is_none()
        );
        assert_eq!(down.current_layer(), Some(2));
    }

    #[test]
    fn falls_back_when_the_current_layer_stops() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        assert!(
            down.on_packet(&SIMULCAST, 2, true, None, None, (102, 1, 0), t0)
                .forward
                .is_some()
        );
        let top_paused = [(0, true), (1, true), (2, false)];
        let decision = down.on_packet(&top_paused, 1, false, None, None, (101, 1, 0), t0);
        assert_eq!(decision.request_keyframe, Some(1));
        assert!(
            down.on_packet(&top_paused, 1, true, None, None, (101, 2, 0), t0)
                .forward
                .is_some()
        );
        assert_eq!(down.current_layer(), Some(1));
    }

    #[test]
    fn a_lower_allotment_moves_down_on_the_lower_layers_keyframe() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        let high = down
            .on_packet(&SIMULCAST, 2, true, None, None, (102, 1, 0), t0)
            .forward
            .expect("high layer");
        down.set_allotment(Allotment::up_to(0));
        let asked = down.on_packet(&SIMULCAST, 2, false, None, None, (102, 2, 0), t0);
        assert_eq!(asked.request_keyframe, Some(0));
        assert!(
            asked.forward.is_some(),
            "the high layer flows until the switch"
        );
        let low = down
            .on_packet(&SIMULCAST, 0, true, None, None, (100, 9, 3000), t0)
            .forward
            .expect("switched down");
        assert_eq!(low.seq, high.seq.wrapping_add(2));
        assert_eq!(down.current_layer(), Some(0));
        // The subscriber's own wish still caps it: asked for low, allowed all.
        down.set_allotment(Allotment::ALL);
        down.set_target(Quality::Low);
        assert_eq!(
            down.on_packet(&SIMULCAST, 0, false, None, None, (100, 10, 3000), t0)
                .request_keyframe,
            None
        );
    }

    #[test]
    fn a_paused_track_sends_nothing_and_resumes_on_a_keyframe_without_a_gap() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        let single = [(0u8, true)];
        down.on_packet(&single, 0, true, None, None, (1, 10, 0), t0);
        let last = down
            .on_packet(&single, 0, false, None, None, (1, 11, 0), t0)
            .forward
            .expect("flowing");
        down.set_allotment(Allotment::Paused);
        for seq in 12..50u16 {
            let decision =
                down.on_packet(&single, 0, seq % 10 == 0, None, None, (1, seq, 3000), t0);
            assert_eq!(
                decision,
                Decision {
                    forward: None,
                    request_keyframe: None,
                    dropped_picture: false,
                    resumed: false,
                    marker: false,
                    fill: None
                }
            );
        }
        down.set_allotment(Allotment::ALL);
        let later = t0 + Duration::from_secs(2);
        let asked = down.on_packet(&single, 0, false, None, None, (1, 50, 180_000), later);
        assert_eq!(asked.forward, None, "not before a keyframe");
        assert_eq!(asked.request_keyframe, Some(0));
        let resuming = down.on_packet(&single, 0, true, None, None, (1, 51, 183_000), later);
        assert!(resuming.resumed, "the picture IDs are told");
        let resumed = resuming.forward.expect("resumed on the keyframe");
        assert_eq!(resumed.seq, last.seq.wrapping_add(1), "no gap to repair");
        let next = down.on_packet(&single, 0, false, None, None, (1, 52, 186_000), later);
        assert!(
            !next.resumed,
            "only the first packet after the pause resumes"
        );
        assert!(resumed.timestamp.wrapping_sub(last.timestamp) >= 90_000 * 2);
    }

    fn frame_start(tid: u8, sync: bool) -> Option<TemporalInfo> {
        Some(TemporalInfo {
            tid,
            sync,
            frame_start: true,
            references: None,
        })
    }

    /// One packet of an SVC picture: spatial layer `sid`, the picture's first packet when
    /// `sid` is 0, the last of its layer frame.
    fn svc(down: &mut Downtrack, sid: u8, keyframe: bool, seq: u16, now: Instant) -> Decision {
        let spatial = Some(SpatialInfo {
            sid,
            ends_layer_frame: true,
            picture_start: sid == 0,
        });
        down.on_packet(
            &[(3, true)],
            0,
            keyframe && sid == 0,
            None,
            spatial,
            (7, seq, u32::from(seq / 3) * 3000),
            now,
        )
    }

    #[test]
    fn an_svc_stream_sends_the_spatial_layers_up_to_the_subscribers_own() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        down.set_target(Quality::Medium);
        // A key picture: the base and the middle layer, the marker on the middle one; the
        // top layer's number closes up.
        let base = svc(&mut down, 0, true, 30, t0);
        let middle = svc(&mut down, 1, true, 31, t0);
        let top = svc(&mut down, 2, true, 32, t0);
        let base_out = base.forward.expect("base layer");
        assert!(!base.marker);
        assert_eq!(middle.forward.map(|r| r.seq), Some(base_out.seq + 1));
        assert!(
            middle.marker,
            "the picture ends at the middle layer for this subscriber"
        );
        assert_eq!((top.forward, top.marker), (None, false));
        assert_eq!(
            svc(&mut down, 0, false, 33, t0).forward.map(|r| r.seq),
            Some(base_out.seq + 2)
        );
        assert_eq!(down.spatial_layer(), 1);
        // Its downlink allows only the base layer: from the next picture, with the
        // marker there.
        svc(&mut down, 1, false, 34, t0);
        svc(&mut down, 2, false, 35, t0);
        down.set_allotment(Allotment::up_to(0));
        let only_base = svc(&mut down, 0, false, 36, t0);
        assert!(only_base.forward.is_some() && only_base.marker);
        assert_eq!(only_base.request_keyframe, None);
        assert_eq!(svc(&mut down, 1, false, 37, t0).forward, None);
        assert_eq!(down.spatial_layer(), 0);
        // Allowed the middle layer again: a key picture is asked for, once a second, and
        // the middle layer comes with it.
        down.set_allotment(Allotment::ALL);
        assert_eq!(svc(&mut down, 0, false, 39, t0).request_keyframe, Some(0));
        assert_eq!(svc(&mut down, 1, false, 40, t0).forward, None);
        let retry = t0 + KEYFRAME_RETRY;
        assert_eq!(svc(&mut down, 0, false, 42, t0).request_keyframe, None);
        assert_eq!(
            svc(&mut down, 0, false, 45, retry).request_keyframe,
            Some(0)
        );
        svc(&mut down, 0, true, 48, retry);
        let again = svc(&mut down, 1, true, 49, retry);
        assert!(again.forward.is_some() && again.marker);
        assert_eq!(down.spatial_layer(), 1);
    }

    #[test]
    fn a_late_packet_of_a_layer_left_out_gives_back_its_place_to_fill() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        down.set_target(Quality::Low);
        let base = svc(&mut down, 0, true, 30, t0).forward.expect("base layer");
        // 31 (the middle layer) is lost on its way to the shard; 32 is dropped as usual.
        assert_eq!(svc(&mut down, 2, true, 32, t0).fill, None);
        let next = svc(&mut down, 0, false, 33, t0)
            .forward
            .expect("next picture");
        assert_eq!(
            next.seq,
            base.seq + 2,
            "31's place is kept: it might be the base"
        );
        // The publisher's repair of 31 comes: not for this subscriber, its place padded.
        let late = svc(&mut down, 1, true, 31, t0);
        assert_eq!(late.forward, None);
        assert_eq!(late.fill.map(|f| f.seq), Some(base.seq + 1));
        // A packet the subscriber does receive, late, goes out in its place as before.
        assert_eq!(svc(&mut down, 1, false, 35, t0).fill, None);
        let after = svc(&mut down, 0, false, 36, t0).forward.expect("picture");
        let late_base = svc(&mut down, 0, false, 34, t0);
        assert_eq!(late_base.fill, None);
        assert_eq!(late_base.forward.map(|f| f.seq), Some(after.seq - 1));
    }

    #[test]
    fn dropped_temporal_layers_leave_no_gap_and_say_so() {
        let t0 = Instant::now();
        let single = [(0u8, true)];
        let mut down = Downtrack::new(true, 90_000);
        let key = down
            .on_packet(
                &single,
                0,
                true,
                frame_start(0, false),
                None,
                (1, 100, 0),
                t0,
            )
            .forward
            .expect("keyframe");
        down.set_allotment(Allotment::UpTo {
            rank: 0,
            temporal: 0,
        });
        // TL2, TL1, TL2 dropped; the next TL0 follows the keyframe directly.
        for (seq, tid) in [(101u16, 2u8), (102, 1), (103, 2)] {
            let decision = down.on_packet(
                &single,
                0,
                false,
                frame_start(tid, false),
                None,
                (1, seq, 0),
                t0,
            );
            assert_eq!(decision.forward, None);
            assert!(decision.dropped_picture);
            assert_eq!(decision.request_keyframe, None);
        }
        let next = down
            .on_packet(
                &single,
                0,
                false,
                frame_start(0, false),
                None,
                (1, 104, 12_000),
                t0,
            )
            .forward
            .expect("TL0 goes on");
        assert_eq!(next.seq, key.seq.wrapping_add(1));
        assert_eq!(down.temporal_layer(), 0);
        // Allowed all again: TL1 from its next sync frame, without a keyframe request.
        down.set_allotment(Allotment::up_to(0));
        let waiting = down.on_packet(
            &single,
            0,
            false,
            frame_start(1, false),
            None,
            (1, 105, 15_000),
            t0,
        );
        assert!(waiting.dropped_picture && waiting.request_keyframe.is_none());
        let synced = down
            .on_packet(
                &single,
                0,
                false,
                frame_start(1, true),
                None,
                (1, 106, 18_000),
                t0,
            )
            .forward
            .expect("TL1 sync frame");
        assert_eq!(synced.seq, next.seq.wrapping_add(1));
        assert_eq!(down.temporal_layer(), 1);
    }

    #[test]
    fn while_a_move_down_waits_for_its_keyframe_the_current_layer_sends_only_tl0() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(true, 90_000);
        let high = down
            .on_packet(
                &SIMULCAST,
                2,
                true,
                frame_start(0, false),
                None,
                (102, 1, 0),
                t0,
            )
            .forward
            .expect("high layer");
        down.set_allotment(Allotment::up_to(0));
        // Waiting for the low layer's keyframe: the high layer goes on, its TL0 only.
        let asked = down.on_packet(
            &SIMULCAST,
            2,
            false,
            frame_start(2, false),
            None,
            (102, 2, 0),
            t0,
        );
        assert_eq!(asked.request_keyframe, Some(0));
        assert!(asked.forward.is_none() && asked.dropped_picture);
        let tl1 = down.on_packet(
            &SIMULCAST,
            2,
            false,
            frame_start(1, true),
            None,
            (102, 3, 0),
            t0,
        );
        assert!(tl1.forward.is_none());
        let tl0 = down
            .on_packet(
                &SIMULCAST,
                2,
                false,
                frame_start(0, false),
                None,
                (102, 4, 0),
                t0,
            )
            .forward
            .expect("the high layer's TL0 goes on");
        assert_eq!(tl0.seq, high.seq.wrapping_add(1));
        // The low layer's keyframe: every temporal layer of it, from there on.
        let low = down
            .on_packet(
                &SIMULCAST,
                0,
                true,
                frame_start(0, false),
                None,
                (100, 50, 3000),
                t0,
            )
            .forward
            .expect("switched down");
        assert_eq!(low.seq, tl0.seq.wrapping_add(1));
        assert!(
            down.on_packet(
                &SIMULCAST,
                0,
                false,
                frame_start(2, false),
                None,
                (100, 51, 3000),
                t0
            )
            .forward
            .is_some()
        );
        assert_eq!(down.temporal_layer(), ALL_TEMPORAL);
    }

    #[test]
    fn audio_is_never_paused() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(false, 48_000);
        down.set_allotment(Allotment::Paused);
        assert!(
            down.on_packet(&[(0, true)], 0, false, None, None, (5, 1, 960), t0)
                .forward
                .is_some()
        );
    }

    #[test]
    fn audio_is_forwarded_from_the_first_packet() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(false, 48_000);
        let decision = down.on_packet(&[(0, true)], 0, false, None, None, (5, 77, 960), t0);
        assert_eq!(
            decision.forward,
            Some(Rewritten {
                seq: 77,
                timestamp: 960
            })
        );
        assert_eq!(decision.request_keyframe, None);
    }

    #[test]
    fn retransmissions_map_back_and_are_budgeted() {
        let t0 = Instant::now();
        let mut down = Downtrack::new(false, 48_000);
        for seq in 0..10u16 {
            down.on_packet(&[(0, true)], 0, false, None, None, (5, seq, 0), t0);
        }
        let source = down.retransmission_source(4, t0).expect("mapped");
        assert_eq!((source.ssrc, source.seq), (5, 4));
        let granted = (0..500)
            .filter(|_| down.retransmission_source(4, t0).is_some())
            .count();
        assert!(granted < 150, "granted {granted}");
    }
}
