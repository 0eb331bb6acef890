//! The parent's side of a relay pipe: an edge shard's relay session that asked for its
//! tracks as plain SRTP to the edge's media port, instead of over a peer connection.
//!
//! The relay session's `join` names the edge's end (its media address, the master key it
//! protects its RTCP with, and that RTCP's SSRC); the parent answers with its own in a
//! `pipe` message, announces each track it forwards with the SSRC it carries
//! (`pipe_track`), and from then on treats the pipe as a subscriber connection with no
//! `rtc` behind it: the forwarding path writes and protects each copy as for a viewer, and
//! the edge's NACKs and keyframe requests come back as SRTCP that the transport reads by
//! the edge's address and RTCP SSRC. The relay session's WebSocket is the pipe's life:
//! when it closes, the pipe goes with the session. See `docs/notes/relay-pipes.md`.

use super::api::{RelayHandle, RelayedTrack};
use super::guarded::GuardedPc;
use super::{DowntrackEntry, Peer, SessionId, ShardCore, TrackKey};
use crate::media::loss::{LossConfig, LossTracker};
use crate::media::outgoing::SentStamps;
use crate::media::retransmit::DEFAULT_CAPACITY;
use crate::peer::PeerRole;
use crate::signal::protocol::{PipeCodec, PipeEnd, ServerMessage, TrackKind};
use crate::srtp::{Profile, SrtcpSender, SrtpReceiver, SrtpSender};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::shared::TransportProtocol;
use rtc::shared::marshal::Unmarshal;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Every pipe's SRTP profile.
pub(crate) const PIPE_PROFILE: Profile = Profile::AeadAes128Gcm;
/// Master key and salt lengths under [`PIPE_PROFILE`].
const KEY_LEN: usize = 16;
const SALT_LEN: usize = 12;

/// Payload types on a pipe: the edge learns each track's codec from `pipe_track`, so one
/// per kind is enough.
const AUDIO_PAYLOAD_TYPE: u8 = 111;
const VIDEO_PAYLOAD_TYPE: u8 = 96;
/// The header extension id an AV1 track's dependency descriptor has on a pipe: the only
/// extension a pipe carries.
pub(crate) const PIPE_DEPENDENCY_DESCRIPTOR_ID: u8 = 1;

/// A pipe end's master key and salt.
pub(crate) struct PipeKey {
    /// The master key.
    pub key: [u8; KEY_LEN],
    /// The master salt.
    pub salt: [u8; SALT_LEN],
}

impl PipeKey {
    /// Decodes the base64 of a pipe end's `key`.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let bytes = BASE64.decode(text).ok()?;
        if bytes.len() != KEY_LEN + SALT_LEN {
            return None;
        }
        let (key, salt) = bytes.split_at(KEY_LEN);
        Some(Self {
            key: key.try_into().ok()?,
            salt: salt.try_into().ok()?,
        })
    }

    /// The base64 a pipe end carries.
    pub(crate) fn encode(&self) -> String {
        let mut bytes = [0u8; KEY_LEN + SALT_LEN];
        bytes[..KEY_LEN].copy_from_slice(&self.key);
        bytes[KEY_LEN..].copy_from_slice(&self.salt);
        BASE64.encode(bytes)
    }
}

/// Why a pipe could not be opened (the relay session gets it as an error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PipeError {
    /// The media address is not `ip:port` with a port, of the family the shard uses.
    #[error("pipe media must be ip:port of this shard's address family")]
    Address,
    /// The key is not base64 of a 16-byte key and 12-byte salt.
    #[error("pipe key must be base64 of a 16-byte key and a 12-byte salt")]
    Key,
    /// The SSRC is that of a pipe already open.
    #[error("a pipe with this RTCP SSRC is open already")]
    Taken,
}

/// The address and key of a pipe's far end: an address and port of the family of
/// `advertised` (this shard's own), neither unspecified nor multicast, and a whole key.
fn far_end(end: &PipeEnd, advertised: SocketAddr) -> Result<(SocketAddr, PipeKey), PipeError> {
    let media: SocketAddr = end.media.parse().map_err(|_| PipeError::Address)?;
    if media.port() == 0
        || media.ip().is_unspecified()
        || media.ip().is_multicast()
        || media.is_ipv4() != advertised.is_ipv4()
    {
        return Err(PipeError::Address);
    }
    let key = PipeKey::decode(&end.key).ok_or(PipeError::Key)?;
    Ok((media, key))
}

