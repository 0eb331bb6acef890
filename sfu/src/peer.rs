//! Building the shard's peer connections on the sans-I/O `rtc` core.
//!
//! Every participant has up to two peer connections, both on the shard's one UDP port:
//! a *publisher* connection the client offers (it sends, the shard receives) and a
//! *subscriber* connection the shard offers (the shard sends, the client receives). Keeping
//! the directions apart means each side only ever offers on its own connection, so
//! renegotiation never races (no glare), and each connection carries only the interceptors
//! its direction needs.
//!
//! The shard is an ICE-lite agent with a single host candidate: the advertised address.
//! Every connection of a shard shares one DTLS certificate and crypto provider, generated
//! once at start-up. SRTP profiles are offered AEAD-AES-128-GCM first, the cheapest per
//! packet on machines with AES instructions.

use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9,
    MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error as RtcError;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which direction a peer connection carries media in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The client offers and sends; the shard answers and receives.
    Publisher,
    /// The shard offers and sends; the client answers and receives.
    Subscriber,
}

/// Errors building a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerBuildError {
    /// The `rtc` stack refused the configuration.
    #[error("peer connection setup failed: {0}")]
    Rtc(#[from] RtcError),
    /// No crypto provider could be resolved.
    #[error("crypto provider unavailable: {0}")]
    Crypto(String),
}

/// ICE timing of the shard's connections.
///
/// The shard is ICE-lite: it never sends checks, it answers them. A client's checks are
/// its consent (RFC 7675), which lasts 30 s after the last one; clients check every few
/// seconds, more slowly when their page is busy or throttled. So the shard keeps sending
/// for the whole consent lifetime and stops only when consent has expired.
#[derive(Debug, Clone, Copy)]
pub struct IceTimeouts {
    /// Silence (no authenticated check) after which consent has expired: the shard stops
    /// sending to the connection.
    pub disconnected: Duration,
    /// Further silence after which it counts as failed and is torn down.
    pub failed: Duration,
    /// Consent-freshness keepalive interval.
    pub keepalive: Duration,
}

impl Default for IceTimeouts {
    fn default() -> Self {
        Self {
            disconnected: CONSENT_LIFETIME,
            failed: FAILED_AFTER_CONSENT,
            keepalive: Duration::from_secs(2),
        }
    }
}

/// How long consent lasts after the last authenticated check (RFC 7675 §5.1).
pub const CONSENT_LIFETIME: Duration = Duration::from_secs(30);
/// How long past consent expiry a silent connection counts as failed: time for a client
/// that lost its path to restart ICE.
pub const FAILED_AFTER_CONSENT: Duration = Duration::from_secs(10);

/// Makes the shard's peer connections, sharing one certificate and crypto provider.
pub struct PeerFactory {
    crypto: Arc<dyn RTCCryptoProvider>,
    certificate: rtc::peer_connection::certificate::RTCCertificate,
    advertised: SocketAddr,
    advertised_tcp: Option<SocketAddr>,
    timeouts: IceTimeouts,
}

impl PeerFactory {
    /// A factory advertising `advertised` as every connection's UDP host candidate, and
    /// `advertised_tcp`, when given, as its passive ICE-TCP candidate.
    pub fn new(
        advertised: SocketAddr,
        advertised_tcp: Option<SocketAddr>,
        timeouts: IceTimeouts,
    ) -> Result<Self, PeerBuildError> {
        let crypto =
            rtc::crypto::default_provider().map_err(|e| PeerBuildError::Crypto(e.to_string()))?;
        let params =
            rtc::peer_connection::certificate::CertificateParams::new(vec!["tutti-sfu".to_owned()])
                .map_err(|e| PeerBuildError::Crypto(e.to_string()))?;
        let certificate = rtc::peer_connection::certificate::RTCCertificate::generate(
            crypto.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )?;
        Ok(Self {
            crypto,
            certificate,
            advertised,
            advertised_tcp,
            timeouts,
        })
    }

    /// The address clients reach the shard at.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// The crypto provider shared by every connection (used to check STUN integrity).
    pub fn crypto(&self) -> &Arc<dyn RTCCryptoProvider> {
        &self.crypto
    }

