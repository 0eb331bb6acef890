//! How one subscriber's downlink is shared among the tracks it receives: audio first,
//! whatever it costs; then each video track's lowest layer, most important track first
//! (the active speaker, a shared screen, the stage); then, in the same order, each video
//! track as high as the subscriber asked for and the rest of the estimate allows. A track
//! that does not fit even at its lowest layer is paused rather than starving the others.
//!
//! Moving a track up needs some headroom over the most the layer sent in any of the last
//! few seconds, so that an estimate hovering at a layer's rate does not switch it up and
//! down at every feedback, nor move it up in a quiet second of an encoder whose next one
//! overflows the downlink. Staying needs only the layer's rate now.
//!
//! A layer may also be offered with fewer of its temporal layers (at a lower frame rate,
//! [`super::temporal`]): below the lowest layer at its full rate, such an offer keeps the
//! video moving where it would otherwise be paused. Offers are ordered by layer, then by
//! temporal layers.

use super::temporal::ALL_TEMPORAL;

/// Headroom a layer needs above its recent peak rate before a track moves up to it.
pub const UP_HEADROOM: f64 = 1.15;

/// One layer of a video track as the subscriber could receive it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerOffer {
    /// The layer's rank (0 lowest); see [`super::simulcast`].
    pub rank: u8,
    /// Its temporal layers up to this one ([`ALL_TEMPORAL`] for the whole layer).
    pub temporal: u8,
    /// What it has been sending, bits per second.
    pub bps: f64,
    /// The most it sent in any of the last few seconds (at least `bps`): what a track
    /// moving up to it must have room for.
    pub peak_bps: f64,
}

impl LayerOffer {
    /// A whole layer, at a steady rate.
    pub fn whole(rank: u8, bps: f64) -> Self {
        Self::partial(rank, ALL_TEMPORAL, bps)
    }

    /// A layer's temporal layers up to `temporal`, at a steady rate.
    pub fn partial(rank: u8, temporal: u8, bps: f64) -> Self {
        Self {
            rank,
            temporal,
            bps,
            peak_bps: bps,
        }
    }

    /// The same offer, having sent as much as `peak_bps` lately.
    pub fn with_peak(self, peak_bps: f64) -> Self {
        Self {
            peak_bps: peak_bps.max(self.bps),
            ..self
        }
    }

    /// Where the offer stands among a track's offers: by layer, then temporal layers.
    pub fn level(&self) -> (u8, u8) {
        (self.rank, self.temporal)
    }
}

/// One track the subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackDemand {
    /// Audio is always sent.
    pub audio: bool,
    /// Higher goes first.
    pub priority: u8,
    /// The layers flowing now, any order; an audio track has one.
    pub layers: Vec<LayerOffer>,
    /// The highest rank the subscriber asked for.
    pub wanted_rank: u8,
    /// The rank it receives now, if any, and its highest temporal layer: it keeps them
    /// without headroom.
    pub current: Option<(u8, u8)>,
}

/// What a track may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allotment {
    /// Layers up to `rank`, and of the layer sent its temporal layers up to `temporal`.
    UpTo {
        /// The highest layer rank.
        rank: u8,
        /// The highest temporal layer ([`ALL_TEMPORAL`] for all).
        temporal: u8,
    },
    /// Nothing: the downlink cannot carry even the lowest layer beside what matters more.
    Paused,
}

impl Allotment {
    /// Everything the track sends.
    pub const ALL: Self = Self::up_to(u8::MAX);

    /// Whole layers up to `rank`.
    pub const fn up_to(rank: u8) -> Self {
        Self::UpTo {
            rank,
            temporal: ALL_TEMPORAL,
        }
    }
}