impl ShardCore {
    /// Opens the pipe a relay session's join asked for and tells the edge the parent's
    /// end. The session must exist and be a relay.
    pub(super) fn open_pipe(
        &mut self,
        session: SessionId,
        edge: &PipeEnd,
    ) -> Result<(), PipeError> {
        let advertised = self.transport.advertised();
        let (media, edge_key) = self.check_pipe(edge)?;
        let mut own = PipeKey {
            key: [0; KEY_LEN],
            salt: [0; SALT_LEN],
        };
        self.env.fill(&mut own.key);
        self.env.fill(&mut own.salt);
        let sender =
            SrtpSender::new(PIPE_PROFILE, &own.key, &own.salt).map_err(|_| PipeError::Key)?;
        let receiver = SrtpReceiver::new(PIPE_PROFILE, &edge_key.key, &edge_key.salt)
            .map_err(|_| PipeError::Key)?;
        let own_ssrc = self.env.ssrc(|ssrc| ssrc == edge.ssrc);
        let key = self.ids.peer();
        let peer = Peer {
            connected: true,
            srtp: Some(sender),
            srtp_in: Some(receiver),
            route: Some((media, TransportProtocol::UDP)),
            pipe: true,
            ..Peer::new(
                GuardedPc::detached(self.pc_alarm.clone()),
                PeerRole::Subscriber,
                session,
            )
        };
        if !self.transport.add_pipe(key, peer, edge.ssrc) {
            return Err(PipeError::Taken);
        }
        if let Some(s) = self.registry.session_mut(session) {
            s.subscriber = Some(key);
            s.media_seen = true;
        }
        tracing::info!(%session, %media, "relay pipe open");
        self.send(
            session,
            ServerMessage::Pipe {
                end: PipeEnd {
                    media: advertised.to_string(),
                    key: own.encode(),
                    ssrc: own_ssrc,
                },
            },
        );
        Ok(())
    }

    /// The media address and key of a pipe end, if it could be opened.
    pub(super) fn check_pipe(&self, edge: &PipeEnd) -> Result<(SocketAddr, PipeKey), PipeError> {
        let (media, key) = far_end(edge, self.transport.advertised())?;
        if self.transport.has_pipe(edge.ssrc) {
            return Err(PipeError::Taken);
        }
        Ok((media, key))
    }

    /// Forwards a track down a pipe: a downtrack with an SSRC unique towards the pipe's
    /// far end, announced with its codec. False if `key` is not a pipe.
    pub(super) fn add_pipe_downtrack(
        &mut self,
        session: SessionId,
        key: super::PeerKey,
        track_key: TrackKey,
    ) -> bool {
        let Some(peer) = self.transport.peer(key) else {
            return false;
        };
        let Some((to, _)) = peer.route.filter(|_| peer.pipe) else {
            return false;
        };
        let Some(track) = self.media.track(track_key) else {
            return true;
        };
        let transport = &self.transport;
        let ssrc = self.env.ssrc(|ssrc| transport.pipe_ssrc_taken(to, ssrc));
        let video = track.kind == TrackKind::Video;
        let payload_type = if video {
            VIDEO_PAYLOAD_TYPE
        } else {
            AUDIO_PAYLOAD_TYPE
        };
        let participant = self
            .registry
            .session(track.session)
            .map(|s| s.participant.clone())
            .unwrap_or_default();
        let announcement = ServerMessage::PipeTrack {
            participant,
            track: track.id.clone(),
            kind: track.kind,
            codec: PipeCodec {
                mime: track.codec.mime_type.clone(),
                clock_rate: track.codec.clock_rate,
                channels: track.codec.channels,
                fmtp: track.codec.sdp_fmtp_line.clone(),
                payload_type,
            },
            ssrc,
        };
        let clock_rate = track.codec.clock_rate;
        let family = track.family;
        if let Some(peer) = self.transport.peer_mut(key) {
            peer.outgoing.insert(ssrc, track_key);
        }
        if let Some(track) = self.media.track_mut(track_key) {
            let mut entry = DowntrackEntry::new(
                (key, session),
                None,
                (ssrc, Some(payload_type)),
                (video, clock_rate, family),
            );
            // The edge reads a track's layers from its descriptor, as this shard does: AV1's,
            // and VP8's temporal layers when the publisher's descriptor is where they are.
            entry.extensions.dependency_descriptor =
                family.is_video().then_some(PIPE_DEPENDENCY_DESCRIPTOR_ID);
            // What each packet was sent with (its marker), so that a resend is the same bytes.
            entry.stamps = video.then(|| SentStamps::new(DEFAULT_CAPACITY));
            track.downtracks.push(entry);
        }
        self.send(session, announcement);
        true
    }
}

