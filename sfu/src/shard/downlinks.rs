//! What each subscriber's downlink gets: the estimate shared among its tracks
//! (`media::allocation`) and probes with padding before a track moves up (`media::probe`).
//!
//! Nothing is held back from a subscriber whose path has never been congested: its
//! estimate starts low and grows slowly, and holding a healthy viewer to it would start
//! every call on the lowest layer. Once the estimate has gone down, the sharing applies,
//! and only a probe that the path survives brings a track back up.

use super::router::MediaRouter;
use super::transport::Transport;
use super::{LAYER_IDLE, PeerKey, PublishedTrack, SessionId, TrackKey};
use crate::media::allocation::{Allotment, LayerOffer, TrackDemand, allocate, probe_goal};
use crate::media::probe::{ProbeResult, Prober, Target};
use crate::metrics::ShardMetrics;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The largest padding one RTP packet carries (its length is one byte).
const MAX_PADDING: usize = 255;

impl MediaRouter {
    /// Shares the downlink of each subscriber whose path has been congested among the
    /// tracks it receives, and starts a probe where that held a track back. `sharing`
    /// holds the sessions sharing a screen (their video goes first).
    pub(super) fn allocate_downlinks(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        sharing: &HashSet<SessionId>,
        now: Instant,
    ) {
        let (mut congested, mut held) = (0i64, 0i64);
        let any_congested = transport
            .peers()
            .any(|(_, peer)| peer.downlink.as_deref().is_some_and(|d| d.congested_once()));
        if !any_congested {
            // The common case: nothing to share, and no list of every downtrack to build.
            metrics.congested_subscribers.set(0);
            metrics.held_back_video.set(0);
            return;
        }
        let mut by_peer: HashMap<PeerKey, Vec<(TrackKey, usize)>> = HashMap::new();
        for (key, track) in &self.tracks {
            for (index, entry) in track.downtracks.iter().enumerate() {
                by_peer.entry(entry.peer).or_default().push((*key, index));
            }
        }
        for (peer_key, list) in by_peer {
            let Some(peer) = transport.peer_mut(peer_key) else {
                continue;
            };
            let Some(estimate) = peer.downlink.as_deref() else {
                continue;
            };
            if !estimate.congested_once() {
                continue;
            }
            congested += 1;
            let mut demands = Vec::with_capacity(list.len());
            let mut placed = Vec::with_capacity(list.len());
            for &(track_key, index) in &list {
                let Some(track) = self.tracks.get(&track_key) else {
                    continue;
                };
                let Some(entry) = track.downtracks.get(index) else {
                    continue;
                };
                let speaker = self.speakers.get(&track.room).and_then(|s| s.current());
                // A track the subscriber turned off asks nothing of its downlink.
                let Some(demand) = demand(track, entry, speaker, sharing, now) else {
                    continue;
                };
                // A track with nothing flowing (muted, stalled) keeps what it had.
                if !demand.layers.is_empty() {
                    demands.push(demand);
                    placed.push((track_key, index));
                }
            }
            let usable_bps = estimate.usable_bps();
            let allotments = allocate(usable_bps, &demands);
            let goal = probe_goal(&demands, &allotments);
            let evidence = estimate.evidence();
            for (((track_key, index), allotment), demand) in
                placed.into_iter().zip(allotments).zip(&demands)
            {
                let held_back = match allotment {
                    Allotment::Paused => !demand.audio,
                    Allotment::UpTo { rank, temporal } => demand
                        .layers
                        .iter()
                        .any(|l| l.level() > (rank, temporal) && l.rank <= demand.wanted_rank),
                };
                held += i64::from(held_back);
                if let Some(entry) = self
                    .tracks
                    .get_mut(&track_key)
                    .and_then(|t| t.downtracks.get_mut(index))
                {
                    if entry.state.allotment() != allotment {
                        tracing::debug!(
                            ?track_key,
                            estimate_bps = usable_bps,
                            ?allotment,
                            offers = ?demand.layers,
                            current = ?demand.current,
                            "allotment changed"
                        );
                    }
                    entry.state.set_allotment(allotment);
                }
            }
            if let Some((sending_bps, goal_bps)) = goal {
                let target = Target {
                    sending_bps,
                    goal_bps,
                    carried_bps: usable_bps,
                };
                let prober = peer.prober.get_or_insert_with(|| Prober::new(now));
                if prober.start(now, target, evidence)
                    && let (Some(until), Some(downlink)) =
                        (prober.padding_until(), peer.downlink.as_mut())
                {
                    tracing::debug!(?peer_key, aim = target.aim_bps(), ?target, "probe started");
                    downlink.measure(now, until);
                }
            }
        }
        metrics.congested_subscribers.set(congested);
        metrics.held_back_video.set(held);
    }

