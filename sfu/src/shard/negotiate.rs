//! Signaling inside the core: applying clients' descriptions, publishing tracks as their
//! first packets arrive, and renegotiating subscriber connections as tracks come and go.

use super::api::SessionId;
use super::guarded::MovedIn;
use super::sdp::{
    cap_video_bitrate, checked_sections, ensure_msid_semantic, media_sections, tune_opus,
};
use super::{DowntrackEntry, Incoming, Layer, PeerKey, PublishedTrack, ShardCore, TrackKey};
use crate::media::codec::CodecFamily;
use crate::media::dependency_descriptor;
use crate::media::keyframe::KeyframeThrottle;
use crate::media::outgoing::{ExtensionIds, SentStamps};
use crate::media::retransmit::{DEFAULT_CAPACITY, RetransmitBuffer};
use crate::media::rtx::RtxStream;
use crate::media::simulcast::rank_layers;
use crate::peer::PeerRole;
use crate::peer::extension_id;
use crate::signal::protocol::{ClientMessage, ErrorCode, PeerTarget, ServerMessage, TrackKind};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::RTCTrackEventInit;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use std::time::Instant;

/// Tracks one participant may publish at once.
const MAX_TRACKS_PER_PARTICIPANT: usize = 8;
/// Remote ICE candidates one connection accepts.
const MAX_REMOTE_CANDIDATES: u32 = 32;
/// State changes (mute, screen share) a session may announce to its room per second.
pub(crate) const ANNOUNCEMENTS_PER_SECOND: u32 = 5;

/// Counts one announcement against a session's budget; whether it may go out.
fn take_announcement(window: &mut Option<(Instant, u32)>, now: Instant) -> bool {
    let (start, count) = match *window {
        Some((start, count))
            if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) =>
        {
            (start, count)
        }
        _ => (now, 0),
    };
    if count >= ANNOUNCEMENTS_PER_SECOND {
        return false;
    }
    *window = Some((start, count + 1));
    true
}

