//! What must hold between the core's maps after every step: the simulation checks it
//! after each one, so a refactoring that leaves a session, peer or track half-removed
//! fails the test that caused it, at the step that caused it.

use super::ShardCore;

impl ShardCore {
    /// How many peer connections the core holds.
    pub fn connections(&self) -> usize {
        self.transport.peers().count()
    }

    /// Every cross-reference between rooms, sessions, peers and tracks, checked; the
    /// first broken one is described.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.registry.check()?;
        for (name, room) in self.registry.rooms() {
            for key in &room.tracks {
                match self.media.track(*key) {
                    Some(t) if &t.room == name => {}
                    _ => return Err(format!("room {name} lists track {key}, not its own")),
                }
            }
        }
        for (id, session) in self.registry.sessions() {
            for key in [session.publisher, session.subscriber]
                .into_iter()
                .flatten()
            {
                match self.transport.peer(key) {
                    Some(peer) if peer.session == id => {}
                    _ => return Err(format!("session {id} names peer {key}, not its own")),
                }
            }
            for key in &session.tracks {
                match self.media.track(*key) {
                    Some(t) if t.session == id => {}
                    _ => return Err(format!("session {id} lists track {key}, not its own")),
                }
            }
        }
        for (key, peer) in self.transport.peers() {
            let session = self.registry.session(peer.session).ok_or_else(|| {
                format!(
                    "peer {key} belongs to session {}, which is gone",
                    peer.session
                )
            })?;
            if session.publisher != Some(key) && session.subscriber != Some(key) {
                return Err(format!(
                    "peer {key} is not a connection of session {}",
                    peer.session
                ));
            }
            for (ssrc, incoming) in &peer.incoming {
                let (track, layer) = (incoming.track, incoming.layer);
                match self.media.track(track) {
                    Some(t) if t.peer == Some(key) && layer < t.layers.len() => {}
                    _ => {
                        return Err(format!(
                            "peer {key}: incoming SSRC {ssrc} names track {track} layer {layer}"
                        ));
                    }
                }
            }
            let offers = session.offer_subscriber && session.subscriber == Some(key);
            if !peer.slots.is_empty() && !offers {
                return Err(format!(
                    "peer {key} has slots but its client does not offer"
                ));
            }
            for slot in &peer.slots {
                slot.check(key, peer, &self.media)?;
            }
            for (ssrc, track) in &peer.outgoing {
                let sent = self.media.track(*track).is_some_and(|t| {
                    t.downtracks
                        .iter()
                        .any(|d| d.peer == key && d.ssrc == *ssrc)
                });
                if !sent {
                    return Err(format!(
                        "peer {key}: outgoing SSRC {ssrc} has no downtrack of track {track}"
                    ));
                }
            }
        }
        for (key, track) in self.media.tracks() {
            if self.registry.session(track.session).is_none() {
                return Err(format!(
                    "track {key} belongs to session {}, which is gone",
                    track.session
                ));
            }
            if let Some(peer) = track.peer
                && self.transport.peer(peer).is_none()
            {
                return Err(format!("track {key} comes from peer {peer}, which is gone"));
            }
            for entry in &track.downtracks {
                let outgoing = self
                    .transport
                    .peer(entry.peer)
                    .and_then(|p| p.outgoing.get(&entry.ssrc));
                if outgoing != Some(&key) {
                    return Err(format!(
                        "track {key}: the downtrack to peer {} is not in its map",
                        entry.peer
                    ));
                }
            }
        }
        self.transport.check()
    }
}
