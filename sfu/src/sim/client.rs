//! A simulated participant: real `rtc` peer connections (ICE, DTLS-SRTP, the default
//! interceptors with their NACKs and receiver reports) on the virtual clock, a synthetic
//! encoder that answers keyframe requests as a real one does, and a record of everything
//! it receives.

use super::net::Net;
use super::synth::{self, OpusSource, VideoCodec, VideoSource};
use crate::peer::FeedbackToShard;
use crate::shard::api::SessionId;
use crate::shard::sdp::Direction;
use crate::signal::protocol::{ClientMessage, PeerTarget, ServerMessage, TrackInfo, TrackKind};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a simulated participant publishes and whether it receives.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    /// Publish Opus; `Some(level)` marks each packet with that RFC 6464 level (-dBov),
    /// voice-flagged.
    pub audio: Option<Option<u8>>,
    /// Publish VP8.
    pub video: Option<VideoSpec>,
    /// Receive the others' tracks.
    pub subscribe: bool,
    /// Answer the shard's offers without RTX, as a client that has none.
    pub refuses_rtx: bool,
    /// Offer the subscriber connection itself, as a WHEP player does, with these sections
    /// in this order (`a=recvonly` ones receive; others are offered as the direction says).
    /// Such a client publishes nothing.
    pub offers: Option<Vec<(TrackKind, Direction)>>,
    /// Rewrites that first offer before it is sent (a client the shard cannot answer).
    pub offer_edit: Option<fn(String) -> String>,
}

/// A synthetic VP8 track.
#[derive(Debug, Clone)]
pub struct VideoSpec {
    /// Simulcast rids, lowest first; one empty rid for no simulcast.
    pub rids: Vec<&'static str>,
    /// Bit rate of the top layer; each lower one has half the one above.
    pub bitrate: u64,
    /// Keyframes this often (and whenever a PLI asks).
    pub keyframe_interval: Duration,
}

impl VideoSpec {
    /// One layer, 300 kbit/s, a keyframe every 10 s.
    pub fn single() -> Self {
        Self {
            rids: vec![""],
            bitrate: 300_000,
            keyframe_interval: Duration::from_secs(10),
        }
    }

    /// Three layers `q`, `h`, `f`.
    pub fn simulcast() -> Self {
        Self {
            rids: vec!["q", "h", "f"],
            ..Self::single()
        }
    }
}

/// One RTP packet a client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The track id (as announced in `track_published`).
    pub track: String,
    /// Virtual time of arrival.
    pub at: Instant,
    /// Sequence number and timestamp as the shard rewrote them.
    pub seq: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The synthetic stream and packet index it carries (which layer, which packet).
    pub stream: u32,
    /// Its index in that stream.
    pub index: u32,
    /// Whether it starts a keyframe.
    pub keyframe: bool,
    /// Its VP8 picture ID (video only).
    pub picture_id: Option<u16>,
    /// The transport-wide sequence number the shard stamped on it, if negotiated.
    pub transport_seq: Option<u16>,
}

/// `sdp` with its RTX formats taken out: what a client without RTX would answer.
fn without_rtx(sdp: &str) -> String {
    let rtx: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, codec)| codec.to_ascii_lowercase().starts_with("rtx/"))
        .map(|(pt, _)| pt.to_owned())
        .collect();
    let names_rtx = |line: &str| {
        ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|prefix| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split([' ', ':']).next())
                .is_some_and(|pt| rtx.iter().any(|r| r == pt))
        })
    };
    let mut out = String::new();
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if names_rtx(line) {
            continue;
        }
        if line.starts_with("m=") {
            let kept: Vec<&str> = line
                .split(' ')
                .enumerate()
                .filter(|(i, field)| *i < 3 || !rtx.iter().any(|r| r == field))
                .map(|(_, field)| field)
                .collect();
            out.push_str(&kept.join(" "));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// `sdp` with its media sections' directions set to `directions`, in order.
fn with_directions(sdp: &str, directions: &[Direction]) -> String {
    let mut section: Option<usize> = None;
    let mut out = String::new();
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            section = Some(section.map_or(0, |s| s + 1));
        }
        let direction = section.and_then(|s| directions.get(s));
        match direction {
            Some(direction)
                if matches!(
                    line,
                    "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
                ) =>
            {
                out.push_str(match direction {
                    Direction::SendRecv => "a=sendrecv",
                    Direction::SendOnly => "a=sendonly",
                    Direction::RecvOnly => "a=recvonly",
                    Direction::Inactive => "a=inactive",
                });
            }
            _ => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    out
}

/// The id `sdp` gives header extension `uri` (the first section naming it: under BUNDLE
/// every section gives one URI the same id).
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let (id, rest) = line.trim_end().strip_prefix("a=extmap:")?.split_once(' ')?;
        (rest.split_whitespace().next() == Some(uri))
            .then(|| id.split('/').next()?.parse().ok())
            .flatten()
    })
}