    /// Builds a connection for one direction of one participant. Its ICE credentials are
    /// the stack's own random ones, fresh on every ICE restart; the core learns them from
    /// each local description it applies (see [`ice_credentials`]).
    /// `redundant_audio` (music rooms) adds RED (RFC 2198) over Opus to the codecs.
    pub fn build(
        &self,
        role: PeerRole,
        redundant_audio: bool,
        now: Instant,
    ) -> Result<RTCPeerConnection, PeerBuildError> {
        let mut media_engine = media_engine(role, redundant_audio)?;
        let registry = interceptors(role, &mut media_engine)?;
        let setting_engine = SettingEngineBuilder::new()
            .with_crypto_provider(self.crypto.clone())
            .with_lite(true)
            // Remote `.local` candidates are useless to an ICE-lite server (it learns the
            // client's address from its checks), and resolving them would make the shard
            // send multicast DNS queries from its media socket.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_ice_timeouts(
                Some(self.timeouts.disconnected),
                Some(self.timeouts.failed),
                Some(self.timeouts.keepalive),
            )
            .build();
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)?;
        pc.add_local_candidate(host_candidate(self.advertised)?)?;
        if let Some(tcp) = self.advertised_tcp {
            pc.add_local_candidate(passive_tcp_candidate(tcp)?)?;
        }
        // The end-of-candidates marker: an ICE-lite agent has nothing more to gather.
        pc.add_local_candidate(RTCIceCandidateInit::default())?;
        Ok(pc)
    }
}

/// The ICE username fragment and password of an SDP (session level or the first media
/// section: the shard bundles everything on one transport).
pub fn ice_credentials(sdp: &str) -> Option<(&str, &str)> {
    let mut ufrag = None;
    let mut pwd = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert(value.trim());
        } else if let Some(value) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert(value.trim());
        }
        if ufrag.is_some() && pwd.is_some() {
            break;
        }
    }
    Some((ufrag?, pwd?))
}

/// The ICE host candidate for a UDP address.
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, RtcError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

/// The passive ICE-TCP host candidate (RFC 6544) for a listening address.
pub fn passive_tcp_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, RtcError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "tcp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: rtc::ice::tcp_type::TcpType::Passive,
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

pub use tutti_service::token::random_token;

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    payload_type: u8,
    rtcp_feedback: Vec<RTCPFeedback>,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback,
        },
        payload_type,
    }
}

/// The playout-delay header extension: the sender's bounds on how long a receiver holds
/// video before rendering it.
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// RED's MIME type (RFC 2198 for audio).
pub const MIME_TYPE_RED: &str = "audio/red";
/// The payload types RED and the Opus it carries have in every description the shard
/// writes, and in browsers' offers: a RED format line names Opus's payload type, so a
/// publisher whose Opus has another number does not match and sends plain Opus.
const RED_PAYLOAD_TYPE: u8 = 63;
const OPUS_PAYLOAD_TYPE: u8 = 111;

/// What a subscriber connection offers for a RED track: RED, and the Opus its blocks are
/// (a RED format line naming a payload type the section lacks is refused by browsers, and
/// a subscriber without RED takes the Opus alone).
pub fn redundant_audio_preferences() -> Vec<RTCRtpCodecParameters> {
    vec![red_codec(vec![]), opus_codec(vec![])]
}

/// The video codecs the shard forwards, in its order of preference: MIME type, format
/// parameters, payload type and its RTX's.
const VIDEO_CODECS: [(&str, &str, u8, u8); 5] = [
    (MIME_TYPE_VP8, "", 96, 97),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        102,
        103,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        104,
        105,
    ),
    (MIME_TYPE_VP9, "profile-id=0", 98, 99),
    (MIME_TYPE_AV1, "", 45, 46),
];

/// What a subscriber connection offers for a video track of `mime`: that codec first,
/// then every other the shard forwards. `rtc` would offer the track's codec alone, and a
/// connection's first answer fixes the codecs all its later sections may use: a
/// subscriber whose first video was VP8 could then never be sent a VP9 or AV1 track.
pub fn video_preferences(mime: &str) -> Vec<RTCRtpCodecParameters> {
    let (first, rest): (Vec<_>, Vec<_>) = VIDEO_CODECS
        .iter()
        .partition(|(codec, ..)| codec.eq_ignore_ascii_case(mime));
    first
        .into_iter()
        .chain(rest)
        .map(|(codec, fmtp, payload_type, _)| {
            self::codec(codec, 90_000, 0, fmtp, payload_type, vec![])
        })
        .collect()
}