impl ShardCore {
    /// Handles a joined session's message.
    pub(super) fn on_signal(&mut self, session: SessionId, message: ClientMessage, now: Instant) {
        if self.registry.session(session).is_none() {
            return;
        }
        match message {
            ClientMessage::Join { .. } => {
                self.send_error(
                    session,
                    ErrorCode::AlreadyJoined,
                    "this session already joined",
                );
            }
            ClientMessage::Offer { pc, sdp } => {
                let offers_subscriber = self
                    .registry
                    .session(session)
                    .is_some_and(|s| s.offer_subscriber);
                if pc == PeerTarget::Subscriber && offers_subscriber {
                    self.on_subscriber_offer(session, sdp, now);
                } else if pc != PeerTarget::Publisher {
                    self.send_error(
                        session,
                        ErrorCode::OutOfOrder,
                        "clients offer only on their publisher connection",
                    );
                } else {
                    self.on_publisher_offer(session, sdp, now);
                }
            }
            ClientMessage::Answer { pc, sdp } => {
                if pc != PeerTarget::Subscriber {
                    self.send_error(
                        session,
                        ErrorCode::OutOfOrder,
                        "the shard offers only on the subscriber connection",
                    );
                } else {
                    self.on_subscriber_answer(session, sdp, now);
                }
            }
            ClientMessage::Candidate {
                pc,
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let key = self.registry.session(session).and_then(|s| match pc {
                    PeerTarget::Publisher => s.publisher,
                    PeerTarget::Subscriber => s.subscriber,
                });
                let Some(peer) = key.and_then(|k| self.transport.peer_mut(k)) else {
                    self.send_error(session, ErrorCode::OutOfOrder, "no such connection yet");
                    return;
                };
                if peer.remote_candidates >= MAX_REMOTE_CANDIDATES {
                    self.send_error(
                        session,
                        ErrorCode::BadMessage,
                        format!("at most {MAX_REMOTE_CANDIDATES} candidates per connection"),
                    );
                    return;
                }
                peer.remote_candidates += 1;
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index: sdp_m_line_index,
                    ..Default::default()
                };
                let result = peer.pc.with(move |pc| pc.add_remote_candidate(init));
                if let Some(Err(err)) = result {
                    self.send_error(session, ErrorCode::SdpRejected, format!("candidate: {err}"));
                }
            }
            ClientMessage::SetQuality { track, quality } => {
                // Only the tracks of the session's room, not every track of the shard.
                let key = self
                    .registry
                    .session(session)
                    .and_then(|s| self.registry.room(&s.room))
                    .and_then(|room| {
                        room.tracks
                            .iter()
                            .copied()
                            .find(|k| self.media.track(*k).is_some_and(|t| t.id == track))
                    });
                let found = key
                    .and_then(|k| self.media.track_mut(k))
                    .and_then(|t| t.downtracks.iter_mut().find(|d| d.session == session));
                match found {
                    Some(entry) => {
                        entry.state.set_target(quality);
                        // A layer it now needs may be paused at the publisher (dynacast):
                        // share and switch at the next housekeeping, not a period later.
                        self.next_allocation = now;
                    }
                    None => {
                        self.send_error(session, ErrorCode::TrackNotFound, "no such received track")
                    }
                }
            }
            ClientMessage::Mute { track, muted } => {
                let allowed = self
                    .registry
                    .session_mut(session)
                    .is_some_and(|s| take_announcement(&mut s.announcements, now));
                if !allowed {
                    self.send_error(
                        session,
                        ErrorCode::RateLimited,
                        "too many state changes; slow down",
                    );
                    return;
                }
                // Only the session's own tracks, not every track of the shard.
                let key = self.registry.session(session).and_then(|s| {
                    s.tracks.iter().copied().find(|k| {
                        self.media
                            .track(*k)
                            .is_some_and(|t| t.id == track || t.source_track_id == track)
                    })
                });
                let owned = key.and_then(|k| self.media.track_mut(k));
                match owned {
                    Some(t) => {
                        t.muted = muted;
                        let track = t.id.clone();
                        let (room, participant) = (t.room.clone(), t.session);
                        let participant = self
                            .registry
                            .session(participant)
                            .map(|s| s.participant.clone())
                            .unwrap_or_default();
                        self.broadcast(
                            &room,
                            Some(session),
                            ServerMessage::TrackMuted {
                                participant,
                                track,
                                muted,
                            },
                        );
                    }
                    None => self.send_error(
                        session,
                        ErrorCode::TrackNotFound,
                        "no such published track",
                    ),
                }
            }
            ClientMessage::ScreenShare { active } => {
                let Some(s) = self.registry.session_mut(session) else {
                    return;
                };
                // Only a participant who may publish has a screen to share: a viewer's
                // announcement would reach an audience of thousands.
                if s.presence != super::Presence::Participant || !s.publish {
                    self.send_error(
                        session,
                        ErrorCode::Forbidden,
                        "this session may not share a screen",
                    );
                    return;
                }
                if s.screen_sharing == active {
                    return;
                }
                if !take_announcement(&mut s.announcements, now) {
                    self.send_error(
                        session,
                        ErrorCode::RateLimited,
                        "too many state changes; slow down",
                    );
                    return;
                }
                s.screen_sharing = active;
                let (room, participant) = (s.room.clone(), s.participant.clone());
                self.broadcast(
                    &room,
                    Some(session),
                    ServerMessage::ScreenShare {
                        participant,
                        active,
                    },
                );
            }
            ClientMessage::Chat { text, to } => self.on_chat(session, text, to, now),
            ClientMessage::Leave => {
                self.remove_session(session, now, Some("left"));
            }
            ClientMessage::RestartIce => {
                if self
                    .registry
                    .session(session)
                    .is_some_and(|s| s.offer_subscriber)
                {
                    self.send_error(
                        session,
                        ErrorCode::OutOfOrder,
                        "this session offers its subscriber connection: restart ICE with an offer",
                    );
                    return;
                }
                let key = self.registry.session(session).and_then(|s| s.subscriber);
                match key.and_then(|k| self.transport.peer_mut(k).map(|peer| (k, peer))) {
                    Some((key, peer)) => {
                        peer.pc.with(|pc| pc.restart_ice());
                        self.request_negotiation(key, now);
                    }
                    None => self.send_error(
                        session,
                        ErrorCode::OutOfOrder,
                        "no subscriber connection to restart yet",
                    ),
                }
            }
            ClientMessage::Ping => self.send(session, ServerMessage::Pong),
        }
    }

    /// Delivers a chat message to the room, or a direct message to one participant, and
    /// echoes it to the sender so that every client shows the room's order.
    fn on_chat(&mut self, session: SessionId, text: String, to: Option<String>, now: Instant) {
        let Some(s) = self.registry.session(session) else {
            return;
        };
        if s.presence != super::Presence::Participant {
            // An audience of thousands must not be able to flood each other.
            self.send_error(session, ErrorCode::Forbidden, "viewers cannot chat here");
            return;
        }
        let message = ServerMessage::Chat {
            from: s.participant.clone(),
            name: s.name.clone(),
            text,
            to: to.clone(),
            at: self.env.unix_millis(now),
        };
        let room = s.room.clone();
        match to {
            None => self.broadcast(&room, None, message),
            Some(to) => {
                let recipient = self
                    .registry
                    .room(&room)
                    .and_then(|r| r.by_participant.get(&to))
                    .copied();
                match recipient {
                    Some(recipient) => {
                        if recipient != session {
                            self.send(recipient, message.clone());
                        }
                        self.send(session, message);
                    }
                    None => self.send_error(
                        session,
                        ErrorCode::ParticipantNotFound,
                        format!("nobody in the room has the id {to}"),
                    ),
                }
            }
        }
    }

    fn on_publisher_offer(&mut self, session: SessionId, sdp: String, now: Instant) {
        let Some(s) = self.registry.session(session) else {
            return;
        };
        if !s.publish {
            self.send_error(
                session,
                ErrorCode::Forbidden,
                "this participant may not publish",
            );
            return;
        }
        let room = s.room.clone();
        let sections = match checked_sections(&sdp) {
            Ok(sections) => sections,
            Err(why) => {
                self.send_error(session, ErrorCode::SdpRejected, format!("offer: {why}"));
                return;
            }
        };
        let key = match s.publisher {
            Some(key) => key,
            None => match self.new_peer(session, PeerRole::Publisher, now) {
                Some(key) => {
                    if let Some(s) = self.registry.session_mut(session) {
                        s.publisher = Some(key);
                    }
                    key
                }
                None => return,
            },
        };
        let (policy, cap, audio) = match self.registry.room(&room) {
            Some(r) => (
                r.spec.media.clone(),
                r.spec.media.max_video_bitrate_kbps,
                r.spec.audio,
            ),
            None => return,
        };
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        let (allow_audio, allow_video) = (policy.audio, policy.video);
        // The client's SDP is parsed and applied inside the guarded call: a panic in the
        // WebRTC stack over it ends this session alone.
        let answered = peer.pc.with(move |pc| {
            let description =
                RTCSessionDescription::offer(sdp).map_err(|err| format!("offer: {err}"))?;
            pc.set_remote_description(now, description)
                .map_err(|err| format!("offer: {err}"))?;
            // Media the room does not allow is answered inactive.
            let transceivers: Vec<_> = pc.get_transceivers().collect();
            for id in transceivers {
                let kind = pc.rtp_receiver(id.into()).map(|r| r.track().kind());
                let allowed = match kind {
                    Some(RtpCodecKind::Audio) => allow_audio,
                    Some(RtpCodecKind::Video) => allow_video,
                    _ => true,
                };
                if !allowed && let Some(mut transceiver) = pc.rtp_transceiver(id) {
                    transceiver.set_direction(RTCRtpTransceiverDirection::Inactive);
                }
            }
            let answer = pc
                .create_answer(None)
                .map_err(|err| format!("answer: {err}"))?;
            pc.set_local_description(now, answer.clone())
                .map_err(|err| format!("answer: {err}"))?;
            Ok::<_, String>(answer)
        });
        let answer = match answered {
            Some(Ok(answer)) => answer,
            Some(Err(why)) => {
                self.send_error(session, ErrorCode::SdpRejected, why);
                return;
            }
            // The connection panicked: the session ends at the end of this step.
            None => return,
        };
        // An offer with new ICE credentials restarted ICE, and the answer has new ones too.
        self.transport.adopt_ice_credentials(key, &answer.sdp);
        let sdp = match cap {
            Some(kbps) => cap_video_bitrate(&answer.sdp, kbps),
            None => answer.sdp,
        };
        let sdp = tune_opus(sdp, &audio);
        self.send(
            session,
            ServerMessage::Answer {
                pc: PeerTarget::Publisher,
                sdp,
            },
        );
        self.transport.mark_dirty(key);
        // Tracks whose sections no longer send were removed by the publisher.
        let still_sending: Vec<String> = sections
            .iter()
            .filter(|section| section.sends())
            .filter_map(|section| section.mid.clone())
            .collect();
        let gone: Vec<TrackKey> = self
            .media
            .tracks()
            .filter(|(_, t)| t.peer == Some(key))
            .filter(|(_, t)| {
                t.mid
                    .as_ref()
                    .is_none_or(|mid| !still_sending.contains(mid))
            })
            .map(|(k, _)| k)
            .collect();
        for track in gone {
            self.unpublish(track, now);
        }
    }

    fn on_subscriber_answer(&mut self, session: SessionId, sdp: String, now: Instant) {
        let key = self.registry.session(session).and_then(|s| s.subscriber);
        let Some(key) = key else {
            self.send_error(session, ErrorCode::OutOfOrder, "no offer is outstanding");
            return;
        };
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        if !peer.offer_out {
            self.send_error(session, ErrorCode::OutOfOrder, "no offer is outstanding");
            return;
        }
        if let Err(why) = checked_sections(&sdp) {
            self.send_error(session, ErrorCode::SdpRejected, format!("answer: {why}"));
            return;
        }
        let answer = sdp.clone();
        let applied = peer.pc.with(move |pc| {
            RTCSessionDescription::answer(answer)
                .and_then(|answer| pc.set_remote_description(now, answer))
        });
        match applied {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                self.send_error(session, ErrorCode::SdpRejected, format!("answer: {err}"));
                return;
            }
            None => return,
        }
        peer.offer_out = false;
        self.transport.mark_dirty(key);
        self.bind_payload_types(key, session, &sdp, now);
        if let Some(peer) = self.transport.peer_mut(key)
            && peer.renegotiate
        {
            peer.renegotiate = false;
            self.send_offer(key, now);
        }
    }

    /// After an answer, learns each new downtrack's negotiated payload type; a subscriber
    /// that accepted none of the track's codec cannot receive it.
    fn bind_payload_types(&mut self, key: PeerKey, session: SessionId, answer: &str, now: Instant) {
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        let mut unsupported = Vec::new();
        let local_offer = peer
            .pc
            .with(|pc| pc.local_description().map(|offer| offer.sdp))
            .flatten();
        for (ssrc, track_key) in &peer.outgoing {
            let Some(track) = self.media.track_mut(*track_key) else {
                continue;
            };
            let (family, codec) = (track.family, track.codec.clone());
            let Some(entry) = track.downtracks.iter_mut().find(|d| d.ssrc == *ssrc) else {
                continue;
            };
            if entry.payload_type.is_some() {
                continue;
            }
            let Some(mid) = local_offer
                .as_deref()
                .and_then(|offer| super::sdp::mid_of_ssrc(offer, entry.ssrc))
            else {
                // Added while this offer was out: the next answer negotiates it.
                continue;
            };
            if !bind_downtrack(&mut peer.pc, entry, (family, &codec), answer, &mid) {
                unsupported.push((*track_key, track.id.clone(), codec.mime_type.clone()));
            }
        }
        for (track_key, track_id, mime) in unsupported {
            self.send_error(
                session,
                ErrorCode::CodecUnsupported,
                format!("cannot receive track {track_id}: codec {mime} was not accepted"),
            );
            self.remove_downtrack(track_key, key, now);
        }
    }

    /// Creates (or renews) an offer on a subscriber connection, unless one is out already.
    pub(super) fn request_negotiation(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        // A session on its way out gets no more offers; its connection is about to close.
        // One that offers its subscriber connection itself never gets one.
        if self
            .registry
            .session(peer.session)
            .is_none_or(|s| s.closing || s.offer_subscriber)
        {
            return;
        }
        if peer.offer_out {
            peer.renegotiate = true;
        } else {
            self.send_offer(key, now);
        }
    }

    fn send_offer(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        let session = peer.session;
        let audio = self
            .registry
            .session(session)
            .and_then(|s| self.registry.room(&s.room))
            .map(|room| room.spec.audio)
            .unwrap_or_default();
        let offer = peer.pc.with(move |pc| {
            pc.create_offer(None)
                .and_then(|offer| pc.set_local_description(now, offer.clone()).map(|_| offer))
        });
        match offer {
            // The connection panicked: the session ends at the end of this step.
            None => {}
            Some(Ok(offer)) => {
                peer.offer_out = true;
                self.transport.adopt_ice_credentials(key, &offer.sdp);
                self.send(
                    session,
                    ServerMessage::Offer {
                        pc: PeerTarget::Subscriber,
                        sdp: tune_opus(ensure_msid_semantic(offer.sdp), &audio),
                    },
                );
                self.transport.mark_dirty(key);
            }
            Some(Err(err)) => {
                tracing::error!(peer = %key, %err, "cannot create a subscriber offer");
                self.send_error(session, ErrorCode::Internal, "cannot create an offer");
            }
        }
    }

    /// A publisher connection received the first packet of a stream.
    pub(super) fn on_track_open(&mut self, key: PeerKey, init: RTCTrackEventInit, now: Instant) {
        let Some(peer) = self.transport.peer_mut(key) else {
            return;
        };
        if peer.role != PeerRole::Publisher {
            return;
        }
        let session = peer.session;
        let rid = init.rid.clone().unwrap_or_default();
        // A further layer (or a new SSRC) of a track already published.
        let existing = self
            .media
            .tracks_mut()
            .find(|(_, t)| t.peer == Some(key) && t.source_track_id == init.track_id);
        if let Some((track_key, track)) = existing {
            let index = match track.layers.iter().position(|l| l.rid == rid) {
                Some(index) => index,
                // A track without simulcast that changed SSRC.
                None if track.layers.len() == 1 && track.layers[0].rid.is_empty() => 0,
                // A layer the shard does not forward (simulcast not allowed in this room).
                None => return,
            };
            if let Some(layer) = track.layers.get_mut(index) {
                if let Some(old) = layer.ssrc.replace(init.ssrc)
                    && old != init.ssrc
                {
                    peer.incoming.remove(&old);
                    if let Some(uplink) = peer.uplink.as_mut() {
                        uplink.forget(old);
                    }
                    // The new stream numbers its packets afresh: its loss is counted from
                    // its own first packet.
                    layer.loss = Default::default();
                }
                layer.receiver = Some(init.receiver_id);
            }
            peer.incoming.insert(
                init.ssrc,
                Incoming {
                    track: track_key,
                    layer: index,
                    clock_rate: track.codec.clock_rate,
                    video: track.family.is_video(),
                    rtc_seen: None,
                },
            );
            return;
        }
        let (receiver_id, ssrc) = (init.receiver_id, init.ssrc);
        let described = peer.pc.with(move |pc| {
            let mut receiver = pc.rtp_receiver(receiver_id)?;
            let kind = receiver.track().kind();
            let codec = receiver.track().codec(ssrc).cloned();
            let extensions = &receiver.get_parameters().rtp_parameters.header_extensions;
            let audio_level_ext = extension_id(extensions, rtc::sdp::extmap::AUDIO_LEVEL_URI);
            let transport_cc_ext = extension_id(extensions, rtc::sdp::extmap::TRANSPORT_CC_URI);
            let dependency_ext = extension_id(extensions, dependency_descriptor::URI);
            let mid = pc
                .rtp_transceiver(receiver_id.into())
                .and_then(|t| t.mid().clone());
            let sections = pc.remote_description().map(|d| media_sections(&d.sdp));
            Some((
                kind,
                codec,
                audio_level_ext,
                dependency_ext,
                transport_cc_ext,
                mid,
                sections,
            ))
        });
        let Some(Some((
            kind,
            codec,
            audio_level_ext,
            dependency_ext,
            transport_cc_ext,
            mid,
            sections,
        ))) = described
        else {
            return;
        };
        if let (Some(id), Some(uplink)) = (transport_cc_ext, peer.uplink.as_mut()) {
            uplink.set_transport_cc_id(id);
        }
        let Some(codec) = codec else {
            tracing::warn!(peer = %key, ssrc = init.ssrc, "track opened without a codec");
            return;
        };
        let rids: Vec<String> = sections
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.mid.is_some() && s.mid == mid)
            .map(|s| s.send_rids)
            .unwrap_or_default();
        let kind = match kind {
            RtpCodecKind::Audio => TrackKind::Audio,
            RtpCodecKind::Video => TrackKind::Video,
            _ => return,
        };
        let Some(s) = self.registry.session(session) else {
            return;
        };
        if s.tracks.len() >= MAX_TRACKS_PER_PARTICIPANT {
            tracing::warn!(session = %session, "track limit reached; not publishing another");
            self.send_error(
                session,
                ErrorCode::Forbidden,
                format!("at most {MAX_TRACKS_PER_PARTICIPANT} published tracks"),
            );
            return;
        }
        let room = s.room.clone();
        let allowed = self.registry.room(&room).is_some_and(|r| match kind {
            TrackKind::Audio => r.spec.media.audio,
            TrackKind::Video => r.spec.media.video,
        });
        if !allowed {
            return;
        }
        let family = CodecFamily::from_mime(&codec.mime_type);
        let video = family.is_video() || kind == TrackKind::Video;
        let mut rid_names: Vec<&str> = if rids.is_empty() {
            vec![""]
        } else {
            rids.iter().map(String::as_str).collect()
        };
        let mut ranks = rank_layers(&rid_names);
        let simulcast = self
            .registry
            .room(&room)
            .is_some_and(|r| r.spec.media.simulcast);
        if !simulcast
            && rid_names.len() > 1
            && let Some(top) = ranks
                .iter()
                .enumerate()
                .max_by_key(|(_, rank)| **rank)
                .map(|(index, _)| index)
        {
            // Simulcast is off in this room: forward only the best layer.
            rid_names = vec![rid_names[top]];
            ranks = vec![ranks[top]];
        }
        if !rid_names.contains(&rid.as_str()) {
            // The first layer to arrive is one the shard does not forward; the track is
            // published when the forwarded layer's first packet arrives.
            return;
        }
        let interval = self.keyframe_interval(&room);
        let layers: Vec<Layer> = rid_names
            .iter()
            .zip(ranks)
            .map(|(name, rank)| Layer {
                rid: (*name).to_owned(),
                rank,
                ssrc: (*name == rid.as_str() || rids.is_empty()).then_some(init.ssrc),
                receiver: Some(init.receiver_id),
                last_packet: None,
                rate: Default::default(),
                temporal_rates: Default::default(),
                spatial_rates: Default::default(),
                spatial_structure: Default::default(),
                dependency_structure: None,
                svc: false,
                loss: Default::default(),
                loss_percent: None,
                buffer: video
                    .then(|| RetransmitBuffer::new(DEFAULT_CAPACITY, super::RETRANSMIT_AGE)),
                throttle: KeyframeThrottle::new(interval),
            })
            .collect();
        let layer_index = layers
            .iter()
            .position(|l| l.ssrc == Some(init.ssrc))
            .unwrap_or(0);
        let track_key = self.ids.track();
        let layer_switch = (video
            && (2..=crate::media::dynacast::MAX_LAYERS).contains(&layers.len()))
        .then(|| crate::media::dynacast::LayerSwitch::new(layers.len(), now));
        let track = PublishedTrack {
            id: format!("TR{}", self.env.token(12)),
            room: room.clone(),
            session,
            peer: Some(key),
            source_track_id: init.track_id.clone(),
            mid,
            kind,
            family,
            codec,
            layers,
            audio_level_ext,
            dependency_ext,
            muted: false,
            downtracks: Vec::new(),
            layer_switch,
            spatial_switch: None,
        };
        let info = self.track_info(&track);
        let incoming = Incoming {
            track: track_key,
            layer: layer_index,
            clock_rate: track.codec.clock_rate,
            video: track.family.is_video(),
            rtc_seen: None,
        };
        self.media.publish(track_key, track);
        if let Some(peer) = self.transport.peer_mut(key) {
            peer.incoming.insert(init.ssrc, incoming);
        }
        if let Some(s) = self.registry.session_mut(session) {
            s.tracks.push(track_key);
        }
        let participant = self
            .registry
            .session(session)
            .map(|s| s.participant.clone())
            .unwrap_or_default();
        let subscribers: Vec<SessionId> = match self.registry.room_mut(&room) {
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
        tracing::info!(session = %session, track = %info.id, kind = ?info.kind, codec = %info.codec, layers = info.layers.len(), "track published");
        self.broadcast(
            &room,
            Some(session),
            ServerMessage::TrackPublished {
                participant,
                track: info,
            },
        );
        for subscriber in subscribers {
            self.add_downtrack(subscriber, track_key, now);
        }
        self.update_gauges();
    }

    /// Starts forwarding a track to a session's subscriber connection.
    pub(super) fn add_downtrack(&mut self, session: SessionId, track_key: TrackKey, now: Instant) {
        let Some(s) = self.registry.session(session) else {
            return;
        };
        if !s.subscribe {
            return;
        }
        if s.offer_subscriber {
            // Its connection's sections were fixed by its offer: a new track may fill one.
            if s.subscriber.is_some() {
                self.fill_slots(session, now);
            }
            return;
        }
        let Some(publisher) = self.media.track(track_key).map(|t| t.session) else {
            return;
        };
        if publisher == session {
            return;
        }
        let key = match s.subscriber {
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
        if self.add_pipe_downtrack(session, key, track_key) {
            return;
        }
        let (Some(peer), Some(track)) = (self.transport.peer_mut(key), self.media.track(track_key))
        else {
            return;
        };
        let mut stream_id = self
            .registry
            .session(publisher)
            .map(|s| s.participant.clone())
            .unwrap_or_default();
        // A browser delays the sound of a stream to keep it in step with the stream's
        // video. Musicians need the sound now: in music rooms it is a stream of its own.
        let music = self
            .registry
            .room(&track.room)
            .is_some_and(|room| room.spec.audio.is_music());
        if music && track.kind == TrackKind::Audio {
            stream_id.push_str(".audio");
        }
        // The connection's RTX streams, whose SSRCs a new one must not take either: those
        // of the tracks it receives.
        let repair_ssrcs: Vec<u32> = peer
            .outgoing
            .values()
            .filter_map(|track_key| self.media.track(*track_key))
            .flat_map(|t| &t.downtracks)
            .filter(|d| d.peer == key)
            .filter_map(|d| d.rtx.as_ref().map(|rtx| rtx.ssrc))
            .collect();
        let taken = |ssrc: u32| peer.outgoing.contains_key(&ssrc) || repair_ssrcs.contains(&ssrc);
        let ssrc = self.env.ssrc(taken);
        let kind = match track.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        // Video gets an RTX stream for the shard's probes (media::rtx); `rtc` declares it in
        // the offer because subscribers' media engines carry RTX for video (and keeps
        // declaring it after an answer that refused it, harmlessly: nothing is sent there).
        let rtx = (kind == RtpCodecKind::Video).then(|| {
            let rtx_ssrc = self.env.ssrc(|s| s == ssrc || taken(s));
            let mut first_seq = [0u8; 2];
            self.env.fill(&mut first_seq);
            // In the lower half, as libwebrtc starts: a receiver that lost the first
            // packets (probes are what a bottleneck drops) cannot misjudge a wrap.
            RtxStream::new(rtx_ssrc, u16::from_be_bytes(first_seq) & 0x7fff)
        });
        let media = MediaStreamTrack::new(
            stream_id,
            track.id.clone(),
            track.id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: rtx
                        .as_ref()
                        .map(|rtx| RTCRtpRtxParameters { ssrc: rtx.ssrc }),
                    ..Default::default()
                },
                codec: track.codec.clone(),
                active: true,
                ..Default::default()
            }],
        );
        let red = track.family == CodecFamily::Red;
        let video = track.family.is_video();
        let mime = track.codec.mime_type.clone();
        let media = MovedIn::new(media);
        let added = peer.pc.with(move |pc| {
            let sender = pc.add_track(media.take())?;
            let preferences = match pc.rtp_transceiver(sender.into()) {
                Some(mut transceiver) if red => {
                    transceiver.set_codec_preferences(crate::peer::redundant_audio_preferences())
                }
                Some(mut transceiver) if video => {
                    transceiver.set_codec_preferences(crate::peer::video_preferences(&mime))
                }
                _ => Ok(()),
            };
            Ok::<_, rtc::shared::error::Error>((sender, preferences))
        });
        let sender = match added {
            Some(Ok((sender, preferences))) => {
                if let Err(err) = preferences {
                    tracing::warn!(peer = %key, %err, "cannot offer the codecs beside the track's");
                }
                sender
            }
            Some(Err(err)) => {
                tracing::warn!(peer = %key, %err, "cannot add a track to a subscriber");
                self.send_error(session, ErrorCode::Internal, "cannot add track");
                return;
            }
            None => return,
        };
        peer.outgoing.insert(ssrc, track_key);
        let video = track.kind == TrackKind::Video;
        let clock_rate = track.codec.clock_rate;
        let family = track.family;
        if let Some(track) = self.media.track_mut(track_key) {
            let mut entry = DowntrackEntry::new(
                (key, session),
                Some(sender),
                (ssrc, None),
                (video, clock_rate, family),
            );
            entry.rtx = rtx;
            track.downtracks.push(entry);
        }
        self.request_negotiation(key, now);
    }

    /// Stops forwarding a track to one subscriber connection.
    fn remove_downtrack(&mut self, track_key: TrackKey, peer_key: PeerKey, now: Instant) {
        let Some(track) = self.media.track_mut(track_key) else {
            return;
        };
        let Some(index) = track.downtracks.iter().position(|d| d.peer == peer_key) else {
            return;
        };
        let entry = track.downtracks.swap_remove(index);
        let Some(entry) = self.park(entry) else {
            return;
        };
        if let Some(peer) = self.transport.peer_mut(peer_key) {
            peer.outgoing.remove(&entry.ssrc);
            if let Some(sender) = entry.sender
                && let Some(Err(err)) = peer.pc.with(move |pc| pc.remove_track(sender))
            {
                tracing::debug!(peer = %peer_key, %err, "remove_track failed");
            }
            self.request_negotiation(peer_key, now);
        }
    }

    /// Removes a published track from the room and from every subscriber.
    pub(super) fn unpublish(&mut self, track_key: TrackKey, now: Instant) {
        let Some(mut track) = self.media.unpublish(track_key) else {
            return;
        };
        if let Some(peer) = track.peer.and_then(|key| self.transport.peer_mut(key)) {
            let uplink = &mut peer.uplink;
            peer.incoming.retain(|ssrc, incoming| {
                let keep = incoming.track != track_key;
                if !keep && let Some(uplink) = uplink.as_mut() {
                    uplink.forget(*ssrc);
                }
                keep
            });
        }
        if let Some(s) = self.registry.session_mut(track.session) {
            s.tracks.retain(|t| *t != track_key);
        }
        if let Some(room) = self.registry.room_mut(&track.room) {
            room.tracks.retain(|t| *t != track_key);
        }
        // Slots it filled go to the room's next track of its kind.
        let mut refill = Vec::new();
        for entry in std::mem::take(&mut track.downtracks) {
            let session = entry.session;
            let Some(entry) = self.park(entry) else {
                refill.push(session);
                continue;
            };
            if let Some(peer) = self.transport.peer_mut(entry.peer) {
                peer.outgoing.remove(&entry.ssrc);
                if let Some(sender) = entry.sender
                    && let Some(Err(err)) = peer.pc.with(move |pc| pc.remove_track(sender))
                {
                    tracing::debug!(peer = %entry.peer, %err, "remove_track failed");
                }
                self.request_negotiation(entry.peer, now);
            }
        }
        let participant = self
            .registry
            .session(track.session)
            .map(|s| s.participant.clone())
            .unwrap_or_default();
        for session in refill {
            self.fill_slots(session, now);
        }
        tracing::info!(track = %track.id, "track unpublished");
        self.broadcast(
            &track.room,
            Some(track.session),
            ServerMessage::TrackUnpublished {
                participant,
                track: track.id,
            },
        );
        self.update_gauges();
    }
}

