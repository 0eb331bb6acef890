//! Subscriber connections the client offers (a WHEP viewer): the shard answers and never
//! offers on them.
//!
//! Such a client cannot take a renegotiation, so what it receives cannot grow or shrink
//! with the room. Each audio or video section it offered becomes a *slot*: a sender of the
//! shard's, fixed for the life of the connection, that carries one of the room's tracks of
//! its kind at a time, in the order they were published. When a slot's track goes away the
//! next free one takes its place, from its next keyframe, with the slot's numbering running
//! on: to the client it is one stream whose picture changes.

use super::api::SessionId;
use super::guarded::MovedIn;
use super::negotiate::bind_downtrack;
use super::sdp::{Direction, checked_sections, tune_opus};
use super::{DowntrackEntry, PeerKey, ShardCore, TrackKey};
use crate::media::rtx::RtxStream;
use crate::peer::PeerRole;
use crate::signal::protocol::{ErrorCode, PeerTarget, ServerMessage, TrackKind};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection};
use std::time::Instant;

/// One section of a client's offer, answered with a sender of the shard's.
pub(crate) struct Slot {
    kind: TrackKind,
    /// The section's `a=mid`.
    mid: String,
    /// Whether the client receives on it (`recvonly`); an inactive one stays empty.
    live: bool,
    ssrc: u32,
    sender: RTCRtpSenderId,
    /// The track it carries now.
    source: Option<TrackKey>,
    /// Its stream while it carries nothing (or before it first did): kept so that the
    /// next track's packets number on from the last one's.
    parked: Option<DowntrackEntry>,
    /// The video's RTX stream, until the slot's first stream is made.
    rtx: Option<RtxStream>,
}