// ------------------------------------------------------------------------ the edge's end

/// An edge's end of a pipe: the parent's media arriving, decrypted and handed to the
/// relayed tracks; losses asked for again and keyframe requests sent up, as SRTCP.
pub(crate) struct EdgePipe {
    room: String,
    /// Where the parent's media port is: this end's RTCP goes there.
    parent: SocketAddr,
    receiver: SrtpReceiver,
    rtcp: SrtcpSender,
    own_ssrc: u32,
    streams: HashMap<u32, EdgeStream>,
}

struct EdgeStream {
    handle: RelayHandle,
    loss: LossTracker,
}

use super::api::PipeId;

/// Streams one pipe may carry: tracks × layers of one relayed room.
const MAX_PIPE_STREAMS: usize = 256;

impl ShardCore {
    /// Opens this edge's end of a pipe to `parent`, for the relay of `room`; `own` is the
    /// key this end protects its RTCP with, under SSRC `own_ssrc`.
    pub(super) fn pipe_open(
        &mut self,
        room: &str,
        parent: &PipeEnd,
        own: &PipeKey,
        own_ssrc: u32,
    ) -> Result<PipeId, PipeError> {
        let (media, key) = far_end(parent, self.transport.advertised())?;
        let receiver =
            SrtpReceiver::new(PIPE_PROFILE, &key.key, &key.salt).map_err(|_| PipeError::Key)?;
        let rtcp =
            SrtcpSender::new(PIPE_PROFILE, &own.key, &own.salt).map_err(|_| PipeError::Key)?;
        self.next_pipe += 1;
        let id = self.next_pipe;
        self.edge_pipes.insert(
            id,
            EdgePipe {
                room: room.to_owned(),
                parent: media,
                receiver,
                rtcp,
                own_ssrc,
                streams: HashMap::new(),
            },
        );
        tracing::info!(%room, parent = %media, "relay pipe to the parent open");
        Ok(id)
    }

    /// A track announced on pipe `pipe`: published here as a relayed track, its packets
    /// recognised by SSRC from now on. False if the pipe is gone or the SSRC is taken.
    pub(super) fn pipe_track(&mut self, pipe: PipeId, relayed: RelayedTrack, now: Instant) -> bool {
        let ssrc = relayed.ssrc;
        let fits = self
            .edge_pipes
            .get(&pipe)
            .is_some_and(|p| p.room == relayed.room && p.streams.len() < MAX_PIPE_STREAMS);
        if !fits || self.edge_streams.contains_key(&ssrc) {
            return false;
        }
        let Some(handle) = self.relay_track(relayed, now) else {
            return false;
        };
        if let Some(p) = self.edge_pipes.get_mut(&pipe) {
            p.streams.insert(
                ssrc,
                EdgeStream {
                    handle,
                    loss: LossTracker::new(LossConfig::default()),
                },
            );
            self.edge_streams.insert(ssrc, pipe);
        }
        true
    }

    /// Closes every pipe end feeding `room`.
    pub(super) fn pipe_close_room(&mut self, room: &str) {
        let streams = &mut self.edge_streams;
        self.edge_pipes.retain(|_, pipe| {
            if pipe.room != room {
                return true;
            }
            for ssrc in pipe.streams.keys() {
                streams.remove(ssrc);
            }
            false
        });
    }

