//! An edge's side of a relay: tracks that arrive from a parent shard instead of from a
//! publisher connection.
//!
//! The relay client (`crate::relay`) learns the parent's tracks over signaling, and their
//! packets arrive on a pipe (`pipe.rs`); both end up here. Each publisher at the parent becomes a session of its own in
//! the edge's pipeline (announced, taking no seat, with no connection), each relayed
//! track a published track whose layers are the copies the client relays. From there the
//! packets take the same path as a publisher's: one retransmission buffer per layer,
//! keyframe requests throttled per layer — and sent up to the parent, which throttles
//! them again — so however many viewers ask, the presenter sees a trickle.

use super::api::{RelayDemand, RelayHandle, RelayedTrack, SessionId};
use super::{Layer, Presence, PublishedTrack, Session, ShardCore, TrackKey};
use crate::media::codec::CodecFamily;
use crate::media::keyframe::KeyframeThrottle;
use crate::media::retransmit::{DEFAULT_CAPACITY, RetransmitBuffer};
use crate::signal::protocol::{ParticipantInfo, ServerMessage, TrackKind};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;

/// Simulcast layer names for relayed copies, lowest first.
const LAYER_NAMES: [&str; 3] = ["q", "h", "f"];

/// The rid an edge gives the relayed copy of rank `rank` (its relay link of that rank).
pub fn relayed_layer_rid(rank: u8) -> &'static str {
    LAYER_NAMES
        .get(usize::from(rank))
        .copied()
        .unwrap_or(LAYER_NAMES[LAYER_NAMES.len() - 1])
}

/// A pipeline's feed from its parent shard.
pub(crate) struct RelayFeed {
    /// Publisher at the parent → its session here.
    sessions: HashMap<String, SessionId>,
    /// Which layers of each relayed track this edge needs, for the relay client.
    demand: RelayDemand,
    /// The parent says its room is being recorded.
    pub(super) recording: bool,
}

impl ShardCore {
    /// A relay client starts feeding `room`; a previous feed's participants go.
    pub(super) fn relay_attach(&mut self, room: &str, demand: RelayDemand, now: Instant) -> bool {
        if self.registry.room(room).is_none() {
            return false;
        }
        self.relay_detach(room, now);
        if let Some(r) = self.registry.room_mut(room) {
            r.relay = Some(RelayFeed {
                sessions: HashMap::new(),
                demand,
                recording: false,
            });
        }
        true
    }