/// Binds a new downtrack to what `answer` negotiated for its media section `mid`: the
/// header extensions it writes, the payload type (and RTX's) it sends under, RED or the
/// Opus inside. False when the subscriber accepted none of the track's codecs.
pub(super) fn bind_downtrack(
    pc: &mut super::guarded::GuardedPc,
    entry: &mut DowntrackEntry,
    (family, wanted): (CodecFamily, &rtc::rtp_transceiver::rtp_sender::RTCRtpCodec),
    answer: &str,
    mid: &str,
) -> bool {
    entry.extensions = negotiated_extensions(answer, mid, family);
    // Every video stream remembers what it sent, for its resends: the marker, which the
    // shard moves for a subscriber of fewer spatial layers, and any stamps.
    entry.stamps = family.is_video().then(|| SentStamps::new(DEFAULT_CAPACITY));
    if family == CodecFamily::Red {
        // The sender's parameters list what was offered (RED and Opus); whether the
        // subscriber took RED shows only in its answer. Without it, it gets the Opus inside.
        let formats = super::sdp::section_formats(answer, mid);
        let find = |name: &str| {
            formats
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.payload_type)
        };
        return match (find("red"), find("opus")) {
            (Some(red), _) => {
                entry.payload_type = Some(red);
                entry.unwrap_red = false;
                true
            }
            (None, Some(opus)) => {
                entry.payload_type = Some(opus);
                entry.unwrap_red = true;
                true
            }
            (None, None) => false,
        };
    }
    entry.unwrap_red = false;
    let Some(sender) = entry.sender else {
        return true;
    };
    let Some(Some(parameters)) = pc.with(move |pc| {
        pc.rtp_sender(sender)
            .map(|mut sender| sender.get_parameters().clone())
    }) else {
        return true;
    };
    let codecs = &parameters.rtp_parameters.codecs;
    let payload_type = codecs
        .iter()
        .find(|c| {
            c.rtp_codec
                .mime_type
                .eq_ignore_ascii_case(&wanted.mime_type)
                && c.rtp_codec.sdp_fmtp_line == wanted.sdp_fmtp_line
        })
        .or_else(|| {
            codecs.iter().find(|c| {
                c.rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(&wanted.mime_type)
                    && super::sdp::fmtp_compatible(
                        &wanted.mime_type,
                        &wanted.sdp_fmtp_line,
                        &c.rtp_codec.sdp_fmtp_line,
                    )
            })
        })
        .map(|c| c.payload_type);
    let Some(pt) = payload_type else {
        return false;
    };
    entry.payload_type = Some(pt);
    // The RTX format the answer pairs with it, if it took one.
    if let Some(rtx) = entry.rtx.as_mut() {
        rtx.payload_type = super::sdp::section_formats(answer, mid)
            .iter()
            .find(|f| f.name == "rtx" && f.apt() == Some(pt))
            .map(|f| f.payload_type);
    }
    true
}

/// The header extensions a subscriber's answer accepted for the media section `mid`,
/// under the ids it gave them: those the shard writes on the stream's packets.
fn negotiated_extensions(answer: &str, mid: &str, family: CodecFamily) -> ExtensionIds {
    let id = |uri: &str| super::sdp::section_extension(answer, mid, uri);
    let video = family.is_video();
    ExtensionIds {
        audio_level: if video {
            None
        } else {
            id(rtc::sdp::extmap::AUDIO_LEVEL_URI)
        },
        abs_send_time: id(rtc::sdp::extmap::ABS_SEND_TIME_URI),
        transport_cc: id(rtc::sdp::extmap::TRANSPORT_CC_URI),
        // Offered only in music rooms.
        playout_delay: if video {
            id(crate::peer::PLAYOUT_DELAY_URI)
        } else {
            None
        },
        // AV1's alone: a subscriber decodes VP8 and VP9 by their own payload descriptors,
        // which the shard rewrites, and a descriptor passed on unchanged beside them would
        // describe frames the shard dropped or took from another simulcast layer.
        dependency_descriptor: if family == CodecFamily::Av1 {
            id(dependency_descriptor::URI)
        } else {
            None
        },
    }
}
