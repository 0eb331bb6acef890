//! How one subscriber's downlink is shared among the tracks it receives: audio first,
//! whatever it costs; then each video track's lowest layer, most important track first
//! (the active speaker, a shared screen, the stage); then, in the same order, each video
//! track as high as the subscriber asked for and the rest of the estimate allows. A track
//! that does not fit even at its lowest layer is paused rather than starving the others.
//!
//! Moving a track up needs some headroom over the layer's measured rate, so that an
//! estimate hovering at a layer's rate does not switch it up and down at every feedback.

/// Headroom a layer needs above its measured rate before a track moves up to it.
pub const UP_HEADROOM: f64 = 1.15;

/// One layer of a video track as the subscriber could receive it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerOffer {
    /// The layer's rank (0 lowest); see [`super::simulcast`].
    pub rank: u8,
    /// What it has been sending, bits per second.
    pub bps: f64,
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
    /// The rank it receives now, if any: it keeps it without headroom.
    pub current_rank: Option<u8>,
}

/// What a track may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allotment {
    /// Layers up to this rank.
    UpTo(u8),
    /// Nothing: the downlink cannot carry even the lowest layer beside what matters more.
    Paused,
}

/// Shares `budget_bps` among `tracks`; one allotment per track, in the same order.
pub fn allocate(budget_bps: f64, tracks: &[TrackDemand]) -> Vec<Allotment> {
    let mut out = vec![Allotment::Paused; tracks.len()];
    let mut left = budget_bps;
    let mut video: Vec<usize> = Vec::new();
    for (index, track) in tracks.iter().enumerate() {
        if track.audio {
            left -= track.layers.iter().map(|l| l.bps).sum::<f64>();
            out[index] = Allotment::UpTo(u8::MAX);
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
            tracks[index].current_rank.is_none(),
        )
    });
    // Each track's lowest layer, most important first.
    let mut given: Vec<Option<LayerOffer>> = vec![None; tracks.len()];
    for &index in &video {
        let Some(lowest) = lowest(&tracks[index]) else {
            continue;
        };
        if cost(&tracks[index], lowest) <= left {
            left -= lowest.bps;
            given[index] = Some(lowest);
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
            .filter(|l| l.rank > base.rank && l.rank <= track.wanted_rank)
            .collect();
        candidates.sort_by_key(|l| l.rank);
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
            out[index] = Allotment::UpTo(layer.rank);
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
        let sent = match allotment {
            Allotment::UpTo(rank) => track
                .layers
                .iter()
                .filter(|l| l.rank <= (*rank).min(track.wanted_rank))
                .max_by_key(|l| l.rank)
                .or_else(|| lowest_ref(track)),
            Allotment::Paused => None,
        };
        let sent_bps = sent.map_or(0.0, |l| l.bps);
        sending += sent_bps;
        let next = track
            .layers
            .iter()
            .filter(|l| sent.is_none_or(|s| l.rank > s.rank) && l.rank <= track.wanted_rank)
            .min_by_key(|l| l.rank)
            .or_else(|| sent.is_none().then(|| lowest_ref(track)).flatten());
        if let Some(next) = next {
            let extra = next.bps * UP_HEADROOM - sent_bps;
            if held.is_none_or(|(priority, _)| track.priority > priority) {
                held = Some((track.priority, extra));
            }
        }
    }
    held.map(|(_, extra)| (sending, sending + extra))
}

fn lowest_ref(track: &TrackDemand) -> Option<&LayerOffer> {
    track.layers.iter().min_by_key(|l| l.rank)
}

/// The lowest layer of a track.
fn lowest(track: &TrackDemand) -> Option<LayerOffer> {
    track.layers.iter().copied().min_by_key(|l| l.rank)
}