    /// Dynacast for a relayed track: the layers nobody at this edge needs are turned off
    /// upstream by the relay client instead of at a publisher (the relayed session has no
    /// client). Returns the message when `session` is not a relayed one.
    pub(super) fn relay_demand(
        &mut self,
        session: SessionId,
        message: ServerMessage,
    ) -> Option<ServerMessage> {
        let ServerMessage::PublishLayers { track, active, .. } = &message else {
            return Some(message);
        };
        let Some(s) = self.registry.session(session) else {
            return Some(message);
        };
        if s.presence != Presence::Relayed {
            return Some(message);
        }
        // The layers it has that are not kept, not those missing from `active`: a layer
        // whose link has not announced it yet is not off.
        let off: Vec<String> = self
            .media
            .tracks()
            .find(|(_, t)| t.session == session && t.source_track_id == *track)
            .map(|(_, t)| {
                t.layers
                    .iter()
                    .filter(|layer| !active.contains(&layer.rid))
                    .map(|layer| layer.rid.clone())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(feed) = self.registry.room(&s.room).and_then(|r| r.relay.as_ref()) {
            feed.demand.send_modify(|demand| {
                if off.is_empty() {
                    demand.remove(track);
                } else {
                    demand.insert(track.clone(), off);
                }
            });
        }
        None
    }

    /// The feed stopped: its participants and tracks leave the room, and its pipes close.
    pub(super) fn relay_detach(&mut self, room: &str, now: Instant) {
        self.pipe_close_room(room);
        let feed = self.registry.room_mut(room).and_then(|r| r.relay.take());
        // Without a parent, whether the stage is recorded is not known: not claimed.
        if feed.as_ref().is_some_and(|f| f.recording) {
            self.broadcast(room, None, ServerMessage::Recording { active: false });
        }
        let sessions: Vec<_> = feed
            .map(|feed| feed.sessions.into_values().collect())
            .unwrap_or_default();
        for session in sessions {
            self.remove_session(session, now, None);
        }
    }

    /// The parent's room started or stopped being recorded: everyone here is told (the
    /// viewers, and the relays of edges below, which tell theirs).
    pub(super) fn relay_recording(&mut self, room: &str, active: bool) {
        let Some(feed) = self.registry.room_mut(room).and_then(|r| r.relay.as_mut()) else {
            return;
        };
        if feed.recording == active {
            return;
        }
        feed.recording = active;
        self.broadcast(room, None, ServerMessage::Recording { active });
    }

    /// A publisher at the parent appeared or went.
    pub(super) fn relay_participant(
        &mut self,
        room: &str,
        participant: &str,
        name: &str,
        present: bool,
        now: Instant,
    ) {
        let existing = self
            .registry
            .room(room)
            .and_then(|r| r.relay.as_ref())
            .and_then(|feed| feed.sessions.get(participant).copied());
        match (present, existing) {
            (true, None) => {
                self.relayed_session(room, participant, name, now);
            }
            (false, Some(session)) => {
                let tracks: Vec<String> = self
                    .registry
                    .session(session)
                    .map(|s| s.tracks.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|key| self.media.track(key))
                    .map(|track| track.source_track_id.clone())
                    .collect();
                if let Some(feed) = self.registry.room_mut(room).and_then(|r| r.relay.as_mut()) {
                    feed.sessions.remove(participant);
                    feed.demand.send_if_modified(|demand| {
                        let before = demand.len();
                        for track in &tracks {
                            demand.remove(track);
                        }
                        demand.len() != before
                    });
                }
                self.remove_session(session, now, None);
            }
            _ => {}
        }
    }

    /// A publisher at the parent started or stopped sharing its screen: the edge's viewers
    /// (and its own child edges) are told, and later joiners see it in `joined`.
    pub(super) fn relay_screen_share(&mut self, room: &str, participant: &str, active: bool) {
        let Some(id) = self
            .registry
            .room(room)
            .and_then(|r| r.relay.as_ref())
            .and_then(|feed| feed.sessions.get(participant).copied())
        else {
            return;
        };
        let Some(session) = self.registry.session_mut(id) else {
            return;
        };
        if session.screen_sharing == active {
            return;
        }
        session.screen_sharing = active;
        self.broadcast(
            room,
            Some(id),
            ServerMessage::ScreenShare {
                participant: participant.to_owned(),
                active,
            },
        );
    }

    /// The session standing for a publisher of the parent, created on first need.
    fn relayed_session(
        &mut self,
        room: &str,
        participant: &str,
        name: &str,
        now: Instant,
    ) -> Option<super::api::SessionId> {
        let feed = self.registry.room(room)?.relay.as_ref()?;
        if let Some(session) = feed.sessions.get(participant) {
            return Some(*session);
        }
        let id = self.ids.session();
        // Nobody reads this queue: a relayed participant has no client.
        let (events, _) = mpsc::channel(1);
        self.registry.enter(
            id,
            Session {
                participant: participant.to_owned(),
                name: name.to_owned(),
                room: room.to_owned(),
                events,
                publish: true,
                subscribe: false,
                publisher: None,
                subscriber: None,
                tracks: Vec::new(),
                screen_sharing: false,
                announcements: None,
                joined_at: now,
                // Not a client: it holds no seat and has no connection of its own.
                media_seen: true,
                presence: Presence::Relayed,
                recorder: false,
                closing: false,
                offer_subscriber: false,
            },
        );
        let r = self.registry.room_mut(room)?;
        if let Some(feed) = r.relay.as_mut() {
            feed.sessions.insert(participant.to_owned(), id);
        }
        self.broadcast(
            room,
            Some(id),
            ServerMessage::ParticipantJoined {
                participant: ParticipantInfo {
                    id: participant.to_owned(),
                    name: name.to_owned(),
                    tracks: Vec::new(),
                    screen_sharing: false,
                },
            },
        );
        Some(id)
    }

    /// A relayed track (or one more layer of it) opened: where its packets go.
    pub(super) fn relay_track(
        &mut self,
        relayed: RelayedTrack,
        now: Instant,
    ) -> Option<RelayHandle> {
        let session =
            self.relayed_session(&relayed.room, &relayed.participant, &relayed.name, now)?;
        let (rank, layers) = relayed.layer;
        let rid = if layers > 1 {
            relayed_layer_rid(rank)
        } else {
            ""
        };
        let interval = self.keyframe_interval(&relayed.room);
        let mut rebuilt = false;
        let existing = self.media.tracks_mut().find(|(_, t)| {
            t.peer.is_none() && t.room == relayed.room && t.source_track_id == relayed.track
        });
        if let Some((key, track)) = existing {
            let index = match track.layers.iter().position(|l| l.rid == rid) {
                Some(index) => index,
                None => {
                    track
                        .layers
                        .push(new_layer(rid, rank, relayed.kind, interval));
                    // Dynacast across the cascade: the layers nobody here needs are
                    // turned off upstream. Started afresh as a layer joins, all on, and
                    // so turned on upstream too (below).
                    let count = track.layers.len();
                    track.layer_switch = (2..=crate::media::dynacast::MAX_LAYERS)
                        .contains(&count)
                        .then(|| crate::media::dynacast::LayerSwitch::new(count, now));
                    rebuilt = true;
                    count - 1
                }
            };
            if let Some(layer) = track.layers.get_mut(index) {
                // A layer reopened under another SSRC numbers its packets afresh: its loss
                // is counted from its own first packet, not against the old stream's.
                if layer.ssrc != Some(relayed.ssrc) {
                    layer.loss = Default::default();
                }
                layer.ssrc = Some(relayed.ssrc);
            }
            if rebuilt
                && let Some(feed) = self
                    .registry
                    .room(&relayed.room)
                    .and_then(|r| r.relay.as_ref())
            {
                feed.demand
                    .send_if_modified(|demand| demand.remove(&relayed.track).is_some());
            }
            return Some(RelayHandle {
                track: key,
                layer: index,
            });
        }
        let track_key: TrackKey = self.ids.track();
        let track = PublishedTrack {
            id: format!("TR{}", self.env.token(12)),
            room: relayed.room.clone(),
            session,
            peer: None,
            source_track_id: relayed.track.clone(),
            mid: None,
            kind: relayed.kind,
            family: CodecFamily::from_mime(&relayed.codec.mime_type),
            codec: relayed.codec.clone(),
            layers: vec![{
                let mut layer = new_layer(rid, rank, relayed.kind, interval);
                layer.ssrc = Some(relayed.ssrc);
                layer
            }],
            audio_level_ext: None,
            // A pipe carries a video track's dependency descriptor under a fixed id.
            dependency_ext: (relayed.kind == TrackKind::Video)
                .then_some(super::pipe::PIPE_DEPENDENCY_DESCRIPTOR_ID),
            muted: false,
            downtracks: Vec::new(),
            // One layer so far; a switch comes with the second (above).
            layer_switch: None,
            spatial_switch: None,
        };
        let info = self.track_info(&track);
        self.media.publish(track_key, track);
        if let Some(s) = self.registry.session_mut(session) {
            s.tracks.push(track_key);
        }
        let subscribers: Vec<_> = match self.registry.room_mut(&relayed.room) {
            Some(r) => {
                r.tracks.push(track_key);
                r.sessions
                    .iter()
                    .copied()
                    .filter(|s| *s != session)
                    .collect()
            }
            None => Vec::new(),
        };
        tracing::info!(room = %relayed.room, track = %info.id, kind = ?info.kind, "relayed track published");
        self.broadcast(
            &relayed.room,
            Some(session),
            ServerMessage::TrackPublished {
                participant: relayed.participant.clone(),
                track: info,
            },
        );
        for subscriber in subscribers {
            self.add_downtrack(subscriber, track_key, now);
        }
        self.update_gauges();
        Some(RelayHandle {
            track: track_key,
            layer: 0,
        })
    }

    /// A relayed track ended at the parent.
    pub(super) fn relay_track_ended(&mut self, room: &str, upstream: &str, now: Instant) {
        let keys: Vec<TrackKey> = self
            .media
            .tracks()
            .filter(|(_, t)| t.peer.is_none() && t.room == room && t.source_track_id == upstream)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.unpublish(key, now);
        }
        if let Some(feed) = self.registry.room(room).and_then(|r| r.relay.as_ref()) {
            feed.demand
                .send_if_modified(|demand| demand.remove(upstream).is_some());
        }
    }

    /// Sends a keyframe request for a relayed stream up to the parent, on the pipe that
    /// carries it; whether it went.
    pub(super) fn relay_keyframe_request(&mut self, ssrc: u32) -> bool {
        self.pipe_keyframe_request(ssrc)
    }
}

fn new_layer(rid: &str, rank: u8, kind: TrackKind, interval: std::time::Duration) -> Layer {
    Layer {
        rid: rid.to_owned(),
        rank,
        ssrc: None,
        receiver: None,
        last_packet: None,
        rate: Default::default(),
        temporal_rates: Default::default(),
        spatial_rates: Default::default(),
        spatial_structure: Default::default(),
        dependency_structure: None,
        svc: false,
        loss: Default::default(),
        loss_percent: None,
        buffer: (kind == TrackKind::Video)
            .then(|| RetransmitBuffer::new(DEFAULT_CAPACITY, super::RETRANSMIT_AGE)),
        throttle: KeyframeThrottle::new(interval),
    }
}