/// Shares `budget_bps` among `tracks`; one allotment per track, in the same order.
pub fn allocate(budget_bps: f64, tracks: &[TrackDemand]) -> Vec<Allotment> {
    let mut out = vec![Allotment::Paused; tracks.len()];
    let mut left = budget_bps;
    let mut video: Vec<usize> = Vec::new();
    for (index, track) in tracks.iter().enumerate() {
        if track.audio {
            left -= track.layers.iter().map(|l| l.bps).sum::<f64>();
            out[index] = Allotment::ALL;
        } else if !track.layers.is_empty() {
            video.push(index);
        }
    }
    // Among equals, a track already being received goes first, so that a downlink with
    // room for one video of two keeps the one it shows rather than swapping them; then
    // the order the tracks were given in (the sort is stable).
    video.sort_by_key(|&index| {
        (
            std::cmp::Reverse(tracks[index].priority),
            tracks[index].current.is_none(),
        )
    });
    // Each track's lowest layer, most important first: at its full frame rate if that
    // fits, else at the highest lower frame rate that does. A lower frame rate is for a
    // downlink too narrow for the layer, not a way to pay for another track's higher layer.
    let mut given: Vec<Option<LayerOffer>> = vec![None; tracks.len()];
    for &index in &video {
        let track = &tracks[index];
        let Some(lowest) = lowest(track) else {
            continue;
        };
        let affordable = track
            .layers
            .iter()
            .copied()
            .filter(|l| l.rank == lowest.rank && cost(track, *l) <= left)
            .max_by_key(LayerOffer::level);
        let base = affordable.or_else(|| keeps_lowest(track, lowest, left).then_some(lowest));
        if let Some(base) = base {
            left -= base.bps;
            given[index] = Some(base);
        }
    }
    // Then up, as far as asked and affordable, most important first.
    for &index in &video {
        let track = &tracks[index];
        let Some(base) = given[index] else {
            continue;
        };
        let mut best = base;
        let mut candidates: Vec<LayerOffer> = track
            .layers
            .iter()
            .copied()
            .filter(|l| l.level() > base.level() && l.rank <= track.wanted_rank)
            .collect();
        candidates.sort_by_key(LayerOffer::level);
        for layer in candidates {
            if cost(track, layer) - base.bps <= left {
                best = layer;
            }
        }
        left -= best.bps - base.bps;
        given[index] = Some(best);
    }
    for &index in &video {
        if let Some(layer) = given[index] {
            out[index] = Allotment::UpTo {
                rank: layer.rank,
                temporal: layer.temporal,
            };
        }
    }
    out
}

/// What a probe should prove for the allocation to give more: the rate sent now under
/// `allotments`, and that plus what moving the most important held-back video track one
/// layer up would cost (with headroom). `None` when nothing is held back.
pub fn probe_goal(tracks: &[TrackDemand], allotments: &[Allotment]) -> Option<(f64, f64)> {
    let mut sending = 0.0;
    let mut held: Option<(u8, f64)> = None;
    for (track, allotment) in tracks.iter().zip(allotments) {
        if track.audio {
            sending += track.layers.iter().map(|l| l.bps).sum::<f64>();
            continue;
        }
        let sent = match *allotment {
            Allotment::UpTo { rank, temporal } => track
                .layers
                .iter()
                .filter(|l| l.level() <= (rank.min(track.wanted_rank), temporal))
                .max_by_key(|l| l.level())
                .or_else(|| lowest_ref(track)),
            Allotment::Paused => None,
        };
        let sent_bps = sent.map_or(0.0, |l| l.bps);
        sending += sent_bps;
        let next = track
            .layers
            .iter()
            .filter(|l| sent.is_none_or(|s| l.level() > s.level()) && l.rank <= track.wanted_rank)
            .min_by_key(|l| l.level())
            .or_else(|| sent.is_none().then(|| lowest_ref(track)).flatten());
        if let Some(next) = next {
            let extra = next.peak_bps * UP_HEADROOM - sent_bps;
            if held.is_none_or(|(priority, _)| track.priority > priority) {
                held = Some((track.priority, extra));
            }
        }
    }
    held.map(|(_, extra)| (sending, sending + extra))
}

fn lowest_ref(track: &TrackDemand) -> Option<&LayerOffer> {
    track.layers.iter().min_by_key(|l| l.level())
}