/// The synthetic stream id of a client's audio, and of video layer `layer`.
pub fn stream_id(client: usize, video_layer: Option<usize>) -> u32 {
    let base = (client as u32 + 1) * 100;
    match video_layer {
        None => base,
        Some(layer) => base + 1 + layer as u32,
    }
}

/// One direction of a client: a peer connection on its own address.
struct Side {
    pc: RTCPeerConnection,
    local: SocketAddr,
    connected: bool,
    /// The id this side agreed for transport-wide sequence numbers (the same in every
    /// section, as rtc and browsers number extensions), once its first packet came.
    transport_cc: Option<u8>,
}

impl Side {
    fn read(&mut self, now: Instant, from: SocketAddr, bytes: BytesMut) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: bytes,
        });
    }
}

struct VideoLayer {
    ssrc: u32,
    rid: &'static str,
    source: VideoSource,
    seq: u16,
    /// Not sent by the publisher's own choice (short of bandwidth, or a camera too small).
    paused: bool,
    /// Switched off by the shard (`publish_layers`), as a browser's encoding `active`.
    inactive: bool,
    /// Packets sent on it so far.
    sent: u32,
}

/// Packets of a layer that carry its mid and rid: a browser stops naming a stream once the
/// other end has acknowledged it, which libwebrtc takes as a receiver report for it.
const NAMED_PACKETS: u32 = 30;

struct AudioTrack {
    ssrc: u32,
    level: Option<u8>,
    source: OpusSource,
    seq: u16,
}

/// A simulated participant.
pub struct Client {
    /// Its index among the simulation's clients.
    pub index: usize,
    /// Its participant id.
    pub id: String,
    /// Its session in the core.
    pub session: SessionId,
    events_rx: mpsc::Receiver<ServerMessage>,
    /// Every message the shard sent it, in order.
    pub events: Vec<ServerMessage>,
    publisher: Option<Side>,
    subscriber: Option<Side>,
    subscriber_addr: SocketAddr,
    refuses_rtx: bool,
    audio_sender: Option<RTCRtpSenderId>,
    video_sender: Option<RTCRtpSenderId>,
    audio: Option<AudioTrack>,
    video: Vec<VideoLayer>,
    video_mid: Option<String>,
    /// The directions of the sections of the subscriber connection it offers, as sent.
    offered_directions: Vec<Direction>,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    media_stopped: bool,
    /// Receivers of the subscriber connection by track id, with the SSRC they receive.
    receivers: HashMap<String, (RTCRtpReceiverId, u32)>,
    /// Every RTP packet received, in order (padding-only packets aside).
    pub received: Vec<Received>,
    /// Padding-only packets received (bandwidth probes), which a browser counts for
    /// congestion feedback and drops before its decoder.
    pub padding_received: u64,
    /// PLIs that reached its encoder, per SSRC of its layers.
    pub plis: HashMap<u32, u64>,
    /// Sender reports received, with their arrival.
    pub sender_reports: Vec<(Instant, rtc::rtcp::sender_report::SenderReport)>,
    /// Receiver reports the shard sent the publisher connection, with their arrival.
    pub receiver_reports: Vec<(Instant, rtc::rtcp::receiver_report::ReceiverReport)>,
    /// Sequence numbers the shard asked the publisher connection for (NACK).
    pub nacked: Vec<u16>,
    /// Keyframes its encoder produced, per rid ("" without simulcast).
    pub keyframes_sent: HashMap<&'static str, u64>,
    /// RTP packets it sent.
    pub packets_sent: u64,
    epoch: Instant,
    certificate: RTCCertificate,
}