    /// Sends the padding running probes owe by now, and judges those whose feedback is in.
    /// Returns whether a probe is still sending (and wants calling again soon: padding in
    /// bursts of a housekeeping tick would queue at the bottleneck it is meant to test).
    pub(super) fn run_probes(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        now: Instant,
    ) -> bool {
        let mut padding = false;
        let probing: Vec<PeerKey> = transport
            .peers()
            .filter(|(_, peer)| peer.prober.as_ref().is_some_and(Prober::is_active))
            .map(|(key, _)| key)
            .collect();
        for key in probing {
            let due = transport.peer(key).map_or(0, |p| {
                let sent = p.downlink.as_ref().map_or(0, |d| d.measured_sent_bytes());
                p.prober
                    .as_ref()
                    .map_or(0, |prober| prober.padding_due(now, sent))
            });
            if due > 0 {
                // What no stream could carry is owed again on the next call, and a probe
                // that sent nothing is judged on nothing acknowledged, and fails.
                self.send_padding(transport, metrics, key, due, now);
            }
            let Some(peer) = transport.peer_mut(key) else {
                continue;
            };
            let seen = peer
                .downlink
                .as_ref()
                .map(|d| (d.evidence(), d.measured_bps()));
            let result = match (peer.prober.as_mut(), seen) {
                (Some(prober), Some((evidence, received))) => {
                    prober.finish(now, evidence, received)
                }
                _ => None,
            };
            if let (Some(result), Some((evidence, received))) = (result, seen) {
                tracing::debug!(?key, ?result, ?received, ?evidence, "probe judged");
            }
            if let (Some(bps), Some(downlink)) = (
                result.and_then(ProbeResult::carried_bps),
                peer.downlink.as_mut(),
            ) {
                downlink.prove(bps);
            }
            padding |= peer.prober.as_ref().is_some_and(|p| p.is_padding(now));
        }
        padding
    }

    /// Sends `bytes` of padding to subscriber `key` on one of the video streams it is
    /// receiving, in padding-only packets; returns how many bytes went.
    fn send_padding(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        key: PeerKey,
        bytes: usize,
        now: Instant,
    ) -> usize {
        // A flowing stream if there is one, else a paused one.
        let Some(entry) = self
            .tracks
            .values_mut()
            .filter(|t| t.family.is_video())
            .flat_map(|t| t.downtracks.iter_mut())
            .filter(|d| d.peer == key)
            .max_by_key(|d| d.state.current_layer().is_some())
        else {
            return 0;
        };
        let Some(mut subscriber) = transport.tx(key, now) else {
            return 0;
        };
        let mut padding = [0u8; MAX_PADDING];
        let mut sent = 0;
        while sent < bytes {
            let len = (bytes - sent).clamp(1, MAX_PADDING);
            padding[len - 1] = len as u8;
            match entry.send_probe_padding(&mut subscriber, &padding[..len], now) {
                Some(_) => {
                    metrics.probe_padding_bytes.inc_by(len as u64);
                    sent += len;
                }
                None => break,
            }
            padding[len - 1] = 0;
        }
        sent
    }
}