impl ShardCore {
    /// A client's offer of its subscriber connection: the first one makes the slots, a
    /// later one (an ICE restart) is answered with fresh credentials and nothing else new.
    pub(super) fn on_subscriber_offer(&mut self, session: SessionId, sdp: String, now: Instant) {
        let Some(s) = self.registry.session(session) else {
            return;
        };
        if !s.subscribe {
            self.send_error(
                session,
                ErrorCode::Forbidden,
                "this participant may not receive",
            );
            return;
        }
        let room = s.room.clone();
        let existing = s.subscriber;
        let sections = match checked_sections(&sdp) {
            Ok(sections) => sections,
            Err(why) => {
                self.send_error(session, ErrorCode::SdpRejected, format!("offer: {why}"));
                return;
            }
        };
        // Every audio and video section gets a slot, in order: `rtc` made a transceiver for
        // each (a rejected or inactive one too), and `add_track` takes them in order, so
        // slots and sections stay paired. Only those the client receives on are filled.
        let mut wanted: Vec<(TrackKind, String, bool)> = Vec::new();
        for section in &sections {
            let kind = match section.kind.as_str() {
                "audio" => TrackKind::Audio,
                "video" => TrackKind::Video,
                _ => continue,
            };
            if section.port != 0
                && matches!(section.direction, Direction::SendOnly | Direction::SendRecv)
            {
                self.send_error(
                    session,
                    ErrorCode::SdpRejected,
                    "offer: a subscriber connection only receives (recvonly sections)",
                );
                return;
            }
            let Some(mid) = section.mid.clone() else {
                self.send_error(
                    session,
                    ErrorCode::SdpRejected,
                    "offer: a section has no mid",
                );
                return;
            };
            // `rtc` makes no transceiver for a section without a direction attribute, and
            // the slots pair with transceivers in order: such an offer is refused.
            if !section.direction_given {
                self.send_error(
                    session,
                    ErrorCode::SdpRejected,
                    "offer: each audio and video section states its direction",
                );
                return;
            }
            // Port 0 rejects a section, unless it is bundle-only (it still receives).
            let live = section.direction == Direction::RecvOnly
                && (section.port != 0 || section.bundle_only);
            wanted.push((kind, mid, live));
        }
        if wanted.is_empty() {
            self.send_error(
                session,
                ErrorCode::SdpRejected,
                "offer: no audio or video section to receive",
            );
            return;
        }
        let audio = self
            .registry
            .room(&room)
            .map(|r| r.spec.audio)
            .unwrap_or_default();
        let key = match existing {
            Some(key) => key,
            None => match self.new_peer(session, PeerRole::Subscriber, now) {
                Some(key) => {
                    if let Some(s) = self.registry.session_mut(session) {
                        s.subscriber = Some(key);
                    }
                    key
                }
                None => return,
            },
        };
        let first = self.transport.peer(key).is_some_and(|p| p.slots.is_empty());
        // A section that changed direction would leave its slot sending on a section
        // `rtc` stopped: a new offer keeps kinds, mids and directions.
        let same_sections = |p: &super::Peer| {
            p.slots.len() == wanted.len()
                && p.slots
                    .iter()
                    .zip(&wanted)
                    .all(|(slot, (kind, mid, live))| {
                        slot.kind == *kind && &slot.mid == mid && slot.live == *live
                    })
        };
        if !first && self.transport.peer(key).is_some_and(|p| !same_sections(p)) {
            self.send_error(
                session,
                ErrorCode::SdpRejected,
                "offer: a new offer must keep the sections of the first",
            );
            return;
        }
        // The slots' senders, one per section; their SSRCs chosen before the connection
        // is touched.
        let mut planned: Vec<(TrackKind, String, bool, u32, Option<RtxStream>)> = Vec::new();
        if first {
            let mut taken: Vec<u32> = Vec::new();
            for (kind, mid, live) in &wanted {
                let ssrc = self.env.ssrc(|s| taken.contains(&s));
                taken.push(ssrc);
                let rtx = (*kind == TrackKind::Video).then(|| {
                    let rtx_ssrc = self.env.ssrc(|s| taken.contains(&s));
                    taken.push(rtx_ssrc);
                    let mut first_seq = [0u8; 2];
                    self.env.fill(&mut first_seq);
                    RtxStream::new(rtx_ssrc, u16::from_be_bytes(first_seq) & 0x7fff)
                });
                planned.push((*kind, mid.clone(), *live, ssrc, rtx));
            }
        }
        let tracks: Vec<MediaStreamTrack> = planned
            .iter()
            .enumerate()
            .map(|(index, (kind, _, _, ssrc, rtx))| {
                MediaStreamTrack::new(
                    "stage".to_owned(),
                    format!("slot{index}"),
                    format!("slot{index}"),
                    match kind {
                        TrackKind::Audio => RtpCodecKind::Audio,
                        TrackKind::Video => RtpCodecKind::Video,
                    },
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(*ssrc),
                            rtx: rtx
                                .as_ref()
                                .map(|rtx| RTCRtpRtxParameters { ssrc: rtx.ssrc }),
                            ..Default::default()
                        },
                        // No codec: the answer takes every codec both sides support, and
                        // each track goes out in its own.
                        active: true,
                        ..Default::default()
                    }],
                )
            })
            .collect();
        let live: Vec<bool> = planned.iter().map(|(_, _, live, _, _)| *live).collect();
        let tracks = MovedIn::new(tracks);
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        // The client's SDP is applied inside the guarded call: a panic in the WebRTC stack
        // over it ends this session alone.
        let answered = peer.pc.with(move |pc| {
            let description =
                RTCSessionDescription::offer(sdp).map_err(|err| format!("offer: {err}"))?;
            pc.set_remote_description(now, description)
                .map_err(|err| format!("offer: {err}"))?;
            let mut senders = Vec::new();
            for (track, live) in tracks.take().into_iter().zip(live) {
                // `rtc` puts each in the first section of its kind that has no sender yet:
                // the slots follow the offer's order.
                let sender = pc.add_track(track).map_err(|err| format!("offer: {err}"))?;
                if !live && let Some(mut transceiver) = pc.rtp_transceiver(sender.into()) {
                    // A sender makes `rtc` answer `sendrecv`; a section the client does
                    // not receive on is answered as it was offered (RFC 8829 §5.3.1).
                    transceiver.set_direction(RTCRtpTransceiverDirection::Inactive);
                }
                senders.push(sender);
            }
            let answer = pc
                .create_answer(None)
                .map_err(|err| format!("answer: {err}"))?;
            pc.set_local_description(now, answer.clone())
                .map_err(|err| format!("answer: {err}"))?;
            Ok::<_, String>((answer, senders))
        });
        let (answer, senders) = match answered {
            Some(Ok(answered)) => answered,
            Some(Err(why)) => {
                if existing.is_none() {
                    // A first offer that failed half-applied leaves no connection behind:
                    // the client may offer again from a clean start.
                    self.close_peer(key);
                    if let Some(s) = self.registry.session_mut(session) {
                        s.subscriber = None;
                    }
                } else {
                    // A restart that failed half-applied leaves ICE between credentials
                    // nobody routes: the session ends, and its client joins again.
                    self.registry.doom(session, super::MEDIA_FAILED);
                }
                self.send_error(session, ErrorCode::SdpRejected, why);
                return;
            }
            // The connection panicked: the session ends at the end of this step.
            None => return,
        };
        self.transport.adopt_ice_credentials(key, &answer.sdp);
        if let Some(peer) = self.transport.peer_mut(key) {
            for ((kind, mid, live, ssrc, rtx), sender) in planned.into_iter().zip(senders) {
                peer.slots.push(Slot {
                    kind,
                    mid,
                    live,
                    ssrc,
                    sender,
                    source: None,
                    parked: None,
                    rtx,
                });
            }
        }
        self.send(
            session,
            ServerMessage::Answer {
                pc: PeerTarget::Subscriber,
                sdp: tune_opus(answer.sdp, &audio),
            },
        );
        self.transport.mark_dirty(key);
        if first {
            self.fill_slots(session, now);
        }
    }

    /// Gives each free slot of `session`'s connection the room's first track of its kind
    /// that no slot carries yet.
    pub(super) fn fill_slots(&mut self, session: SessionId, now: Instant) {
        let Some(s) = self.registry.session(session).filter(|s| !s.closing) else {
            return;
        };
        let Some(key) = s.subscriber else {
            return;
        };
        let Some(room) = self.registry.room(&s.room) else {
            return;
        };
        let candidates: Vec<TrackKey> = room
            .tracks
            .iter()
            .copied()
            .filter(|t| {
                self.media.track(*t).is_some_and(|t| {
                    t.session != session
                        && self.registry.session(t.session).is_none_or(|s| !s.closing)
                })
            })
            .collect();
        for track_key in candidates {
            let Some(kind) = self.media.track(track_key).map(|t| t.kind) else {
                continue;
            };
            let Some(peer) = self.transport.peer(key) else {
                return;
            };
            if peer.slots.iter().any(|s| s.source == Some(track_key)) {
                continue;
            }
            let Some(index) = peer
                .slots
                .iter()
                .position(|s| s.live && s.kind == kind && s.source.is_none())
            else {
                continue;
            };
            self.attach(key, session, index, track_key, now);
        }
    }

    /// Puts `track_key` in slot `index` of connection `key`.
    fn attach(
        &mut self,
        key: PeerKey,
        session: SessionId,
        index: usize,
        track_key: TrackKey,
        now: Instant,
    ) {
        let Some(track) = self.media.track(track_key) else {
            return;
        };
        let (family, codec, video) = (
            track.family,
            track.codec.clone(),
            track.kind == TrackKind::Video,
        );
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        let answer = peer
            .pc
            .with(|pc| pc.local_description().map(|d| d.sdp))
            .flatten()
            .unwrap_or_default();
        let Some(slot) = peer.slots.get_mut(index) else {
            return;
        };
        let mut entry = match slot.parked.take() {
            Some(mut entry) => {
                entry.state.change_source(codec.clock_rate);
                if entry.picture_ids.family() != family {
                    entry.picture_ids = crate::media::picture_id::PictureIds::new(family);
                }
                entry.payload_type = None;
                entry
            }
            None => {
                let mut entry = DowntrackEntry::new(
                    (key, session),
                    Some(slot.sender),
                    (slot.ssrc, None),
                    (video, codec.clock_rate, family),
                );
                entry.rtx = slot.rtx.take();
                entry
            }
        };
        let mid = slot.mid.clone();
        if !bind_downtrack(&mut peer.pc, &mut entry, (family, &codec), &answer, &mid) {
            tracing::debug!(peer = %key, codec = %codec.mime_type, "a slot cannot carry this codec");
            if let Some(slot) = peer.slots.get_mut(index) {
                slot.parked = Some(entry);
            }
            return;
        }
        let ssrc = entry.ssrc;
        if let Some(slot) = peer.slots.get_mut(index) {
            slot.source = Some(track_key);
        }
        peer.outgoing.insert(ssrc, track_key);
        if let Some(track) = self.media.track_mut(track_key) {
            track.downtracks.push(entry);
        }
        self.transport.mark_dirty(key);
        tracing::debug!(peer = %key, track = ?track_key, slot = index, at = ?now, "slot carries a track");
    }

    /// Parks `entry` in its slot, which is free from then on; the entry back when it
    /// belongs to no slot.
    pub(super) fn park(&mut self, entry: DowntrackEntry) -> Option<DowntrackEntry> {
        let Some(peer) = self.transport.peer_mut(entry.peer) else {
            return Some(entry);
        };
        let Some(slot) = peer.slots.iter_mut().find(|s| s.ssrc == entry.ssrc) else {
            return Some(entry);
        };
        peer.outgoing.remove(&entry.ssrc);
        slot.source = None;
        slot.parked = Some(entry);
        None
    }
}