fn media_engine(publish: bool) -> Result<MediaEngine, String> {
    let mut engine = MediaEngine::default();
    engine
        .register_default_codecs()
        .map_err(|e| e.to_string())?;
    if publish {
        engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(|e| e.to_string())?;
    } else {
        // As a browser does: music rooms render video with no playout delay.
        engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: crate::peer::PLAYOUT_DELAY_URI.to_owned(),
                },
                RtpCodecKind::Video,
                None,
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(engine)
}

/// A DTLS certificate for the simulation's clients: generating one per connection would
/// take most of a short test's time.
pub(super) fn client_certificate() -> Result<RTCCertificate, String> {
    let crypto = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
    let params = rtc::peer_connection::certificate::CertificateParams::new(vec!["client".into()])
        .map_err(|e| e.to_string())?;
    RTCCertificate::generate(
        crypto.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| e.to_string())
}

fn build(
    local: SocketAddr,
    publish: bool,
    now: Instant,
    certificate: &RTCCertificate,
) -> Result<RTCPeerConnection, String> {
    let mut engine = media_engine(publish)?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)
        .map_err(|e| e.to_string())?
        // Keyframe requests reach the synthetic encoder, sender reports the checks.
        .with(Slot::from(500), FeedbackToShard::with_sender_reports());
    let configuration = RTCConfigurationBuilder::new()
        .with_certificates(vec![certificate.clone()])
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(|e| e.to_string())?;
    let candidate = crate::peer::host_candidate(local).map_err(|e| e.to_string())?;
    pc.add_local_candidate(candidate)
        .map_err(|e| e.to_string())?;
    pc.add_local_candidate(RTCIceCandidateInit::default())
        .map_err(|e| e.to_string())?;
    Ok(pc)
}

fn encoding(
    ssrc: u32,
    rid: &str,
    mime: &str,
    clock_rate: u32,
    channels: u16,
) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            rid: rid.to_owned(),
            ..Default::default()
        },
        codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            ..Default::default()
        },
        active: true,
        ..Default::default()
    }
}

/// The mid of the offer's video section.
fn video_mid(sdp: &str) -> Option<String> {
    let mut in_video = false;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
        } else if in_video && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.trim().to_owned());
        }
    }
    None
}

