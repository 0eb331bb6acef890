//! Rooms and sessions: which pipelines the shard hosts, who is in each, who may join
//! (admission), and the signaling messages that fan out to a room.
//!
//! The registry owns that state; it knows nothing of connections or tracks. Removing a
//! session's media is the core's job (it holds the other parts); the registry then lets
//! the session go and keeps each room's seat count and empty-since time right.

use super::{Presence, Room, SEAT_GRACE, Session};
use crate::metrics::ShardMetrics;
use crate::signal::protocol::{ErrorCode, ServerMessage};
use api::{AdminError, JoinError, JoinRequest, PipelineSpec, SessionId};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;
use tutti_shard_api::nickname::nickname_key;

use super::api;

/// What a session is told when its signaling queue overflowed.
const SLOW_CONSUMER: &str = "slow consumer: signaling queue overflowed";

/// The shard's rooms and sessions.
#[derive(Default)]
pub(super) struct Registry {
    rooms: HashMap<String, Room>,
    sessions: HashMap<SessionId, Session>,
    /// Sessions to end after the current step, with the reason they are told.
    doomed: Vec<(SessionId, &'static str)>,
    /// Whether the shard refuses new rooms and joins.
    draining: bool,
}

impl Registry {
    // ---------------------------------------------------------------- rooms

    /// One room.
    pub(super) fn room(&self, name: &str) -> Option<&Room> {
        self.rooms.get(name)
    }

    /// One room, to change.
    pub(super) fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        self.rooms.get_mut(name)
    }

    /// Every room.
    pub(super) fn rooms(&self) -> impl Iterator<Item = (&String, &Room)> {
        self.rooms.iter()
    }

    /// How many rooms (pipelines) are hosted.
    pub(super) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Creates the pipeline `name`, or changes its spec. Returns whether it was created.
    pub(super) fn put_room(
        &mut self,
        name: &str,
        spec: PipelineSpec,
        max_pipelines: usize,
        now: Instant,
    ) -> Result<bool, AdminError> {
        if let Some(room) = self.rooms.get_mut(name) {
            room.spec = spec;
            return Ok(false);
        }
        if self.draining {
            return Err(AdminError::Draining);
        }
        if self.rooms.len() >= max_pipelines {
            return Err(AdminError::AtCapacity(max_pipelines));
        }
        self.rooms.insert(name.to_owned(), Room::new(spec, now));
        Ok(true)
    }

    /// Forgets a room whose sessions are gone.
    pub(super) fn remove_room(&mut self, name: &str) {
        self.rooms.remove(name);
    }

    /// Refuses new rooms and joins from now on.
    pub(super) fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether the shard is draining.
    pub(super) fn is_draining(&self) -> bool {
        self.draining
    }

    // ---------------------------------------------------------------- sessions

    /// One session.
    pub(super) fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// One session, to change.
    pub(super) fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// Every session.
    pub(super) fn sessions(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.sessions.iter().map(|(id, s)| (*id, s))
    }

