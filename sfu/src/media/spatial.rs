//! Spatial layers of one stream (VP9 SVC): a subscriber receives the spatial layers up to
//! one, and the picture ends, for it, at that layer's last packet.
//!
//! A VP9 publisher encoding L3T3_KEY sends every picture as up to three layer frames on
//! one SSRC, smallest first; its decoder shows the largest it has. The spatial layers above
//! the base reference the ones below them only at a key picture, and otherwise each its own
//! earlier frames (Chromium's `_KEY` modes; in full SVC they reference the layers below at
//! every picture). So:
//!
//! - going *down* takes effect at the next picture: the lower layers' own chains were
//!   sent all along;
//! - going *up* waits for a key picture (the caller asks the publisher for one): the upper
//!   layer's chain starts there;
//! - the RTP marker, which libwebrtc reads as the end of a picture and without which it
//!   decodes nothing of it, goes on the last packet of the highest layer sent. The
//!   publisher set it on the last packet of its own highest layer, which a subscriber
//!   below it never gets.
//!
//! A picture whose top layer the encoder itself left out carries no marker from the
//! publisher, even between two browsers; the shard marks it only at a subscriber's own
//! layer.

use super::rate::RateMeter;
use std::time::{Duration, Instant};

/// Spatial layers the shard tells apart: a browser sends at most three (L3T3). A higher
/// SID is counted with the third.
pub const SPATIAL_LAYERS: usize = 3;

/// What a packet's payload descriptor says of its spatial layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialInfo {
    /// The spatial layer (SID).
    pub sid: u8,
    /// The packet ends its layer frame (VP9's E).
    pub ends_layer_frame: bool,
    /// The packet starts a picture: the first packet of its base layer frame.
    pub picture_start: bool,
}

/// What a subscriber's spatial cap makes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialDecision {
    /// The subscriber receives the packet.
    pub forward: bool,
    /// It ends the picture for the subscriber: its copy carries the RTP marker.
    pub marker: bool,
    /// The subscriber is to receive more than it can yet: a key picture is wanted.
    pub wants_keyframe: bool,
}

/// Which spatial layers of a stream one subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialFilter {
    /// The highest spatial layer the subscriber is to receive.
    target: u8,
    /// The highest it receives now.
    current: u8,
}

impl Default for SpatialFilter {
    fn default() -> Self {
        Self {
            target: u8::MAX,
            current: u8::MAX,
        }
    }
}

impl SpatialFilter {
    /// Sets the highest spatial layer to send. Down takes effect at the next picture, up
    /// at a key picture.
    pub fn set_target(&mut self, target: u8) {
        self.target = target;
    }

    /// The highest spatial layer sent now.
    pub fn current(&self) -> u8 {
        self.current
    }

    /// Decides about one packet; `keyframe` when it starts a key picture.
    pub fn on_packet(&mut self, info: SpatialInfo, keyframe: bool) -> SpatialDecision {
        if info.picture_start && (keyframe || self.target < self.current) {
            self.current = self.target;
        }
        let forward = info.sid <= self.current;
        SpatialDecision {
            forward,
            marker: forward && info.sid == self.current && info.ends_layer_frame,
            wants_keyframe: self.target > self.current,
        }
    }

    /// Whether a resent copy of a packet ends the picture for the subscriber, by the layers
    /// it receives now.
    pub fn marks(&self, info: SpatialInfo) -> bool {
        info.sid == self.current && info.ends_layer_frame
    }
}

/// What a stream's encoder last said of its spatial layers (VP9's scalability structure,
/// on key pictures): how many it makes, and the width of each it ever named.
#[derive(Debug, Default, Clone)]
pub struct SpatialStructure {
    /// The layers it makes now; `None` before it said.
    pub layers: Option<u8>,
    widths: [Option<u16>; SPATIAL_LAYERS],
}