impl Client {
    /// A client that joined as `session`; it starts publishing what `spec` says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        index: usize,
        id: &str,
        session: SessionId,
        events_rx: mpsc::Receiver<ServerMessage>,
        spec: &ClientSpec,
        addr: SocketAddr,
        now: Instant,
        certificate: &RTCCertificate,
    ) -> Result<(Self, Option<ClientMessage>), String> {
        let subscriber_addr = SocketAddr::new(addr.ip(), addr.port() + 1);
        let mut client = Self {
            index,
            id: id.to_owned(),
            session,
            events_rx,
            events: Vec::new(),
            publisher: None,
            subscriber: None,
            subscriber_addr,
            refuses_rtx: spec.refuses_rtx,
            audio_sender: None,
            video_sender: None,
            audio: None,
            video: Vec::new(),
            video_mid: None,
            offered_directions: Vec::new(),
            next_audio: None,
            next_video: None,
            media_stopped: false,
            receivers: HashMap::new(),
            received: Vec::new(),
            padding_received: 0,
            plis: HashMap::new(),
            sender_reports: Vec::new(),
            receiver_reports: Vec::new(),
            nacked: Vec::new(),
            keyframes_sent: HashMap::new(),
            packets_sent: 0,
            epoch: now,
            certificate: certificate.clone(),
        };
        if let Some(sections) = &spec.offers {
            let mut offer = client.offer_subscriber(sections, now)?;
            if let (Some(edit), ClientMessage::Offer { sdp, .. }) = (spec.offer_edit, &mut offer) {
                *sdp = edit(std::mem::take(sdp));
            }
            return Ok((client, Some(offer)));
        }
        if spec.audio.is_none() && spec.video.is_none() {
            return Ok((client, None));
        }
        let mut pc = build(addr, true, now, certificate)?;
        if let Some(level) = spec.audio {
            let ssrc = stream_id(index, None) | 0x1000_0000;
            let track = MediaStreamTrack::new(
                format!("{id}-stream"),
                format!("{id}-audio"),
                "audio".into(),
                RtpCodecKind::Audio,
                vec![encoding(ssrc, "", "audio/opus", 48_000, 2)],
            );
            client.audio_sender = Some(pc.add_track(track).map_err(|e| e.to_string())?);
            client.audio = Some(AudioTrack {
                ssrc,
                level,
                source: OpusSource::new(stream_id(index, None)),
                seq: 1,
            });
        }
        if let Some(video) = &spec.video {
            let count = video.rids.len();
            let mut encodings = Vec::new();
            for (layer, rid) in video.rids.iter().enumerate() {
                let ssrc = stream_id(index, Some(layer)) | 0x2000_0000;
                encodings.push(encoding(ssrc, rid, "video/VP8", 90_000, 0));
                let divisor = 1u64 << (count - 1 - layer);
                client.video.push(VideoLayer {
                    ssrc,
                    rid,
                    source: VideoSource::new(
                        VideoCodec::Vp8,
                        stream_id(index, Some(layer)),
                        (video.bitrate / divisor).max(64_000),
                        video.keyframe_interval,
                    ),
                    seq: 1,
                    paused: false,
                    inactive: false,
                    sent: 0,
                });
            }
            let track = MediaStreamTrack::new(
                format!("{id}-stream"),
                format!("{id}-video"),
                "video".into(),
                RtpCodecKind::Video,
                encodings,
            );
            client.video_sender = Some(pc.add_track(track).map_err(|e| e.to_string())?);
        }
        let offer = pc.create_offer(None).map_err(|e| e.to_string())?;
        pc.set_local_description(now, offer.clone())
            .map_err(|e| e.to_string())?;
        client.video_mid = video_mid(&offer.sdp);
        client.publisher = Some(Side {
            pc,
            local: addr,
            connected: false,
            transport_cc: None,
        });
        Ok((
            client,
            Some(ClientMessage::Offer {
                pc: PeerTarget::Publisher,
                sdp: offer.sdp,
            }),
        ))
    }

    /// Makes the subscriber connection with `sections` and offers it: what the client
    /// sends is its offer with each section's direction as given.
    fn offer_subscriber(
        &mut self,
        sections: &[(TrackKind, Direction)],
        now: Instant,
    ) -> Result<ClientMessage, String> {
        let mut pc = build(self.subscriber_addr, false, now, &self.certificate)?;
        for (kind, _) in sections {
            let kind = match kind {
                TrackKind::Audio => RtpCodecKind::Audio,
                TrackKind::Video => RtpCodecKind::Video,
            };
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            };
            pc.add_transceiver_from_kind(kind, Some(init))
                .map_err(|e| e.to_string())?;
        }
        let offer = pc.create_offer(None).map_err(|e| e.to_string())?;
        pc.set_local_description(now, offer.clone())
            .map_err(|e| e.to_string())?;
        self.subscriber = Some(Side {
            pc,
            local: self.subscriber_addr,
            connected: false,
            transport_cc: None,
        });
        self.offered_directions = sections.iter().map(|(_, d)| *d).collect();
        Ok(ClientMessage::Offer {
            pc: PeerTarget::Subscriber,
            sdp: with_directions(&offer.sdp, &self.offered_directions),
        })
    }

    /// Offers its own subscriber connection again, with fresh ICE credentials if
    /// `ice_restart` (a WHEP player's ICE restart); the offer to send.
    pub fn reoffer_subscriber(&mut self, now: Instant, ice_restart: bool) -> Option<ClientMessage> {
        let side = self.subscriber.as_mut()?;
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart };
        let offer = side.pc.create_offer(Some(options)).ok()?;
        side.pc.set_local_description(now, offer.clone()).ok()?;
        Some(ClientMessage::Offer {
            pc: PeerTarget::Subscriber,
            sdp: with_directions(&offer.sdp, &self.offered_directions),
        })
    }

    /// The description its subscriber connection last offered or answered.
    pub fn subscriber_local_sdp(&self) -> Option<String> {
        Some(
            self.subscriber
                .as_ref()?
                .pc
                .local_description()?
                .sdp
                .clone(),
        )
    }

    /// The description the shard last gave its subscriber connection.
    pub fn subscriber_remote_sdp(&self) -> Option<String> {
        Some(
            self.subscriber
                .as_ref()?
                .pc
                .remote_description()?
                .sdp
                .clone(),
        )
    }

    /// The addresses its connections send from.
    pub fn addresses(&self) -> [SocketAddr; 2] {
        let publisher = self
            .publisher
            .as_ref()
            .map_or(self.subscriber_addr, |s| s.local);
        [publisher, self.subscriber_addr]
    }

    /// Whether it has a publisher connection (it publishes something).
    pub fn has_publisher(&self) -> bool {
        self.publisher.is_some()
    }

    /// Whether the shard offered it a subscriber connection yet.
    pub fn has_subscriber(&self) -> bool {
        self.subscriber.is_some()
    }

    /// The tracks announced to it (in `joined` and `track_published`): publisher's
    /// participant id and the track.
    pub fn announced_tracks(&self) -> Vec<(String, TrackInfo)> {
        let mut tracks = Vec::new();
        for event in &self.events {
            match event {
                ServerMessage::Joined { participants, .. } => {
                    for p in participants {
                        tracks.extend(p.tracks.iter().map(|t| (p.id.clone(), t.clone())));
                    }
                }
                ServerMessage::TrackPublished { participant, track } => {
                    tracks.push((participant.clone(), track.clone()));
                }
                _ => {}
            }
        }
        tracks
    }

    /// The id of the `kind` track `participant` publishes, as announced to this client.
    pub fn track_of(&self, participant: &str, kind: TrackKind) -> Option<String> {
        self.announced_tracks()
            .into_iter()
            .rev()
            .find(|(p, t)| p == participant && t.kind == kind)
            .map(|(_, t)| t.id)
    }

    /// Whether its publisher connection is connected.
    pub fn publisher_connected(&self) -> bool {
        self.publisher.as_ref().is_some_and(|s| s.connected)
    }

    /// Whether its subscriber connection is connected.
    pub fn subscriber_connected(&self) -> bool {
        self.subscriber.as_ref().is_some_and(|s| s.connected)
    }

    /// Offers its publisher connection again, with fresh ICE credentials if
    /// `ice_restart`, as a browser does to restart ICE; the offer to send.
    pub fn renegotiate_publisher(
        &mut self,
        now: Instant,
        ice_restart: bool,
    ) -> Option<ClientMessage> {
        let side = self.publisher.as_mut()?;
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart };
        let offer = side.pc.create_offer(Some(options)).ok()?;
        side.pc.set_local_description(now, offer.clone()).ok()?;
        Some(ClientMessage::Offer {
            pc: PeerTarget::Publisher,
            sdp: offer.sdp,
        })
    }

    /// Stops sending media (the encoder stops; the connection stays).
    pub fn stop_media(&mut self) {
        self.media_stopped = true;
    }

    /// Stops sending the video layer `rid` (a publisher short of bandwidth pauses its top
    /// layers), or resumes it.
    pub fn pause_layer(&mut self, rid: &str, paused: bool) {
        for layer in &mut self.video {
            if layer.rid == rid {
                layer.paused = paused;
            }
        }
    }

    /// The SSRC the received track `track` arrives on.
    pub fn received_ssrc(&self, track: &str) -> Option<u32> {
        self.receivers.get(track).map(|(_, ssrc)| *ssrc)
    }

    /// The SSRC of the RTX stream the shard's offer pairs with the received track `track`
    /// (`a=ssrc-group:FID <media> <rtx>`).
    pub fn received_rtx_ssrc(&self, track: &str) -> Option<u32> {
        let media = self.received_ssrc(track)?;
        let offer = self
            .subscriber
            .as_ref()?
            .pc
            .remote_description()?
            .sdp
            .clone();
        offer.lines().find_map(|line| {
            let mut ssrcs = line
                .trim_end()
                .strip_prefix("a=ssrc-group:FID ")?
                .split(' ');
            (ssrcs.next()?.parse() == Ok(media)).then(|| ssrcs.next()?.parse().ok())?
        })
    }

    /// Asks, over RTCP, for a keyframe of the received track `track`; whether it went.
    pub fn request_keyframe(&mut self, now: Instant, track: &str) -> bool {
        let Some(&(receiver, ssrc)) = self.receivers.get(track) else {
            return false;
        };
        let Some(side) = self.subscriber.as_mut() else {
            return false;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        side.pc
            .rtp_receiver(receiver)
            .is_some_and(|mut r| r.write_rtcp(now, vec![Box::new(pli)]).is_ok())
    }

    /// Handles a message of the shard; returns the reply to send, if any.
    fn on_message(&mut self, now: Instant, message: &ServerMessage) -> Option<ClientMessage> {
        match message {
            ServerMessage::Answer { pc, sdp } => {
                let side = match pc {
                    PeerTarget::Publisher => self.publisher.as_mut()?,
                    PeerTarget::Subscriber => self.subscriber.as_mut()?,
                };
                let answer = RTCSessionDescription::answer(sdp.clone()).ok()?;
                let _ = side.pc.set_remote_description(now, answer);
                None
            }
            ServerMessage::Offer { sdp, .. } => {
                if self.subscriber.is_none() {
                    let pc = build(self.subscriber_addr, false, now, &self.certificate).ok()?;
                    self.subscriber = Some(Side {
                        pc,
                        local: self.subscriber_addr,
                        connected: false,
                        transport_cc: None,
                    });
                }
                let side = self.subscriber.as_mut()?;
                let offer = RTCSessionDescription::offer(sdp.clone()).ok()?;
                side.pc.set_remote_description(now, offer).ok()?;
                let answer = side.pc.create_answer(None).ok()?;
                side.pc.set_local_description(now, answer.clone()).ok()?;
                let sdp = if self.refuses_rtx {
                    without_rtx(&answer.sdp)
                } else {
                    answer.sdp
                };
                Some(ClientMessage::Answer {
                    pc: PeerTarget::Subscriber,
                    sdp,
                })
            }
            ServerMessage::PublishLayers { active, .. } => {
                // As a browser does with its encodings' `active` flags; an encoding
                // switched back on starts with a keyframe.
                for layer in &mut self.video {
                    let inactive = !active.iter().any(|rid| rid == layer.rid);
                    if layer.inactive && !inactive {
                        layer.source.request_keyframe();
                    }
                    layer.inactive = inactive;
                }
                None
            }
            _ => None,
        }
    }

    /// Takes the shard's messages; returns the replies to send.
    pub(super) fn take_messages(&mut self, now: Instant) -> Vec<ClientMessage> {
        let mut replies = Vec::new();
        while let Ok(message) = self.events_rx.try_recv() {
            if let Some(reply) = self.on_message(now, &message) {
                replies.push(reply);
            }
            self.events.push(message);
        }
        replies
    }

    /// Hands an arrived datagram to the connection it is addressed to.
    pub(super) fn deliver(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        bytes: BytesMut,
    ) {
        for side in [self.publisher.as_mut(), self.subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            if side.local == to {
                side.read(now, from, bytes);
                return;
            }
        }
    }

    /// The earliest instant it has something to do.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for side in [self.publisher.as_mut(), self.subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            consider(side.pc.poll_timeout());
        }
        if self.publisher_connected() && !self.media_stopped {
            consider(self.next_audio);
            consider(self.next_video);
        }
        next
    }

    /// Runs timers and the encoder due at `now`, then collects what the connections
    /// produced: datagrams go on the network.
    pub(super) fn step(&mut self, now: Instant, net: &mut Net) {
        for side in [self.publisher.as_mut(), self.subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            if side.pc.poll_timeout().is_some_and(|at| at <= now) {
                let _ = side.pc.handle_timeout(now);
            }
        }
        self.produce(now);
        self.collect(now, net);
    }

    fn produce(&mut self, now: Instant) {
        if !self.publisher_connected() || self.media_stopped {
            return;
        }
        let Some(side) = self.publisher.as_mut() else {
            return;
        };
        let sent_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        if let (Some(audio), Some(sender)) = (self.audio.as_mut(), self.audio_sender) {
            let due = self.next_audio.get_or_insert(now);
            while *due <= now {
                *due += OpusSource::INTERVAL;
                let Some(mut rtp_sender) = side.pc.rtp_sender(sender) else {
                    break;
                };
                let parameters = rtp_sender.get_parameters().clone();
                let Some(payload_type) = payload_type(&parameters, "audio/opus") else {
                    break;
                };
                let level_ext = extension_id(&parameters, rtc::sdp::extmap::AUDIO_LEVEL_URI);
                let p = audio.source.next(sent_ns);
                let mut header = next_header(&p, payload_type, audio.ssrc, &mut audio.seq);
                if let (Some(id), Some(level)) = (level_ext, audio.level) {
                    let _ = header.set_extension(id, Bytes::from(vec![0x80 | (level & 0x7F)]));
                }
                let packet = rtp::Packet {
                    header,
                    payload: p.payload,
                };
                if rtp_sender.write_rtp(now, packet).is_ok() {
                    self.packets_sent += 1;
                }
            }
        }
        if let Some(sender) = self.video_sender {
            let due = self.next_video.get_or_insert(now);
            while *due <= now {
                *due += VideoSource::INTERVAL;
                let Some(mut rtp_sender) = side.pc.rtp_sender(sender) else {
                    break;
                };
                let parameters = rtp_sender.get_parameters().clone();
                let Some(payload_type) = payload_type(&parameters, "video/VP8") else {
                    break;
                };
                let mid_ext = extension_id(&parameters, rtc::sdp::extmap::SDES_MID_URI);
                let rid_ext = extension_id(&parameters, rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);
                for layer in &mut self.video {
                    if layer.paused || layer.inactive {
                        continue;
                    }
                    for p in layer.source.next_frame(sent_ns) {
                        if p.keyframe {
                            *self.keyframes_sent.entry(layer.rid).or_default() += 1;
                        }
                        let mut header = next_header(&p, payload_type, layer.ssrc, &mut layer.seq);
                        layer.sent = layer.sent.saturating_add(1);
                        if !layer.rid.is_empty() && layer.sent <= NAMED_PACKETS {
                            // Simulcast layers are told apart by these (RFC 8852).
                            if let (Some(id), Some(mid)) = (mid_ext, self.video_mid.as_ref()) {
                                let _ = header.set_extension(id, Bytes::from(mid.clone()));
                            }
                            if let Some(id) = rid_ext {
                                let _ = header.set_extension(id, Bytes::from(layer.rid));
                            }
                        }
                        let packet = rtp::Packet {
                            header,
                            payload: p.payload,
                        };
                        if rtp_sender.write_rtp(now, packet).is_ok() {
                            self.packets_sent += 1;
                        }
                    }
                }
            }
        }
    }

    fn collect(&mut self, now: Instant, net: &mut Net) {
        let Self {
            publisher,
            subscriber,
            receivers,
            received,
            padding_received,
            plis,
            sender_reports,
            receiver_reports,
            nacked,
            video,
            ..
        } = self;
        for side in [publisher.as_mut(), subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            while let Some(event) = side.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                        side.connected = state == RTCPeerConnectionState::Connected;
                    }
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        receivers.insert(init.track_id.to_string(), (init.receiver_id, init.ssrc));
                    }
                    _ => {}
                }
            }
            while let Some(message) = side.pc.poll_read() {
                match message.message {
                    RTCMessage::RtpPacket(_, packet)
                        if packet.header.padding && packet.payload.is_empty() =>
                    {
                        *padding_received += 1;
                    }
                    RTCMessage::RtpPacket(track, packet) => {
                        if side.transport_cc.is_none() {
                            side.transport_cc = side.pc.local_description().and_then(|d| {
                                extmap_id(&d.sdp, rtc::sdp::extmap::TRANSPORT_CC_URI)
                            });
                        }
                        let header_len = synth::header_len(Some(VideoCodec::Vp8), &packet.payload);
                        let probe = synth::probe(&packet.payload, header_len)
                            .or_else(|| synth::probe(&packet.payload, 1));
                        received.push(Received {
                            track: track.to_string(),
                            at: now,
                            seq: packet.header.sequence_number,
                            timestamp: packet.header.timestamp,
                            stream: probe.map_or(0, |p| p.stream),
                            index: probe.map_or(0, |p| p.index),
                            keyframe: crate::media::codec::is_keyframe(
                                crate::media::codec::CodecFamily::Vp8,
                                &packet.payload,
                            ),
                            picture_id: synth::vp8_picture_id(&packet.payload),
                            transport_seq: side
                                .transport_cc
                                .and_then(|id| packet.header.get_extension(id))
                                .and_then(|v| Some(u16::from_be_bytes([*v.first()?, *v.get(1)?]))),
                        });
                    }
                    RTCMessage::RtcpPacket(_, packets) => {
                        for packet in packets {
                            if let Some(report) = packet
                                .as_any()
                                .downcast_ref::<rtc::rtcp::sender_report::SenderReport>(
                            ) {
                                sender_reports.push((now, report.clone()));
                            }
                            if let Some(report) = packet
                                .as_any()
                                .downcast_ref::<rtc::rtcp::receiver_report::ReceiverReport>(
                            ) {
                                receiver_reports.push((now, report.clone()));
                            }
                            if let Some(nack) = packet.as_any().downcast_ref::<
                                rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
                            >() {
                                nacked.extend(nack.nacks.iter().flat_map(|p| p.packet_list()));
                            }
                            if let Some(pli) =
                                packet.as_any().downcast_ref::<PictureLossIndication>()
                            {
                                *plis.entry(pli.media_ssrc).or_default() += 1;
                                for layer in video.iter_mut() {
                                    if layer.ssrc == pli.media_ssrc {
                                        layer.source.request_keyframe();
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(out) = side.pc.poll_write() {
                net.send(now, side.local, out.transport.peer_addr, out.message);
            }
        }
    }

    /// Packets received on `track`.
    pub fn received_on(&self, track: &str) -> impl Iterator<Item = &Received> {
        self.received.iter().filter(move |r| r.track == track)
    }

    /// PLIs that reached the encoder of the video layer `rid`.
    pub fn plis_for(&self, rid: &str) -> u64 {
        self.video
            .iter()
            .filter(|l| l.rid == rid)
            .map(|l| self.plis.get(&l.ssrc).copied().unwrap_or(0))
            .sum()
    }
}

/// The RTP header of a synthetic packet on `ssrc`, taking the next sequence number.
fn next_header(
    packet: &synth::SynthPacket,
    payload_type: u8,
    ssrc: u32,
    seq: &mut u16,
) -> rtp::header::Header {
    let header = rtp::header::Header {
        version: 2,
        marker: packet.marker,
        payload_type,
        sequence_number: *seq,
        timestamp: packet.timestamp,
        ssrc,
        ..Default::default()
    };
    *seq = seq.wrapping_add(1);
    header
}

fn payload_type(
    parameters: &rtc::rtp_transceiver::rtp_sender::RTCRtpSendParameters,
    mime: &str,
) -> Option<u8> {
    parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}

fn extension_id(
    parameters: &rtc::rtp_transceiver::rtp_sender::RTCRtpSendParameters,
    uri: &str,
) -> Option<u8> {
    parameters
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|e| e.uri == uri)
        .and_then(|e| u8::try_from(e.id).ok())
}