/// What one downtrack of `track` asks of the subscriber's downlink; `None` for video the
/// subscriber turned off.
fn demand(
    track: &PublishedTrack,
    entry: &super::DowntrackEntry,
    speaker: Option<SessionId>,
    sharing: &HashSet<SessionId>,
    now: Instant,
) -> Option<TrackDemand> {
    let audio = !track.family.is_video();
    let wanted_rank = if audio {
        0
    } else {
        entry.state.target().rank()?
    };
    let temporal = entry.state.temporal_layer();
    let (layers, current) = match &track.layers[..] {
        [layer] if layer.svc => (
            spatial_offers(track, layer, now),
            entry
                .state
                .current_layer()
                .map(|_| (entry.state.spatial_layer(), temporal)),
        ),
        _ => (
            simulcast_offers(track, now),
            entry
                .state
                .current_layer()
                .and_then(|i| track.layers.get(i))
                .map(|l| (l.rank, temporal)),
        ),
    };
    Some(TrackDemand {
        audio,
        priority: priority(track, speaker, sharing),
        layers,
        wanted_rank,
        current,
    })
}

/// An SVC stream's offers (one layer of spatial layers): each spatial layer, at what it
/// and the ones below it cost, and below them the base layer at a lower frame rate.
fn spatial_offers(track: &PublishedTrack, layer: &super::Layer, now: Instant) -> Vec<LayerOffer> {
    let mut offers: Vec<LayerOffer> = layer
        .spatial_rates
        .offers(now, LAYER_IDLE, |sid| track.spatial_paused(sid))
        .map(|(sid, bps, peak)| LayerOffer::whole(sid, bps).with_peak(peak))
        .collect();
    if offers.first().is_some_and(|l| l.rank == 0) {
        offers.extend(
            layer
                .temporal_rates
                .partial()
                .map(|(temporal, bps)| LayerOffer::partial(0, temporal, bps)),
        );
    }
    offers
}

/// A track's simulcast offers: the layers flowing, and those paused at the publisher
/// because nobody needed them (dynacast), at what they cost while they flowed: a
/// subscriber's allotment may reach them, which is what resumes them.
fn simulcast_offers(track: &PublishedTrack, now: Instant) -> Vec<LayerOffer> {
    let mut layers = track
        .layers
        .iter()
        .enumerate()
        .filter_map(|(index, l)| {
            let flowing = l
                .last_packet
                .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE);
            if flowing {
                // A layer just resumed reads as silent for its first second: it costs
                // what it cost before.
                let flowed = l.rate.flowing_bps().unwrap_or(0.0);
                return Some(
                    LayerOffer::whole(l.rank, l.rate.bps().max(flowed))
                        .with_peak(l.rate.peak_bps()),
                );
            }
            let paused = track
                .layer_switch
                .as_ref()
                .is_some_and(|s| !s.is_active(index));
            paused
                .then(|| l.rate.flowing_bps())
                .flatten()
                .map(|bps| LayerOffer::whole(l.rank, bps))
        })
        .collect::<Vec<_>>();
    // Below the lowest layer at its full frame rate, the same layer at a lower one (its
    // lower temporal layers), so that a downlink too narrow for it still gets video. Like
    // the whole layer, at what it cost while it flowed if nobody needs it now.
    if let Some(lowest) = layers.iter().map(|l| l.rank).min()
        && let Some(layer) = track.layers.iter().find(|l| l.rank == lowest)
    {
        layers.extend(
            layer
                .temporal_rates
                .partial()
                .map(|(temporal, bps)| LayerOffer::partial(lowest, temporal, bps)),
        );
    }
    layers
}

/// How much a track matters to its subscribers: a screen share most, then the active
/// speaker, then the rest.
fn priority(
    track: &PublishedTrack,
    speaker: Option<SessionId>,
    sharing: &HashSet<SessionId>,
) -> u8 {
    if sharing.contains(&track.session) {
        2
    } else if speaker == Some(track.session) {
        1
    } else {
        0
    }
}