#[cfg(any(test, feature = "sim"))]
impl Slot {
    /// What must hold between a slot of connection `key` and the core's maps: a slot
    /// that carries a track sends it on its own stream and keeps none parked; one that
    /// carries nothing sends nothing.
    pub(super) fn check(
        &self,
        key: PeerKey,
        peer: &super::Peer,
        media: &super::MediaRouter,
    ) -> Result<(), String> {
        let sending = peer.outgoing.get(&self.ssrc);
        match self.source {
            Some(track) => {
                let carried = media.track(track).is_some_and(|t| {
                    t.downtracks
                        .iter()
                        .any(|d| d.peer == key && d.ssrc == self.ssrc)
                });
                if !self.live || sending != Some(&track) || !carried || self.parked.is_some() {
                    return Err(format!(
                        "peer {key}: slot {} carries track {track} but does not send it alone",
                        self.mid
                    ));
                }
            }
            None if sending.is_some() => {
                return Err(format!("peer {key}: empty slot {} still sends", self.mid));
            }
            None => {}
        }
        if peer
            .slots
            .iter()
            .filter(|s| s.ssrc == self.ssrc || s.mid == self.mid)
            .count()
            != 1
        {
            return Err(format!(
                "peer {key}: slot {} shares its SSRC or mid",
                self.mid
            ));
        }
        Ok(())
    }
}