impl SpatialStructure {
    /// Takes in a structure the encoder sent. A layer's width is kept when a later one
    /// leaves the layer out: a publisher encoding fewer layers keeps their sizes.
    pub fn update(&mut self, structure: super::vp9::Scalability) {
        self.layers = Some(structure.layers);
        if let Some(widths) = structure.widths {
            for (kept, width) in self
                .widths
                .iter_mut()
                .zip(widths)
                .take(structure.layers.into())
            {
                *kept = Some(width);
            }
        }
    }

    /// The width of spatial layer `sid`, if the encoder ever named it.
    pub fn width(&self, sid: usize) -> Option<u16> {
        self.widths.get(sid).copied().flatten()
    }
}

/// What each spatial layer of a stream brings in: what a subscriber receiving the layers
/// up to one costs its downlink.
#[derive(Debug, Default, Clone)]
pub struct SpatialRates {
    meters: [RateMeter; SPATIAL_LAYERS],
    last_packet: [Option<Instant>; SPATIAL_LAYERS],
}

impl SpatialRates {
    /// `bytes` of spatial layer `sid` arrived at `now`.
    pub fn add(&mut self, now: Instant, sid: u8, bytes: usize) {
        let index = usize::from(sid).min(SPATIAL_LAYERS - 1);
        self.meters[index].add(now, bytes);
        self.last_packet[index] = Some(now);
    }