    /// Every session's id.
    pub(super) fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// Sessions that take a seat: participants and viewers, not relays.
    pub(super) fn seated(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.presence.takes_seat())
            .count()
    }

    /// Seated sessions of `room`.
    pub(super) fn seated_in(&self, room: &Room) -> usize {
        room.sessions
            .iter()
            .filter_map(|s| self.sessions.get(s))
            .filter(|s| s.presence.takes_seat())
            .count()
    }

    /// The recorders in `room` that are not leaving.
    pub(super) fn recorders_in(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |room| {
            room.sessions
                .iter()
                .filter_map(|s| self.sessions.get(s))
                .filter(|s| s.recorder && !s.closing)
                .count()
        })
    }

    /// The announced sessions of `room` (participants others see), in joining order.
    pub(super) fn announced_in(&self, room: &str) -> Vec<SessionId> {
        self.rooms.get(room).map_or_else(Vec::new, |room| {
            room.sessions
                .iter()
                .copied()
                .filter(|s| self.sessions.get(s).is_some_and(|s| s.presence.announced()))
                .collect()
        })
    }

    // ---------------------------------------------------------------- admission

    /// Makes sure `request`'s room is here to join: refused while draining, created with
    /// `auto_create` when that is set and there is room for another pipeline.
    pub(super) fn room_for_join(
        &mut self,
        request: &JoinRequest,
        auto_create: Option<&PipelineSpec>,
        max_pipelines: usize,
        now: Instant,
    ) -> Result<(), JoinError> {
        if self.draining {
            return Err(JoinError::new(
                ErrorCode::ShardDraining,
                "this shard is draining; join again to be placed elsewhere",
            ));
        }
        if self.rooms.contains_key(&request.room) {
            return Ok(());
        }
        match auto_create {
            Some(spec) if self.rooms.len() < max_pipelines => {
                self.rooms
                    .insert(request.room.clone(), Room::new(spec.clone(), now));
                Ok(())
            }
            _ => Err(JoinError::new(
                ErrorCode::RoomNotFound,
                format!("room {} is not hosted here", request.room),
            )),
        }
    }

    /// The session `request` replaces: the same participant's, in the same room.
    pub(super) fn replaced_by(&self, request: &JoinRequest) -> Option<SessionId> {
        self.rooms
            .get(&request.room)?
            .by_participant
            .get(&request.participant)
            .copied()
    }

    /// When `request` would find its room full: the session that has held a seat
    /// longest without ever connecting media, if it has held it past [`SEAT_GRACE`].
    pub(super) fn seat_squatter(&self, request: &JoinRequest, now: Instant) -> Option<SessionId> {
        let room = self.rooms.get(&request.room)?;
        if !Presence::for_join(room, request).takes_seat() {
            return None;
        }
        let seated: Vec<(SessionId, &Session)> = room
            .sessions
            .iter()
            .filter_map(|id| self.sessions.get(id).map(|s| (*id, s)))
            .filter(|(_, s)| s.presence.takes_seat())
            .collect();
        if seated.len() < room.spec.max_participants as usize {
            return None;
        }
        seated
            .into_iter()
            .filter(|(_, s)| {
                !s.media_seen && now.saturating_duration_since(s.joined_at) >= SEAT_GRACE
            })
            .min_by_key(|(_, s)| s.joined_at)
            .map(|(id, _)| id)
    }

    /// Whether `request` may join its room, and how it would be present: its nickname
    /// must be free, its room must have a seat for it and the shard room for a session.
    pub(super) fn admit(
        &self,
        request: &JoinRequest,
        max_sessions: usize,
    ) -> Result<Presence, JoinError> {
        let Some(room) = self.rooms.get(&request.room) else {
            return Err(JoinError::new(ErrorCode::RoomNotFound, "room was released"));
        };
        let presence = Presence::for_join(room, request);
        let nickname = nickname_key(&request.name);
        let taken = presence.announced()
            && room
                .sessions
                .iter()
                .filter_map(|s| self.sessions.get(s))
                .any(|s| s.presence.announced() && nickname_key(&s.name).clashes(&nickname));
        if taken {
            return Err(JoinError::new(
                ErrorCode::NicknameTaken,
                format!(
                    "someone in room {} is already called {}",
                    request.room, request.name
                ),
            ));
        }
        if presence.takes_seat() && self.seated_in(room) >= room.spec.max_participants as usize {
            return Err(JoinError::new(
                ErrorCode::RoomFull,
                format!(
                    "room {} is full ({} participants)",
                    request.room, room.spec.max_participants
                ),
            ));
        }
        if self.sessions.len() >= max_sessions {
            return Err(JoinError::new(
                ErrorCode::RoomFull,
                "this shard is at capacity",
            ));
        }
        Ok(presence)
    }

    /// Adds a session to its room (which must exist).
    pub(super) fn enter(&mut self, id: SessionId, session: Session) {
        if let Some(room) = self.rooms.get_mut(&session.room) {
            room.sessions.push(id);
            room.by_participant.insert(session.participant.clone(), id);
            if session.presence.takes_seat() {
                room.empty_since = None;
            }
        }
        self.sessions.insert(id, session);
    }

    /// Takes a session out of its room; a room left without a seated session starts its
    /// empty time.
    pub(super) fn leave(&mut self, id: SessionId, now: Instant) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        if let Some(room) = self.rooms.get_mut(&session.room) {
            room.sessions.retain(|s| *s != id);
            if room.by_participant.get(&session.participant) == Some(&id) {
                room.by_participant.remove(&session.participant);
            }
            let seated = room
                .sessions
                .iter()
                .filter_map(|s| self.sessions.get(s))
                .any(|s| s.presence.takes_seat());
            if !seated && room.empty_since.is_none() {
                room.empty_since = Some(now);
            }
        }
        Some(session)
    }

    // ---------------------------------------------------------------- fan-out

    /// Sends a message to a session; a session whose queue is full is ended after the
    /// current step.
    pub(super) fn send(
        &mut self,
        metrics: &ShardMetrics,
        session: SessionId,
        message: ServerMessage,
    ) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if let ServerMessage::Error { code, .. } = &message {
            metrics.error(*code);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = s.events.try_send(message) {
            metrics.error(ErrorCode::SlowConsumer);
            self.doomed.push((session, SLOW_CONSUMER));
        }
    }

    /// Sends a message to every session of a room except `except` and those being removed.
    pub(super) fn broadcast(
        &mut self,
        metrics: &ShardMetrics,
        room: &str,
        except: Option<SessionId>,
        message: &ServerMessage,
    ) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        for &session in &room.sessions {
            if Some(session) == except {
                continue;
            }
            // A session being removed is told `left` and hears nothing more: a shard
            // that stops must not show each of its viewers the stage emptying first.
            let Some(s) = self.sessions.get(&session).filter(|s| !s.closing) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = s.events.try_send(message.clone()) {
                metrics.error(ErrorCode::SlowConsumer);
                self.doomed.push((session, SLOW_CONSUMER));
            }
        }
    }

    /// Ends `session` after the current step, telling it `reason`.
    pub(super) fn doom(&mut self, session: SessionId, reason: &'static str) {
        self.doomed.push((session, reason));
    }

    /// The next session to end.
    pub(super) fn next_doomed(&mut self) -> Option<(SessionId, &'static str)> {
        self.doomed.pop()
    }

    // ---------------------------------------------------------------- checks

    /// Whether rooms and sessions name each other correctly (see [`super::invariants`]).
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.doomed.is_empty() {
            return Err(format!(
                "{} sessions still doomed after a step",
                self.doomed.len()
            ));
        }
        for (name, room) in &self.rooms {
            for id in &room.sessions {
                match self.sessions.get(id) {
                    Some(s) if &s.room == name => {}
                    Some(s) => return Err(format!("room {name} lists session {id} of {}", s.room)),
                    None => return Err(format!("room {name} lists session {id}, which is gone")),
                }
            }
            for (participant, id) in &room.by_participant {
                if !room.sessions.contains(id) {
                    return Err(format!(
                        "room {name}: {participant} names session {id}, not in the room"
                    ));
                }
            }
        }
        for (id, session) in &self.sessions {
            let room = self.rooms.get(&session.room).ok_or_else(|| {
                format!("session {id} is in room {}, which is gone", session.room)
            })?;
            if !room.sessions.contains(id) {
                return Err(format!(
                    "session {id} is missing from room {}",
                    session.room
                ));
            }
        }
        Ok(())
    }
}