/// RED over Opus, as every description the shard writes numbers them.
fn red_codec(feedback: Vec<RTCPFeedback>) -> RTCRtpCodecParameters {
    codec(
        MIME_TYPE_RED,
        48_000,
        2,
        &format!("{OPUS_PAYLOAD_TYPE}/{OPUS_PAYLOAD_TYPE}"),
        RED_PAYLOAD_TYPE,
        feedback,
    )
}

/// Opus, as every description the shard writes numbers it.
fn opus_codec(feedback: Vec<RTCPFeedback>) -> RTCRtpCodecParameters {
    codec(
        MIME_TYPE_OPUS,
        48_000,
        2,
        "minptime=10;useinbandfec=1",
        OPUS_PAYLOAD_TYPE,
        feedback,
    )
}

/// The codecs the shard forwards, in preference order. Publishers pick from their own
/// list; subscribers are offered the publisher's codec. With `redundant_audio`, RED comes
/// before Opus: a music room's audio survives a lost packet without a retransmission's
/// delay, for twice the audio bitrate.
fn media_engine(role: PeerRole, redundant_audio: bool) -> Result<MediaEngine, RtcError> {
    let mut engine = MediaEngine::default();
    let publisher = role == PeerRole::Publisher;
    let mut video_feedback = vec![
        feedback("nack", ""),
        feedback("nack", "pli"),
        feedback("ccm", "fir"),
    ];
    // Publishers get transport-wide feedback from the shard; subscribers send it for the
    // sequence numbers the shard stamps on what it forwards.
    video_feedback.push(feedback("transport-cc", ""));
    let audio_feedback = vec![feedback("transport-cc", "")];
    if redundant_audio {
        engine.register_codec(red_codec(audio_feedback.clone()), RtpCodecKind::Audio)?;
    }
    engine.register_codec(opus_codec(audio_feedback), RtpCodecKind::Audio)?;
    for (mime, fmtp, payload_type, rtx_payload_type) in VIDEO_CODECS {
        engine.register_codec(
            codec(mime, 90_000, 0, fmtp, payload_type, video_feedback.clone()),
            RtpCodecKind::Video,
        )?;
        // Publishers may repair losses with RTX (the stack unwraps it on receipt).
        // Subscribers are offered it for the shard's probes (media::rtx); the shard
        // retransmits in the original stream.
        engine.register_codec(
            codec(
                MIME_TYPE_RTX,
                90_000,
                0,
                &format!("apt={payload_type}"),
                rtx_payload_type,
                vec![],
            ),
            RtpCodecKind::Video,
        )?;
    }
    if !publisher && redundant_audio {
        // Music rooms: subscribers are told to render video without a smoothing delay.
        engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
    // Publishers: what the shard reads (mid and rids to route simulcast, audio levels for
    // speaker detection, AV1's dependency descriptor to tell its layers apart) and the send stamps its transport-cc feedback refers to.
    // Subscribers: what the shard writes on every forwarded packet (media::outgoing): the
    // send stamps a receiver's congestion feedback refers to, the publisher's audio
    // level for a client's own speaker display, and an AV1 publisher's dependency
    // descriptor, without which a browser cannot put its spatial layers together.
    let extensions: &[(&str, RtpCodecKind)] = if publisher {
        &[
            (rtc::sdp::extmap::SDES_MID_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::SDES_MID_URI, RtpCodecKind::Video),
            (
                rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
                RtpCodecKind::Video,
            ),
            (
                rtc::sdp::extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
                RtpCodecKind::Video,
            ),
            (rtc::sdp::extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::TRANSPORT_CC_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::TRANSPORT_CC_URI, RtpCodecKind::Video),
            (
                crate::media::dependency_descriptor::URI,
                RtpCodecKind::Video,
            ),
        ]
    } else {
        &[
            (rtc::sdp::extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::ABS_SEND_TIME_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::ABS_SEND_TIME_URI, RtpCodecKind::Video),
            (rtc::sdp::extmap::TRANSPORT_CC_URI, RtpCodecKind::Audio),
            (rtc::sdp::extmap::TRANSPORT_CC_URI, RtpCodecKind::Video),
            (
                crate::media::dependency_descriptor::URI,
                RtpCodecKind::Video,
            ),
        ]
    };
    for (uri, kind) in extensions {
        engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: (*uri).to_owned(),
            },
            *kind,
            None,
        )?;
    }
    Ok(engine)
}