    /// How many spatial layers the stream has sent, up to its highest.
    pub fn seen(&self) -> usize {
        self.last_packet
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |sid| sid + 1)
    }

    /// Whether spatial layer `sid` came within `idle` of `now`.
    pub fn is_flowing(&self, sid: usize, now: Instant, idle: Duration) -> bool {
        self.last_packet
            .get(sid)
            .copied()
            .flatten()
            .is_some_and(|at| now.saturating_duration_since(at) < idle)
    }

    /// What spatial layer `sid` brought in while it flowed; `None` before it did.
    pub fn flowing_bps(&self, sid: usize) -> Option<f64> {
        self.meters.get(sid)?.flowing_bps()
    }

    /// For each spatial layer that came within `idle` of `now`, lowest first: `(sid, bps,
    /// peak_bps)` of receiving every layer up to it, which a subscriber on it does. A layer
    /// the encoder stopped (its uplink fell short) is not offered, but the ones above it
    /// still count it while it flowed. One the publisher was told to stop (`paused`, as
    /// nobody needed it) is offered at what it cost while it flowed: a subscriber's
    /// allotment may reach it, which is what resumes it.
    pub fn offers<'a>(
        &'a self,
        now: Instant,
        idle: Duration,
        paused: impl Fn(usize) -> bool + 'a,
    ) -> impl Iterator<Item = (u8, f64, f64)> + 'a {
        let mut sum = (0.0, 0.0);
        (0..SPATIAL_LAYERS).filter_map(move |sid| {
            let meter = &self.meters[sid];
            let bps = if self.is_flowing(sid, now, idle) {
                meter.bps().max(meter.flowing_bps().unwrap_or(0.0))
            } else if paused(sid) {
                meter.flowing_bps()?
            } else {
                return None;
            };
            sum = (sum.0 + bps, sum.1 + meter.peak_bps().max(bps));
            Some((sid as u8, sum.0, sum.1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sid: u8, picture_start: bool, ends: bool) -> SpatialInfo {
        SpatialInfo {
            sid,
            ends_layer_frame: ends,
            picture_start,
        }
    }

    /// One picture of three layer frames, one packet each: what the subscriber gets of it,
    /// as (forwarded, marked) per layer.
    fn picture(filter: &mut SpatialFilter, keyframe: bool) -> Vec<(bool, bool)> {
        (0..3)
            .map(|sid| {
                let d = filter.on_packet(packet(sid, sid == 0, true), keyframe && sid == 0);
                (d.forward, d.marker)
            })
            .collect()
    }

    #[test]
    fn a_subscriber_gets_the_layers_up_to_its_own_with_the_marker_on_its_own() {
        let mut filter = SpatialFilter::default();
        filter.set_target(1);
        assert_eq!(
            picture(&mut filter, true),
            vec![(true, false), (true, true), (false, false)]
        );
        // Packets of a layer frame before its last are not marked.
        let middle = filter.on_packet(packet(1, false, false), false);
        assert!(middle.forward && !middle.marker);
    }

    #[test]
    fn down_at_the_next_picture_up_only_at_a_key_picture() {
        let mut filter = SpatialFilter::default();
        filter.set_target(2);
        assert_eq!(
            picture(&mut filter, true),
            vec![(true, false), (true, false), (true, true)]
        );
        filter.set_target(0);
        // The rest of a picture already started is not cut.
        let rest = filter.on_packet(packet(2, false, true), false);
        assert!(rest.forward);
        assert_eq!(
            picture(&mut filter, false),
            vec![(true, true), (false, false), (false, false)]
        );
        filter.set_target(2);
        let asked = filter.on_packet(packet(0, true, true), false);
        assert!(asked.wants_keyframe && asked.marker, "{asked:?}");
        assert_eq!(filter.current(), 0);
        assert_eq!(
            picture(&mut filter, false),
            vec![(true, true), (false, false), (false, false)]
        );
        assert_eq!(
            picture(&mut filter, true),
            vec![(true, false), (true, false), (true, true)]
        );
        assert!(
            !filter
                .on_packet(packet(0, true, true), false)
                .wants_keyframe
        );
    }

    #[test]
    fn a_resent_packet_is_marked_by_the_layers_received_now() {
        let mut filter = SpatialFilter::default();
        filter.set_target(1);
        picture(&mut filter, true);
        assert!(filter.marks(packet(1, false, true)));
        assert!(!filter.marks(packet(0, false, true)));
        assert!(!filter.marks(packet(1, false, false)));
    }

    #[test]
    fn each_spatial_layer_costs_itself_and_the_ones_below() {
        let t0 = Instant::now();
        let mut rates = SpatialRates::default();
        for frame in 0..90u64 {
            let at = t0 + Duration::from_millis(frame * 33);
            rates.add(at, 0, 200);
            rates.add(at, 1, 500);
            rates.add(at, 2, 1500);
        }
        let now = t0 + Duration::from_millis(89 * 33);
        let offers: Vec<(u8, f64, f64)> = rates
            .offers(now, Duration::from_secs(1), |_| false)
            .collect();
        assert_eq!(offers.len(), 3, "{offers:?}");
        let per_second = |bytes: f64| bytes * 8.0 * 30.3;
        for ((sid, bps, peak), bytes) in offers.iter().zip([200.0, 700.0, 2200.0]) {
            assert!((bps / per_second(bytes) - 1.0).abs() < 0.1, "{sid}: {bps}");
            assert!(peak >= bps);
        }
        // The top layer stopped (the publisher's uplink fell short): not offered.
        let later = now + Duration::from_secs(2);
        for frame in 0..10u64 {
            let at = later + Duration::from_millis(frame * 33);
            rates.add(at, 0, 200);
            rates.add(at, 1, 500);
        }
        let at = later + Duration::from_millis(330);
        let sids: Vec<u8> = rates
            .offers(at, Duration::from_secs(1), |_| false)
            .map(|(sid, ..)| sid)
            .collect();
        assert_eq!(sids, vec![0, 1]);
        // Stopped because the publisher was told to (nobody needed it): offered at what it
        // cost while it flowed, so that a subscriber's allotment can reach it again.
        let offers: Vec<(u8, f64, f64)> = rates
            .offers(at, Duration::from_secs(1), |sid| sid == 2)
            .collect();
        assert_eq!(offers.len(), 3, "{offers:?}");
        let top = offers[2].1 - offers[1].1;
        assert!((top / per_second(1500.0) - 1.0).abs() < 0.1, "{top}");
        assert_eq!(rates.seen(), 3);
        assert!(rates.is_flowing(1, at, Duration::from_secs(1)));
        assert!(!rates.is_flowing(2, at, Duration::from_secs(1)));
        assert_eq!(SpatialRates::default().seen(), 0);
    }
}