/// What a layer needs from the budget: its rate, with headroom unless the track is on it
/// or above it already (going down or staying costs no margin).
fn cost(track: &TrackDemand, layer: LayerOffer) -> f64 {
    match track.current_rank {
        Some(current) if layer.rank <= current => layer.bps,
        _ => layer.bps * UP_HEADROOM,
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
                LayerOffer {
                    rank: 0,
                    bps: 150_000.0,
                },
                LayerOffer {
                    rank: 1,
                    bps: 500_000.0,
                },
                LayerOffer {
                    rank: 2,
                    bps: 1_500_000.0,
                },
            ],
            wanted_rank: 2,
            current_rank: current,
        }
    }

    fn audio() -> TrackDemand {
        TrackDemand {
            audio: true,
            priority: 0,
            layers: vec![LayerOffer {
                rank: 0,
                bps: 64_000.0,
            }],
            wanted_rank: 0,
            current_rank: Some(0),
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
                Allotment::UpTo(u8::MAX),
                Allotment::Paused,
                Allotment::UpTo(0)
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
                Allotment::UpTo(u8::MAX),
                Allotment::Paused,
                Allotment::UpTo(0)
            ]
        );
        // 2 Mbit/s: both low layers, then the speaker as high as fits (full), the other stays
        // low: the 286 kbit/s left do not pay for its middle layer.
        assert_eq!(
            allocate(2_000_000.0, &tracks),
            [
                Allotment::UpTo(u8::MAX),
                Allotment::UpTo(0),
                Allotment::UpTo(2)
            ]
        );
        // 2.2 Mbit/s: 486 kbit/s left, and the other track's middle layer fits.
        assert_eq!(
            allocate(2_200_000.0, &tracks),
            [
                Allotment::UpTo(u8::MAX),
                Allotment::UpTo(1),
                Allotment::UpTo(2)
            ]
        );
        // Plenty: both as high as asked.
        assert_eq!(
            allocate(10_000_000.0, &tracks),
            [
                Allotment::UpTo(u8::MAX),
                Allotment::UpTo(2),
                Allotment::UpTo(2)
            ]
        );
    }

    #[test]
    fn audio_is_sent_even_when_the_estimate_cannot_carry_it() {
        let tracks = [audio(), simulcast(1, Some(0))];
        assert_eq!(
            allocate(32_000.0, &tracks),
            [Allotment::UpTo(u8::MAX), Allotment::Paused]
        );
    }

    #[test]
    fn never_above_what_the_subscriber_asked_for() {
        let mut small_tile = simulcast(0, None);
        small_tile.wanted_rank = 0;
        assert_eq!(allocate(10_000_000.0, &[small_tile]), [Allotment::UpTo(0)]);
    }

    #[test]
    fn moving_up_needs_headroom_staying_does_not() {
        // 520 kbit/s covers the middle layer's 500 but not 500 x 1.15.
        assert_eq!(
            allocate(520_000.0, &[simulcast(0, Some(0))]),
            [Allotment::UpTo(0)]
        );
        assert_eq!(
            allocate(520_000.0, &[simulcast(0, Some(1))]),
            [Allotment::UpTo(1)]
        );
        assert_eq!(
            allocate(580_000.0, &[simulcast(0, Some(0))]),
            [Allotment::UpTo(1)]
        );
    }

    #[test]
    fn a_probe_aims_at_the_next_layer_of_the_most_important_held_back_track() {
        let tracks = [audio(), simulcast(0, Some(0)), simulcast(2, Some(0))];
        let allotments = allocate(400_000.0, &tracks);
        assert_eq!(
            allotments,
            [
                Allotment::UpTo(u8::MAX),
                Allotment::UpTo(0),
                Allotment::UpTo(0)
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

    #[test]
    fn a_single_layer_track_is_sent_or_paused() {
        let single = TrackDemand {
            audio: false,
            priority: 0,
            layers: vec![LayerOffer {
                rank: 0,
                bps: 800_000.0,
            }],
            wanted_rank: 2,
            current_rank: Some(0),
        };
        assert_eq!(
            allocate(900_000.0, std::slice::from_ref(&single)),
            [Allotment::UpTo(0)]
        );
        assert_eq!(allocate(700_000.0, &[single]), [Allotment::Paused]);
    }
}
