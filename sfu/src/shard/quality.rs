//! How each participant's connection is doing, in one word the room is shown
//! (`connection_quality`), and each subscriber's reception for the admin API: from the
//! loss of what a participant publishes, and the loss, round trip and held-back video of
//! what it receives (`media::quality`).

use super::{LAYER_IDLE, PeerKey, SessionId};
use crate::media::allocation::Allotment;
use crate::media::quality::{Signals, judge, participant_quality};
use std::time::Instant;
use tutti_shard_api::admin::{Reception, SubscriberReception};
use tutti_shard_api::protocol::{ParticipantQuality, ServerMessage};

impl super::ShardCore {
    /// What the shard knows of the reception of subscriber connection `key` in `room`.
    fn downlink_signals(&self, room: &str, key: PeerKey, now: Instant) -> Signals {
        let mut signals = Signals::default();
        for track in self.media.tracks.values().filter(|t| t.room == room) {
            for entry in track.downtracks.iter().filter(|d| d.peer == key) {
                // What the publisher's uplink lost never reached the shard and is missing
                // from the forwarded stream too: not the subscriber's downlink's doing.
                let upstream = entry
                    .state
                    .current_layer()
                    .or((!track.family.is_video()).then_some(0))
                    .and_then(|index| track.layers.get(index))
                    .and_then(|layer| layer.loss_percent)
                    .unwrap_or(0.0);
                let reported = f64::from(entry.fraction_lost) * 100.0 / 256.0;
                signals.loss_percent = signals.loss_percent.max(reported - upstream);
                if !track.family.is_video() {
                    continue;
                }
                match entry.state.allotment() {
                    Allotment::Paused => signals.paused += 1,
                    Allotment::UpTo { rank, .. } => {
                        // Turned off by the subscriber: not held back by its network.
                        let Some(wanted) = entry.state.target().rank() else {
                            continue;
                        };
                        // Only a layer it could have had counts: flowing, or paused at
                        // the publisher while nobody needed it (not one never sent).
                        let available = |index: usize, layer: &super::Layer| {
                            let flowing = layer
                                .last_packet
                                .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE);
                            let paused = track
                                .layer_switch
                                .as_ref()
                                .is_some_and(|s| !s.is_active(index));
                            flowing || (paused && layer.rate.flowing_bps().is_some())
                        };
                        // In an SVC stream, its spatial layers are what it could have.
                        let spatial_above = || {
                            track.layers.iter().any(|l| {
                                l.svc
                                    && l.spatial_rates
                                        .offers(now, LAYER_IDLE, |sid| track.spatial_paused(sid))
                                        .any(|(sid, ..)| sid > rank && sid <= wanted)
                            })
                        };
                        if rank < wanted
                            && (track.layers.iter().enumerate().any(|(index, l)| {
                                l.rank > rank && l.rank <= wanted && available(index, l)
                            }) || spatial_above())
                        {
                            signals.held_back += 1;
                        }
                    }
                }
            }
        }
        signals.rtt_ms = self
            .transport
            .peer(key)
            .and_then(|p| p.downlink.as_deref())
            .and_then(|d| d.rtt())
            .map(|rtt| rtt.as_millis().min(u128::from(u32::MAX)) as u32);
        signals
    }

    /// The worst loss of the last quality window over what `session` publishes and is
    /// still flowing, percent; `None` when it publishes nothing.
    fn uplink_loss(&self, session: SessionId, now: Instant) -> Option<f64> {
        self.media
            .tracks
            .values()
            .filter(|t| t.session == session && t.peer.is_some())
            .flat_map(|t| &t.layers)
            .filter(|l| {
                l.last_packet
                    .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE)
            })
            .filter_map(|l| l.loss_percent)
            .reduce(f64::max)
    }

    /// How each subscriber of pipeline `room` receives: `None` for no such pipeline.
    pub(super) fn subscriber_reception(
        &self,
        room: &str,
        now: Instant,
    ) -> Option<Vec<SubscriberReception>> {
        let pipeline = self.registry.room(room)?;
        let mut out = Vec::new();
        for &id in &pipeline.sessions {
            let Some(session) = self.registry.session(id) else {
                continue;
            };
            let Some(key) = session.subscriber else {
                continue;
            };
            let Some(peer) = self.transport.peer(key) else {
                continue;
            };
            let signals = self.downlink_signals(room, key, now);
            let uplink_loss = self.uplink_loss(id, now);
            let downlink = peer.downlink.as_deref();
            out.push(SubscriberReception {
                participant: session.participant.clone(),
                name: session.name.clone(),
                reception: judge(&signals),
                quality: participant_quality(uplink_loss, Some(&signals)),
                loss_percent: signals.loss_percent,
                uplink_loss_percent: uplink_loss,
                downlink_bps: downlink
                    .filter(|d| d.rtt().is_some())
                    .map(|d| d.usable_bps() as u64),
                rtt_ms: signals.rtt_ms,
                congested: downlink.is_some_and(|d| d.congested_once()),
                held_back_tracks: signals.held_back,
                paused_tracks: signals.paused,
            });
        }
        out.sort_by(|a, b| a.participant.cmp(&b.participant));
        Some(out)
    }

    /// Ends the quality window of every published layer, judges each participant, and
    /// tells each room whose words changed, and each session that has not heard them yet.
    pub(super) fn announce_qualities(&mut self, now: Instant) {
        for track in self.media.tracks.values_mut() {
            for layer in &mut track.layers {
                layer.loss_percent = layer.loss.close_window();
            }
        }
        let rooms: Vec<String> = self
            .registry
            .rooms()
            .map(|(name, _)| name.clone())
            .collect();
        let (mut fair, mut poor) = (0i64, 0i64);
        for room in rooms {
            let Some(pipeline) = self.registry.room(&room) else {
                continue;
            };
            let mut qualities = Vec::with_capacity(pipeline.sessions.len());
            for &id in &pipeline.sessions {
                let Some(session) = self.registry.session(id) else {
                    continue;
                };
                // Viewers of a broadcast are never announced; nobody is told about them.
                if !session.presence.announced() {
                    continue;
                }
                let downlink = session
                    .subscriber
                    .map(|key| self.downlink_signals(&room, key, now));
                qualities.push(ParticipantQuality {
                    participant: session.participant.clone(),
                    quality: participant_quality(self.uplink_loss(id, now), downlink.as_ref()),
                });
            }
            qualities.sort_by(|a, b| a.participant.cmp(&b.participant));
            for q in &qualities {
                match q.quality {
                    Reception::Good => {}
                    Reception::Fair => fair += 1,
                    Reception::Poor => poor += 1,
                }
            }
            let sessions: Vec<SessionId> = pipeline.sessions.clone();
            match self.announced_qualities.get_mut(&room) {
                // Unchanged: only a session that never had it (a newcomer, a participant
                // back on a new session, a viewer) is told.
                Some((told, heard)) if *told == qualities => {
                    let newcomers: Vec<SessionId> = sessions
                        .iter()
                        .copied()
                        .filter(|s| !heard.contains(s))
                        .collect();
                    heard.retain(|s| sessions.contains(s));
                    heard.extend(newcomers.iter().copied());
                    for session in newcomers {
                        self.send(
                            session,
                            ServerMessage::ConnectionQuality {
                                qualities: qualities.clone(),
                            },
                        );
                    }
                }
                _ => {
                    self.announced_qualities.insert(
                        room.clone(),
                        (qualities.clone(), sessions.into_iter().collect()),
                    );
                    self.broadcast(&room, None, ServerMessage::ConnectionQuality { qualities });
                }
            }
        }
        self.announced_qualities
            .retain(|room, _| self.registry.room(room).is_some());
        self.metrics.participants_fair.set(fair);
        self.metrics.participants_poor.set(poor);
    }
}