    /// A datagram that may be media from a parent's pipe: decrypted and forwarded if it
    /// is. False if it belongs to no pipe (the transport's to route).
    pub(super) fn pipe_datagram(&mut self, datagram: &[u8], now: Instant) -> bool {
        if datagram.len() < 12 || crate::wire::classify(datagram) != crate::wire::DatagramKind::Rtp
        {
            return false;
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let Some(pipe) = carrying(&self.edge_streams, &mut self.edge_pipes, ssrc) else {
            return false;
        };
        self.pipe_scratch.clear();
        self.pipe_scratch.extend_from_slice(datagram);
        let Ok(len) = pipe.receiver.unprotect_rtp(&mut self.pipe_scratch) else {
            self.metrics.dropped(crate::metrics::DropReason::BadSrtp);
            return true;
        };
        let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &self.pipe_scratch[..len]) else {
            self.metrics.dropped(crate::metrics::DropReason::Garbage);
            return true;
        };
        let Some(stream) = pipe.streams.get_mut(&ssrc) else {
            return true;
        };
        stream.loss.on_packet(packet.header.sequence_number, now);
        let handle = stream.handle;
        self.forward(handle.track, handle.layer, packet, now);
        true
    }

    /// Asks the parents again for what is still missing (NACKs due now).
    pub(super) fn pipe_nacks(&mut self, now: Instant) {
        let mut lost = Vec::new();
        for pipe in self.edge_pipes.values_mut() {
            let mut packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = Vec::new();
            for (ssrc, stream) in &mut pipe.streams {
                lost.clear();
                stream.loss.due(now, &mut lost);
                if lost.is_empty() {
                    continue;
                }
                packets.push(Box::new(TransportLayerNack {
                    sender_ssrc: pipe.own_ssrc,
                    media_ssrc: *ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&lost),
                }));
            }
            if !packets.is_empty() {
                send_rtcp(pipe, &mut self.transport, &packets);
            }
        }
    }

    /// When [`Self::pipe_nacks`] has something to do next.
    pub(super) fn pipe_next_due(&self) -> Option<Instant> {
        self.edge_pipes
            .values()
            .flat_map(|p| p.streams.values())
            .filter_map(|s| s.loss.next_due())
            .min()
    }

    /// Asks the parent for a keyframe of a relayed stream, if a pipe carries it; false if
    /// none does.
    pub(super) fn pipe_keyframe_request(&mut self, ssrc: u32) -> bool {
        let Some(pipe) = carrying(&self.edge_streams, &mut self.edge_pipes, ssrc) else {
            return false;
        };
        let pli: Box<dyn rtc::rtcp::packet::Packet> = Box::new(PictureLossIndication {
            sender_ssrc: pipe.own_ssrc,
            media_ssrc: ssrc,
        });
        send_rtcp(pipe, &mut self.transport, &[pli]);
        true
    }
}

/// The pipe that carries `ssrc`, if one does.
fn carrying<'a>(
    streams: &crate::FastMap<u32, PipeId>,
    pipes: &'a mut HashMap<PipeId, EdgePipe>,
    ssrc: u32,
) -> Option<&'a mut EdgePipe> {
    pipes.get_mut(streams.get(&ssrc)?)
}

/// Protects a compound RTCP packet with the pipe's key and queues it for the parent.
fn send_rtcp(
    pipe: &mut EdgePipe,
    transport: &mut super::transport::Transport,
    packets: &[Box<dyn rtc::rtcp::packet::Packet>],
) {
    let Ok(plain) = rtc::rtcp::packet::marshal(packets) else {
        return;
    };
    let mut buf = bytes::BytesMut::with_capacity(plain.len() + pipe.rtcp.overhead());
    buf.extend_from_slice(&plain);
    match pipe.rtcp.protect(&mut buf) {
        Ok(()) => transport.queue_datagram(pipe.parent, buf),
        Err(err) => tracing::warn!(%err, "pipe RTCP not protected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let key = PipeKey {
            key: [7; KEY_LEN],
            salt: [9; SALT_LEN],
        };
        let decoded = PipeKey::decode(&key.encode()).expect("decodes");
        assert_eq!(decoded.key, key.key);
        assert_eq!(decoded.salt, key.salt);
        assert!(PipeKey::decode("not base64!").is_none());
        assert!(PipeKey::decode(&BASE64.encode([0u8; 27])).is_none());
        assert!(PipeKey::decode(&BASE64.encode([0u8; 29])).is_none());
    }
}