/// The lowest offer of a track.
fn lowest(track: &TrackDemand) -> Option<LayerOffer> {
    lowest_ref(track).copied()
}

/// Whether a track flowing at its lowest offer, a lower frame rate of its lowest layer,
/// keeps it on a budget a little short of it: pausing a video costs a frozen picture and a
/// keyframe to resume, and an estimate that dips for a moment below so small an offer
/// (next to the sound, on a link that carries little more) would otherwise pause it and
/// resume it again and again. A whole layer gets no such margin: a quarter of it may be
/// more than the link has to spare.
fn keeps_lowest(track: &TrackDemand, lowest: LayerOffer, left: f64) -> bool {
    lowest.temporal != ALL_TEMPORAL
        && track.current == Some(lowest.level())
        && lowest.bps * KEEP_SHARE <= left
}

/// The share of its lowest offer's rate a budget must still hold for a track flowing at
/// that (partial) offer to keep it.
const KEEP_SHARE: f64 = 0.75;

/// What an offer needs from the budget: its rate if the track is on it or above it already
/// (going down or staying costs no margin), else its recent peak with headroom.
fn cost(track: &TrackDemand, layer: LayerOffer) -> f64 {
    match track.current {
        Some(current) if layer.level() <= current => layer.bps,
        _ => layer.peak_bps * UP_HEADROOM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulcast(priority: u8, current: Option<u8>) -> TrackDemand {
        TrackDemand {
            audio: false,
            priority,
            layers: vec![
                LayerOffer::whole(0, 150_000.0),
                LayerOffer::whole(1, 500_000.0),
                LayerOffer::whole(2, 1_500_000.0),
            ],
            wanted_rank: 2,
            current: current.map(|rank| (rank, ALL_TEMPORAL)),
        }
    }

    fn audio() -> TrackDemand {
        TrackDemand {
            audio: true,
            priority: 0,
            layers: vec![LayerOffer::whole(0, 64_000.0)],
            wanted_rank: 0,
            current: Some((0, ALL_TEMPORAL)),
        }
    }

    #[test]
    fn room_for_one_video_of_two_keeps_the_one_being_received() {
        let tracks = [audio(), simulcast(0, None), simulcast(0, Some(0))];
        // Audio, and one lowest layer with headroom; not two.
        let budget = 64_000.0 + 150_000.0 * UP_HEADROOM + 10_000.0;
        assert_eq!(
            allocate(budget, &tracks),
            [
                Allotment::up_to(u8::MAX),
                Allotment::Paused,
                Allotment::up_to(0)
            ]
        );
    }

    #[test]
    fn audio_first_then_the_most_important_video() {
        let tracks = [audio(), simulcast(0, None), simulcast(2, None)];
        // 300 kbit/s: audio, then both low layers (64 + 2 x 172.5 with headroom does not
        // fit): the speaker's low layer only.
        assert_eq!(
            allocate(300_000.0, &tracks),
            [
                Allotment::up_to(u8::MAX),
                Allotment::Paused,
                Allotment::up_to(0)
            ]
        );
        // 2 Mbit/s: both low layers, then the speaker as high as fits (full), the other stays
        // low: the 286 kbit/s left do not pay for its middle layer.
        assert_eq!(
            allocate(2_000_000.0, &tracks),
            [
                Allotment::up_to(u8::MAX),
                Allotment::up_to(0),
                Allotment::up_to(2)
            ]
        );
        // 2.2 Mbit/s: 486 kbit/s left, and the other track's middle layer fits.
        assert_eq!(
            allocate(2_200_000.0, &tracks),
            [
                Allotment::up_to(u8::MAX),
                Allotment::up_to(1),
                Allotment::up_to(2)
            ]
        );
        // Plenty: both as high as asked.
        assert_eq!(
            allocate(10_000_000.0, &tracks),
            [
                Allotment::up_to(u8::MAX),
                Allotment::up_to(2),
                Allotment::up_to(2)
            ]
        );
    }

    #[test]
    fn audio_is_sent_even_when_the_estimate_cannot_carry_it() {
        let tracks = [audio(), simulcast(1, Some(0))];
        assert_eq!(
            allocate(32_000.0, &tracks),
            [Allotment::up_to(u8::MAX), Allotment::Paused]
        );
    }

    #[test]
    fn never_above_what_the_subscriber_asked_for() {
        let mut small_tile = simulcast(0, None);
        small_tile.wanted_rank = 0;
        assert_eq!(allocate(10_000_000.0, &[small_tile]), [Allotment::up_to(0)]);
    }

    #[test]
    fn moving_up_needs_headroom_staying_does_not() {
        // 520 kbit/s covers the middle layer's 500 but not 500 x 1.15.
        assert_eq!(
            allocate(520_000.0, &[simulcast(0, Some(0))]),
            [Allotment::up_to(0)]
        );
        assert_eq!(
            allocate(520_000.0, &[simulcast(0, Some(1))]),
            [Allotment::up_to(1)]
        );
        assert_eq!(
            allocate(580_000.0, &[simulcast(0, Some(0))]),
            [Allotment::up_to(1)]
        );
    }

    #[test]
    fn moving_up_needs_room_for_the_layers_loud_seconds_staying_does_not() {
        // The middle layer sends 500 kbit/s this second, but sent 700 in one of the last
        // few: 700 kbit/s would cover the first with headroom, not the second.
        let mut track = simulcast(0, Some(0));
        track.layers[1] = LayerOffer::whole(1, 500_000.0).with_peak(700_000.0);
        assert_eq!(allocate(700_000.0, &[track.clone()]), [Allotment::up_to(0)]);
        assert_eq!(
            allocate(150_000.0 + 700_000.0 * UP_HEADROOM, &[track.clone()]),
            [Allotment::up_to(1)]
        );
        // The probe sets out to prove the peak, not this second's rate.
        let (sending, goal) =
            probe_goal(&[track.clone()], &[Allotment::up_to(0)]).unwrap_or_default();
        assert_eq!(sending, 150_000.0);
        assert!((goal - 700_000.0 * UP_HEADROOM).abs() < 1.0, "{goal}");
        // A track on the layer already keeps it on what it sends now.
        track.current = Some((1, ALL_TEMPORAL));
        assert_eq!(allocate(600_000.0, &[track]), [Allotment::up_to(1)]);
    }

    #[test]
    fn a_probe_aims_at_the_next_layer_of_the_most_important_held_back_track() {
        let tracks = [audio(), simulcast(0, Some(0)), simulcast(2, Some(0))];
        let allotments = allocate(400_000.0, &tracks);
        assert_eq!(
            allotments,
            [
                Allotment::up_to(u8::MAX),
                Allotment::up_to(0),
                Allotment::up_to(0)
            ]
        );
        let (sending, goal) = probe_goal(&tracks, &allotments).expect("held back");
        assert_eq!(sending, 64_000.0 + 2.0 * 150_000.0);
        // The speaker's middle layer: 500 x 1.15 instead of 150.
        assert!(
            (goal - (sending + 575_000.0 - 150_000.0)).abs() < 1.0,
            "{goal}"
        );
        // Nothing held back: no probe.
        let all = allocate(10_000_000.0, &tracks);
        assert_eq!(probe_goal(&tracks, &all), None);
        // A paused track: its lowest layer is the goal.
        let paused = [audio(), simulcast(1, None)];
        let allotments = allocate(100_000.0, &paused);
        assert_eq!(allotments[1], Allotment::Paused);
        let (sending, goal) = probe_goal(&paused, &allotments).expect("paused");
        assert_eq!(sending, 64_000.0);
        assert!((goal - (64_000.0 + 172_500.0)).abs() < 1.0, "{goal}");
    }

    /// A simulcast track whose lowest layer is also offered at a quarter and half its
    /// frame rate (TL0, TL0+TL1), as the shard offers a VP8 L1T3 layer.
    fn with_lower_frame_rates(current: Option<(u8, u8)>) -> TrackDemand {
        let mut track = simulcast(0, None);
        track.layers.extend([
            LayerOffer::partial(0, 0, 60_000.0),
            LayerOffer::partial(0, 1, 95_000.0),
        ]);
        track.current = current;
        track
    }

    #[test]
    fn below_the_lowest_layer_video_goes_on_at_a_lower_frame_rate_instead_of_pausing() {
        let budget = |video: f64| 64_000.0 + video;
        let tracks = [audio(), with_lower_frame_rates(Some((0, ALL_TEMPORAL)))];
        // The whole lowest layer no longer fits, half its frames do.
        assert_eq!(
            allocate(budget(120_000.0), &tracks)[1],
            Allotment::UpTo {
                rank: 0,
                temporal: 1
            }
        );
        assert_eq!(
            allocate(budget(70_000.0), &tracks)[1],
            Allotment::UpTo {
                rank: 0,
                temporal: 0
            }
        );
        assert_eq!(allocate(budget(40_000.0), &tracks)[1], Allotment::Paused);
        // Flowing at TL0 already, a budget a little short of it keeps it; a track not
        // flowing at TL0 does not start on that budget.
        let at_tl0 = [audio(), with_lower_frame_rates(Some((0, 0)))];
        assert_eq!(
            allocate(budget(50_000.0), &at_tl0)[1],
            Allotment::UpTo {
                rank: 0,
                temporal: 0
            }
        );
        assert_eq!(allocate(budget(50_000.0), &tracks)[1], Allotment::Paused);
        assert_eq!(allocate(budget(40_000.0), &at_tl0)[1], Allotment::Paused);
        // Climbing back needs headroom over the whole layer, as any move up does.
        let reduced = [audio(), with_lower_frame_rates(Some((0, 1)))];
        assert_eq!(
            allocate(budget(160_000.0), &reduced)[1],
            Allotment::UpTo {
                rank: 0,
                temporal: 1
            }
        );
        assert_eq!(
            allocate(budget(175_000.0), &reduced)[1],
            Allotment::up_to(0)
        );
        // With room, the higher layers come whole, as before.
        assert_eq!(
            allocate(budget(600_000.0), &reduced)[1],
            Allotment::up_to(1)
        );
        // A probe for a track held at TL0 aims at the next offer up: TL0+TL1.
        let held = [audio(), with_lower_frame_rates(Some((0, 0)))];
        let allotments = allocate(budget(70_000.0), &held);
        let (sending, goal) = probe_goal(&held, &allotments).expect("held back");
        assert_eq!(sending, 64_000.0 + 60_000.0);
        assert!(
            (goal - (64_000.0 + 95_000.0 * UP_HEADROOM)).abs() < 1.0,
            "{goal}"
        );
    }

    #[test]
    fn every_track_gets_its_lowest_layer_whole_before_any_goes_higher() {
        // Room for both low layers whole and a little more: neither is cut to a lower
        // frame rate to pay for the other's middle layer.
        let tracks = [
            audio(),
            with_lower_frame_rates(Some((0, ALL_TEMPORAL))),
            with_lower_frame_rates(Some((0, ALL_TEMPORAL))),
        ];
        let allotments = allocate(64_000.0 + 640_000.0, &tracks);
        assert_eq!(allotments[1], Allotment::up_to(0));
        assert_eq!(allotments[2], Allotment::up_to(0));
    }

    #[test]
    fn a_single_layer_track_is_sent_or_paused() {
        let single = TrackDemand {
            audio: false,
            priority: 0,
            layers: vec![LayerOffer::whole(0, 800_000.0)],
            wanted_rank: 2,
            current: Some((0, ALL_TEMPORAL)),
        };
        assert_eq!(
            allocate(900_000.0, std::slice::from_ref(&single)),
            [Allotment::up_to(0)]
        );
        assert_eq!(allocate(700_000.0, &[single]), [Allotment::Paused]);
    }
}
