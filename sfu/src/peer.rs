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

use rand::RngExt;
use rand::distr::Alphanumeric;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder, Registry,
    SenderReportBuilder, Slot, StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
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
#[derive(Debug, Clone, Copy)]
pub struct IceTimeouts {
    /// Silence after which a connection counts as disconnected.
    pub disconnected: Duration,
    /// Further silence after which it counts as failed and is torn down.
    pub failed: Duration,
    /// Consent-freshness keepalive interval.
    pub keepalive: Duration,
}

impl Default for IceTimeouts {
    fn default() -> Self {
        Self {
            disconnected: Duration::from_secs(5),
            failed: Duration::from_secs(10),
            keepalive: Duration::from_secs(2),
        }
    }
}

/// A new peer connection with the ICE credentials the demultiplexer routes by.
pub struct NewPeer {
    /// The connection.
    pub pc: RTCPeerConnection,
    /// Its local ICE username fragment.
    pub ufrag: String,
    /// Its local ICE password, which authenticates Binding requests.
    pub pwd: String,
}

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

    /// Builds a connection for one direction of one participant.
    pub fn build(&self, role: PeerRole, now: Instant) -> Result<NewPeer, PeerBuildError> {
        let ufrag = random_token(16);
        let pwd = random_token(32);
        let mut media_engine = media_engine(role)?;
        let registry = interceptors(role, &mut media_engine)?;
        let setting_engine = SettingEngineBuilder::new()
            .with_crypto_provider(self.crypto.clone())
            .with_lite(true)
            // Remote `.local` candidates are useless to an ICE-lite server (it learns the
            // client's address from its checks), and resolving them would make the shard
            // send multicast DNS queries from its media socket.
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_credentials(ufrag.clone(), pwd.clone())
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
        Ok(NewPeer { pc, ufrag, pwd })
    }
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

/// A random alphanumeric token (ICE credentials, track ids, generated secrets).
pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

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

/// The codecs the shard forwards, in preference order. Publishers pick from their own
/// list; subscribers are offered the publisher's codec.
fn media_engine(role: PeerRole) -> Result<MediaEngine, RtcError> {
    let mut engine = MediaEngine::default();
    let publisher = role == PeerRole::Publisher;
    let mut video_feedback = vec![
        feedback("nack", ""),
        feedback("nack", "pli"),
        feedback("ccm", "fir"),
    ];
    let mut audio_feedback = vec![];
    if publisher {
        video_feedback.push(feedback("transport-cc", ""));
        audio_feedback.push(feedback("transport-cc", ""));
    }
    engine.register_codec(
        codec(
            MIME_TYPE_OPUS,
            48_000,
            2,
            "minptime=10;useinbandfec=1",
            111,
            audio_feedback,
        ),
        RtpCodecKind::Audio,
    )?;
    let video: [(&str, &str, u8, u8); 5] = [
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
    for (mime, fmtp, payload_type, rtx_payload_type) in video {
        engine.register_codec(
            codec(mime, 90_000, 0, fmtp, payload_type, video_feedback.clone()),
            RtpCodecKind::Video,
        )?;
        // Publishers may repair losses with RTX (the stack unwraps it on receipt); the
        // shard itself retransmits in the original stream, so subscribers are not offered it.
        if publisher {
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
    }
    if publisher {
        for (uri, kind) in [
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
        ] {
            engine.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                kind,
                None,
            )?;
        }
    }
    Ok(engine)
}

/// The interceptor chain of one direction. A publisher connection detects losses (NACK),
/// reports arrivals for the publisher's bandwidth estimate (transport-cc) and sends
/// receiver reports. A subscriber connection sends sender reports and hands the
/// subscriber's feedback (keyframe requests, NACKs, receiver reports) to the shard, which
/// answers NACKs from the per-track buffer instead of a per-subscriber copy.
fn interceptors(role: PeerRole, engine: &mut MediaEngine) -> Result<Registry, RtcError> {
    let _ = engine;
    Ok(match role {
        PeerRole::Publisher => Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build()),
        PeerRole::Subscriber => Registry::new()
            .with(Slot::from(500), FeedbackToShard::default())
            .with(Slot::SenderReport, SenderReportBuilder::new().build()),
    })
}

/// Marks the subscriber feedback the shard acts on so that it reaches the application
/// instead of ending in the chain's terminus.
#[derive(Default)]
struct FeedbackToShard {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
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
            && packets.iter().any(|p| is_feedback_for_shard(p.as_ref()))
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

    #[test]
    fn builds_both_roles_with_distinct_credentials() {
        let factory = PeerFactory::new(
            "127.0.0.1:40000".parse().unwrap(),
            None,
            IceTimeouts::default(),
        )
        .expect("factory");
        let now = Instant::now();
        let a = factory.build(PeerRole::Publisher, now).expect("publisher");
        let b = factory
            .build(PeerRole::Subscriber, now)
            .expect("subscriber");
        assert_ne!(a.ufrag, b.ufrag);
        assert!(a.pwd.len() >= 22, "ICE passwords need 128 bits");
    }
}