/// The id a direction's negotiated header extensions give `uri`, if they name it.
pub(crate) fn extension_id(
    extensions: &[rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionParameters],
    uri: &str,
) -> Option<u8> {
    extensions
        .iter()
        .find(|e| e.uri == uri)
        .and_then(|e| u8::try_from(e.id).ok())
}

/// The interceptor chain of one direction. A publisher connection has none: the shard
/// reads its RTP and RTCP itself and makes the NACKs, transport-cc feedback and receiver
/// reports it owes the publisher (media::uplink_feedback), from every packet, including
/// those the connection still reads. A subscriber connection hands the subscriber's feedback (keyframe
/// requests, NACKs, receiver reports) to the shard, which answers NACKs from the per-track
/// buffer instead of a per-subscriber copy. The shard writes and protects the RTP it
/// sends itself, so it also writes the sender reports (media::sender_report): rtc's
/// interceptor would see none of those packets.
fn interceptors(role: PeerRole, engine: &mut MediaEngine) -> Result<Registry, RtcError> {
    let _ = engine;
    Ok(match role {
        PeerRole::Publisher => Registry::new(),
        PeerRole::Subscriber => Registry::new().with(Slot::from(500), FeedbackToShard::default()),
    })
}

/// Marks the subscriber feedback the shard acts on so that it reaches the application
/// instead of ending in the chain's terminus.
#[derive(Default)]
pub(crate) struct FeedbackToShard {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    /// Sender reports too (the simulation's clients check the shard's).
    sender_reports: bool,
}

impl FeedbackToShard {
    /// Also delivers sender reports, as a receiving application that checks them needs.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn with_sender_reports() -> Self {
        Self {
            sender_reports: true,
            ..Self::default()
        }
    }
}

fn is_feedback_for_shard(packet: &dyn rtcp::packet::Packet) -> bool {
    let any = packet.as_any();
    any.is::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
        || any.is::<rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
        || any.is::<rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
        || any.is::<rtcp::receiver_report::ReceiverReport>()
        || any.is::<rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackToShard {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = RtcError;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| {
                is_feedback_for_shard(p.as_ref())
                    || (self.sender_reports && p.as_any().is::<rtcp::sender_report::SenderReport>())
            })
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackToShard {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer_credentials(pc: &mut RTCPeerConnection, restart: bool) -> (String, String) {
        if restart {
            pc.restart_ice();
        }
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(Instant::now(), offer.clone())
            .expect("applied");
        let (ufrag, pwd) = ice_credentials(&offer.sdp).expect("credentials in the offer");
        (ufrag.to_owned(), pwd.to_owned())
    }

    #[test]
    fn connections_get_distinct_credentials_and_fresh_ones_on_ice_restart() {
        let factory = PeerFactory::new(
            "127.0.0.1:40000".parse().unwrap(),
            None,
            IceTimeouts::default(),
        )
        .expect("factory");
        let now = Instant::now();
        let mut a = factory
            .build(PeerRole::Subscriber, false, now)
            .expect("one");
        let mut b = factory
            .build(PeerRole::Subscriber, true, now)
            .expect("other");
        for pc in [&mut a, &mut b] {
            pc.add_transceiver_from_kind(RtpCodecKind::Audio, None)
                .expect("a media section to offer");
        }
        let (a_ufrag, a_pwd) = offer_credentials(&mut a, false);
        let (b_ufrag, _) = offer_credentials(&mut b, false);
        assert_ne!(a_ufrag, b_ufrag);
        assert!(a_pwd.len() >= 22, "ICE passwords need 128 bits");
        let (again, _) = offer_credentials(&mut a, false);
        assert_eq!(again, a_ufrag, "a renegotiation keeps the credentials");
        let (restarted, restarted_pwd) = offer_credentials(&mut a, true);
        assert_ne!(restarted, a_ufrag, "an ICE restart changes the ufrag");
        assert_ne!(restarted_pwd, a_pwd, "and the password");
    }

    #[test]
    fn reads_credentials_from_session_or_media_level() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\n\
                   a=ice-pwd:0123456789012345678901\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=ice-ufrag:other\r\n";
        assert_eq!(
            ice_credentials(sdp),
            Some(("abcd", "0123456789012345678901"))
        );
        assert_eq!(ice_credentials("v=0\r\na=ice-ufrag:x\r\n"), None);
        assert_eq!(ice_credentials(""), None);
    }
}
