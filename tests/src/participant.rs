//! A test participant: a real WebRTC peer (the async `webrtc` crate, DTLS-SRTP) that joins
//! a shard room through its signaling endpoint, publishes synthetic Opus and VP8, and
//! records everything it receives.
//!
//! The publisher answers keyframe requests the way an encoder does (the next frame is a
//! key frame), so tests observe PLI forwarding as a user would: a key frame arriving.

use crate::janus::JanusSession;
use crate::signal_client::{Outgoing, SignalClient};
use crate::synth::{self, Epoch, OpusSource, VideoCodec, VideoSource};
use anyhow::{Context, Result, bail};
use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, watch};
use tutti_sfu::signal::protocol::{ClientMessage, PeerTarget, ServerMessage};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, Slot,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// What a participant does.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// Room to join.
    pub room: String,
    /// Participant id.
    pub id: String,
    /// Publish synthetic Opus.
    pub audio: bool,
    /// Publish synthetic VP8.
    pub video: bool,
    /// Receive others' tracks.
    pub subscribe: bool,
    /// Video bitrate in bit/s (of the top layer with simulcast).
    pub video_bitrate: u64,
    /// Send video as three simulcast layers, rids `q`, `h`, `f`.
    pub simulcast: bool,
    /// The video codec to publish (the only one the publisher offers).
    pub video_codec: VideoCodec,
    /// RFC 6464 level (-dBov) to mark audio packets with, voice-flagged; none when `None`.
    pub audio_level: Option<u8>,
    /// Open no UDP socket: reach the shard over ICE-TCP only (a network that blocks UDP).
    pub tcp_only: bool,
    /// Key frame interval of the video source.
    pub keyframe_interval: Duration,
    /// Keep every received packet's sequence number and index (correctness tests).
    pub record_packets: bool,
    /// Shared epoch for send timestamps (latency measurement in one process).
    pub epoch: Epoch,
    /// Join through a gateway with this `join` message (room, name, password or token)
    /// instead of the shard protocol's `join`.
    pub gateway_join: Option<serde_json::Value>,
    /// The address its connections bind to (Janus needs a non-loopback one).
    pub bind_ip: std::net::IpAddr,
    /// Offer AEAD_AES_128_GCM alone for DTLS-SRTP, so that every SFU a benchmark compares
    /// encrypts alike (left to itself Janus picks AES-256-GCM from the default list).
    pub aes128_gcm_only: bool,
}

impl ParticipantConfig {
    /// A participant publishing audio and video and subscribing.
    pub fn new(room: &str, id: &str) -> Self {
        Self {
            room: room.to_owned(),
            id: id.to_owned(),
            audio: true,
            video: true,
            subscribe: true,
            video_bitrate: 1_000_000,
            simulcast: false,
            video_codec: VideoCodec::Vp8,
            audio_level: None,
            tcp_only: false,
            keyframe_interval: Duration::from_secs(2),
            record_packets: true,
            epoch: Epoch::default(),
            gateway_join: None,
            bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            aes128_gcm_only: false,
        }
    }
}

/// One received packet, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Sequence number on the wire.
    pub seq: u16,
    /// The synthetic stream (simulcast layer) it came from.
    pub stream: u32,
    /// Index in the synthetic stream.
    pub index: u32,
    /// Whether the payload bytes were intact.
    pub intact: bool,
    /// Whether it started a key frame.
    pub keyframe: bool,
}

/// Everything received on one track.
#[derive(Debug, Default, Clone)]
pub struct TrackRecord {
    /// Audio or video.
    pub video: bool,
    /// The codec's MIME type.
    pub codec: String,
    /// Packets received.
    pub packets: u64,
    /// Packets with the synthetic trailer missing or bytes altered.
    pub corrupt: u64,
    /// Key frames received.
    pub keyframes: u64,
    /// When the first packet arrived.
    pub first_at: Option<Instant>,
    /// Whether the first packet started a key frame.
    pub first_was_keyframe: Option<bool>,
    /// When the last key frame started arriving.
    pub last_keyframe_at: Option<Instant>,
    /// When the last packet arrived.
    pub last_at: Option<Instant>,
    /// The synthetic streams seen on this track.
    pub streams: HashSet<u32>,
    /// Every packet (when recording).
    pub log: Vec<Received>,
    /// `(sent_ns, latency_ns)` of every packet (when recording latency).
    pub arrivals: Vec<(u64, u64)>,
}

/// How completely one track arrived, judged from its packet log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    /// Packets the sender sent from the first one received to the last one sent.
    pub expected: u64,
    /// Distinct packets of that range received.
    pub received: u64,
    /// `received / expected`.
    pub ratio: f64,
    /// Whether, sorted by sequence number, the packets are in the order they were sent.
    pub in_order: bool,
    /// Whether every payload arrived byte-identical.
    pub intact: bool,
    /// Whether the sequence numbers have no holes (nothing dropped or renumbered).
    pub contiguous: bool,
}

impl TrackRecord {
    /// Judges delivery given how many packets the sender sent in all (its last index + 1).
    pub fn delivery(&self, sent: u64) -> Delivery {
        let Some(first) = self.log.iter().map(|r| r.index).min() else {
            return Delivery {
                expected: sent,
                received: 0,
                ratio: 0.0,
                in_order: false,
                intact: false,
                contiguous: false,
            };
        };
        let distinct: HashSet<u32> = self.log.iter().map(|r| r.index).collect();
        let expected = sent.saturating_sub(u64::from(first)).max(1);
        let received = distinct.len() as u64;
        // Unwrap sequence numbers relative to the first packet, then sort by them.
        let base = self.log[0].seq;
        let mut by_seq: Vec<(i64, u32)> = self
            .log
            .iter()
            .map(|r| (i64::from(r.seq.wrapping_sub(base) as i16), r.index))
            .collect();
        let mut unwrapped = 0i64;
        let mut previous = base;
        for (slot, r) in by_seq.iter_mut().zip(&self.log) {
            unwrapped += i64::from(r.seq.wrapping_sub(previous) as i16);
            previous = r.seq;
            slot.0 = unwrapped;
        }
        by_seq.sort();
        by_seq.dedup();
        let in_order = by_seq.windows(2).all(|w| w[0].1 < w[1].1);
        let contiguous = by_seq.windows(2).all(|w| w[1].0 - w[0].0 == 1)
            && by_seq.windows(2).all(|w| w[1].1 - w[0].1 == 1);
        Delivery {
            expected,
            received,
            ratio: received as f64 / expected as f64,
            in_order,
            intact: self.corrupt == 0 && self.log.iter().all(|r| r.intact),
            contiguous,
        }
    }
}

/// What a publisher sent.
#[derive(Debug, Default)]
pub struct SentCounters {
    /// Audio packets.
    pub audio_packets: AtomicU64,
    /// Video packets.
    pub video_packets: AtomicU64,
    /// Keyframe requests (PLI) that reached this publisher.
    pub plis: AtomicU64,
    /// Key frames sent.
    pub keyframes: AtomicU64,
}

struct Shared {
    config: ParticipantConfig,
    records: Mutex<HashMap<String, TrackRecord>>,
    remote_tracks: Mutex<HashMap<String, Arc<dyn TrackRemote>>>,
    events: Mutex<Vec<ServerMessage>>,
    changed: Notify,
    sent: SentCounters,
    publisher_state: watch::Sender<RTCPeerConnectionState>,
    subscriber_state: watch::Sender<RTCPeerConnectionState>,
    /// Whether each connection has gathered its candidates (an SFU without trickle, like
    /// Janus, takes them in the description).
    publisher_gathered: watch::Sender<bool>,
    subscriber_gathered: watch::Sender<bool>,
    record_latency: bool,
}

impl Shared {
    fn new(config: ParticipantConfig, record_latency: bool) -> Arc<Self> {
        Arc::new(Self {
            config,
            records: Mutex::new(HashMap::new()),
            remote_tracks: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            changed: Notify::new(),
            sent: SentCounters::default(),
            publisher_state: watch::channel(RTCPeerConnectionState::New).0,
            subscriber_state: watch::channel(RTCPeerConnectionState::New).0,
            publisher_gathered: watch::channel(false).0,
            subscriber_gathered: watch::channel(false).0,
            record_latency,
        })
    }
}

/// Marks PLIs so they reach the application (the synthetic encoder reacts to them).
#[derive(Default)]
struct DeliverPli {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverPli {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets
                .iter()
                .any(|p| p.as_any().is::<PictureLossIndication>())
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for DeliverPli {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

struct Handler {
    shared: Arc<Shared>,
    publisher: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let tx = if self.publisher {
            &self.shared.publisher_state
        } else {
            &self.shared.subscriber_state
        };
        let _ = tx.send(state);
        self.shared.changed.notify_waiters();
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        let tx = if self.publisher {
            &self.shared.publisher_gathered
        } else {
            &self.shared.subscriber_gathered
        };
        // Only ever raised: the handler's calls may run out of order, and a late
        // "gathering" must not hide the "complete" before it.
        if state == RTCIceGatheringState::Complete {
            let _ = tx.send(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        tokio::spawn(read_track(shared, track));
    }
}

async fn read_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    let id = track.track_id().await;
    let video = track.kind().await == RtpCodecKind::Video;
    let mut codec = None;
    if video {
        for ssrc in track.ssrcs().await {
            if let Some(c) = track.codec(ssrc).await {
                codec = VideoCodec::from_mime(&c.mime_type);
            }
        }
    }
    let codec_or_vp8 = codec.unwrap_or(VideoCodec::Vp8);
    shared
        .remote_tracks
        .lock()
        .await
        .insert(id.clone(), track.clone());
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let now = Instant::now();
        let received_ns = shared.config.epoch.now_ns();
        let keyframe = video && synth::is_keyframe(codec_or_vp8, &packet.payload);
        let probe = synth::probe(
            &packet.payload,
            synth::header_len(video.then_some(codec_or_vp8), &packet.payload),
        );
        let mut records = shared.records.lock().await;
        let record = records.entry(id.clone()).or_default();
        record.video = video;
        if record.codec.is_empty() {
            record.codec = match (video, codec) {
                (false, _) => "audio/opus".into(),
                (true, Some(codec)) => codec.mime().into(),
                (true, None) => "unknown".into(),
            };
        }
        record.packets += 1;
        record.first_at.get_or_insert(now);
        record.first_was_keyframe.get_or_insert(keyframe);
        record.last_at = Some(now);
        if keyframe {
            record.keyframes += 1;
            record.last_keyframe_at = Some(now);
        }
        match probe {
            Some(probe) => {
                if !probe.intact {
                    record.corrupt += 1;
                }
                record.streams.insert(probe.stream);
                if shared.config.record_packets {
                    record.log.push(Received {
                        seq: packet.header.sequence_number,
                        stream: probe.stream,
                        index: probe.index,
                        intact: probe.intact,
                        keyframe,
                    });
                }
                if shared.record_latency {
                    record
                        .arrivals
                        .push((probe.sent_ns, received_ns.saturating_sub(probe.sent_ns)));
                }
            }
            None => record.corrupt += 1,
        }
        drop(records);
        shared.changed.notify_waiters();
    }
}

/// A joined participant.
pub struct Participant {
    /// Its id.
    pub id: String,
    shared: Arc<Shared>,
    signal: Option<SignalClient>,
    signal_tx: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    publisher: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    subscriber: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    video_sender: Option<Arc<dyn RtpSender>>,
    /// The Janus session it signals over, instead of a shard's WebSocket.
    janus: Option<JanusSession>,
}

/// A subscriber accepts every default codec; a publisher offers Opus and only its own
/// video codec, so that the shard's answer picks it.
fn engine(publish: Option<VideoCodec>) -> Result<(MediaEngine, Registry)> {
    let mut media_engine = MediaEngine::default();
    match publish {
        None => media_engine.register_default_codecs()?,
        Some(codec) => {
            let parameters = |mime: &str, clock_rate, channels, fmtp: &str, payload_type| {
                rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: mime.to_owned(),
                        clock_rate,
                        channels,
                        sdp_fmtp_line: fmtp.to_owned(),
                        rtcp_feedback: vec![],
                    },
                    payload_type,
                }
            };
            media_engine.register_codec(
                parameters("audio/opus", 48_000, 2, "minptime=10;useinbandfec=1", 111),
                RtpCodecKind::Audio,
            )?;
            let video = match codec {
                VideoCodec::Vp8 => parameters("video/VP8", 90_000, 0, "", 96),
                VideoCodec::H264 => parameters(
                    "video/H264",
                    90_000,
                    0,
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                    102,
                ),
            };
            media_engine.register_codec(video, RtpCodecKind::Video)?;
            media_engine.register_header_extension(
                rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )?;
        }
    }
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?
        .with(Slot::from(500), DeliverPli::default());
    Ok((media_engine, registry))
}

async fn build_pc(shared: &Arc<Shared>, publisher: bool) -> Result<Arc<dyn PeerConnection>> {
    let (media_engine, registry) = engine(publisher.then_some(shared.config.video_codec))?;
    // Like a browser: no mDNS socket per connection, connectivity checks paced at 50 ms
    // (RFC 8445's Ta) instead of the library's 200 ms.
    let mut setting_engine = webrtc::peer_connection::SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_ice_connection_attempts(Some(Duration::from_millis(50)), None);
    if shared.config.aes128_gcm_only {
        setting_engine = setting_engine.with_srtp_protection_profiles(vec![
            rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ]);
    }
    let setting_engine = setting_engine.build();
    let builder = PeerConnectionBuilder::new()
        .with_setting_engine(setting_engine)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler {
            shared: shared.clone(),
            publisher,
        }));
    let bind = std::net::SocketAddr::new(shared.config.bind_ip, 0).to_string();
    let builder = if shared.config.tcp_only {
        builder.with_udp_addrs(vec![]).with_tcp_addrs(vec![bind])
    } else {
        builder.with_udp_addrs(vec![bind])
    };
    let pc = builder.build().await?;
    Ok(Arc::new(pc))
}

impl Participant {
    /// Connects, joins and (if configured) starts publishing.
    pub async fn join(url: &str, token: &str, config: ParticipantConfig) -> Result<Self> {
        Self::join_with(url, token, config, false).await
    }

    /// Like [`Self::join`], keeping send-to-receive latencies of every packet.
    pub async fn join_with(
        url: &str,
        token: &str,
        config: ParticipantConfig,
        record_latency: bool,
    ) -> Result<Self> {
        let mut signal = SignalClient::connect(url, token).await?;
        let shared = Shared::new(config.clone(), record_latency);
        match &config.gateway_join {
            Some(join) => {
                let _ = signal.tx.send(Outgoing::Raw(join.to_string()));
            }
            None => signal.send(ClientMessage::Join {
                room: config.room.clone(),
                participant: config.id.clone(),
                name: Some(config.id.clone()),
                publish: Some(config.audio || config.video),
                subscribe: Some(config.subscribe),
                relay: None,
                pipe: None,
                recorder: None,
                offer_subscriber: None,
            }),
        }
        let joined = tokio::time::timeout(Duration::from_secs(10), signal.rx.recv())
            .await
            .context("join timed out")?
            .context("signaling closed during join")?;
        match &joined {
            ServerMessage::Joined { .. } => {}
            ServerMessage::Error { code, message } => bail!("join refused: {code:?} {message}"),
            other => bail!("unexpected reply to join: {other:?}"),
        }
        shared.events.lock().await.push(joined);
        let signal_tx = signal.tx.clone();
        let publisher: Arc<Mutex<Option<Arc<dyn PeerConnection>>>> = Arc::new(Mutex::new(None));
        let subscriber: Arc<Mutex<Option<Arc<dyn PeerConnection>>>> = Arc::new(Mutex::new(None));
        let mut rx = std::mem::replace(&mut signal.rx, tokio::sync::mpsc::unbounded_channel().1);
        let mut tasks = Vec::new();
        {
            let (shared, publisher, subscriber, signal_tx) = (
                shared.clone(),
                publisher.clone(),
                subscriber.clone(),
                signal_tx.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    // Record first: what the shard said is observed even if acting on it
                    // fails or stalls (a connection closing under a late offer).
                    shared.events.lock().await.push(message.clone());
                    shared.changed.notify_waiters();
                    let step =
                        on_server_message(&shared, &publisher, &subscriber, &signal_tx, &message);
                    match tokio::time::timeout(Duration::from_secs(10), step).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::warn!(%err, "participant signaling step failed"),
                        Err(_) => tracing::warn!("participant signaling step timed out"),
                    }
                }
            }));
        }
        let mut participant = Self {
            id: config.id.clone(),
            shared: shared.clone(),
            signal: Some(signal),
            signal_tx,
            publisher,
            subscriber,
            tasks,
            pumps: Vec::new(),
            video_sender: None,
            janus: None,
        };
        if config.audio || config.video {
            participant.publish().await?;
        }
        Ok(participant)
    }

    async fn publish(&mut self) -> Result<()> {
        let (pc, offer, senders, video_layers) = self.publisher_offer().await?;
        *self.publisher.lock().await = Some(pc.clone());
        let mid = video_mid(&offer.sdp);
        let _ = self.signal_tx.send(Outgoing::Message(ClientMessage::Offer {
            pc: PeerTarget::Publisher,
            sdp: offer.sdp,
        }));
        self.start_pumps(senders, video_layers, mid);
        Ok(())
    }

    /// The publisher connection with its tracks, and its offer, applied locally.
    async fn publisher_offer(
        &mut self,
    ) -> Result<(
        Arc<dyn PeerConnection>,
        RTCSessionDescription,
        Vec<LocalTrack>,
        Vec<Layer>,
    )> {
        let pc = build_pc(&self.shared, true).await?;
        let config = &self.shared.config;
        let mut senders = Vec::new();
        if config.audio {
            let ssrc = rand::random::<u32>() | 1;
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{}-stream", config.id),
                format!("{}-audio", config.id),
                "audio".into(),
                RtpCodecKind::Audio,
                vec![encoding(ssrc, "audio/opus", 48_000, 2)],
            )));
            let sender = pc.add_track(track.clone()).await?;
            senders.push((track, sender, ssrc, false));
        }
        let mut video_layers = Vec::new();
        if config.video {
            let base = stream_id(&config.id, true);
            let rids: &[&str] = if config.simulcast {
                &["q", "h", "f"]
            } else {
                &[""]
            };
            let mut encodings = Vec::new();
            for (index, rid) in rids.iter().enumerate() {
                let ssrc = rand::random::<u32>() | 1;
                let mut encoding = encoding(ssrc, config.video_codec.mime(), 90_000, 0);
                encoding.rtp_coding_parameters.rid = (*rid).to_owned();
                encodings.push(encoding);
                // Layers below the top one send a quarter and a half of its bitrate.
                let divisor = 1u64 << (rids.len() - 1 - index);
                video_layers.push(Layer {
                    ssrc,
                    rid: (*rid).to_owned(),
                    stream: layer_stream(base, index, rids.len()),
                    bitrate: config.video_bitrate / divisor,
                });
            }
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{}-stream", config.id),
                format!("{}-video", config.id),
                "video".into(),
                RtpCodecKind::Video,
                encodings,
            )));
            let sender = pc.add_track(track.clone()).await?;
            self.video_sender = Some(sender.clone());
            senders.push((track, sender, 0, true));
        }
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        Ok((pc, offer, senders, video_layers))
    }

    /// Starts sending synthetic media on the publisher's tracks.
    fn start_pumps(
        &mut self,
        senders: Vec<LocalTrack>,
        video_layers: Vec<Layer>,
        mid: Option<String>,
    ) {
        let config = &self.shared.config;
        for (track, sender, ssrc, video) in senders {
            let shared = self.shared.clone();
            let layers = if video {
                video_layers.clone()
            } else {
                vec![Layer {
                    ssrc,
                    rid: String::new(),
                    stream: stream_id(&config.id, false),
                    bitrate: 0,
                }]
            };
            let mid = mid.clone();
            self.pumps.push(tokio::spawn(pump(
                shared, track, sender, video, layers, mid,
            )));
        }
    }

    /// Stops publishing video the way a browser does: removes the track and offers again.
    pub async fn unpublish_video(&mut self) -> Result<()> {
        let pc = self
            .publisher
            .lock()
            .await
            .clone()
            .context("not publishing")?;
        let sender = self.video_sender.take().context("no video track")?;
        pc.remove_track(&sender).await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        let _ = self.signal_tx.send(Outgoing::Message(ClientMessage::Offer {
            pc: PeerTarget::Publisher,
            sdp: offer.sdp,
        }));
        Ok(())
    }

    /// Waits until the publisher connection is connected.
    pub async fn wait_publishing(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.publisher_state.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .context("publisher did not connect in time")??;
        Ok(())
    }

    /// Waits until `predicate` holds over this participant's records, or fails after `timeout`.
    pub async fn wait_for<F>(&self, timeout: Duration, what: &str, mut predicate: F) -> Result<()>
    where
        F: FnMut(&HashMap<String, TrackRecord>, &[ServerMessage]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let records = self.shared.records.lock().await;
                let events = self.shared.events.lock().await;
                if predicate(&records, &events) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("{}: timed out waiting for {what}", self.id);
            }
        }
    }

    /// A snapshot of what was received, by track id.
    pub async fn records(&self) -> HashMap<String, TrackRecord> {
        self.shared.records.lock().await.clone()
    }

    /// Media packets received so far, over every track.
    pub async fn packets_received(&self) -> usize {
        self.shared
            .records
            .lock()
            .await
            .values()
            .map(|r| r.arrivals.len())
            .sum()
    }

    /// Every signaling message received so far.
    pub async fn events(&self) -> Vec<ServerMessage> {
        self.shared.events.lock().await.clone()
    }

    /// What this participant sent.
    pub fn sent(&self) -> &SentCounters {
        &self.shared.sent
    }

    /// Sends a keyframe request (PLI) for a received track.
    pub async fn request_keyframe(&self, track_id: &str) -> Result<()> {
        let track = self
            .shared
            .remote_tracks
            .lock()
            .await
            .get(track_id)
            .cloned()
            .context("no such received track")?;
        let ssrc = *track.ssrcs().await.first().context("track without ssrc")?;
        track
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            })])
            .await?;
        Ok(())
    }

    /// Stops sending media (the connections stay up). Returns the packets sent on the
    /// audio and video streams: their last synthetic indices plus one.
    pub async fn stop_media(&mut self) -> (u64, u64) {
        for pump in self.pumps.drain(..) {
            pump.abort();
            let _ = pump.await;
        }
        (
            self.shared.sent.audio_packets.load(Ordering::SeqCst),
            self.shared.sent.video_packets.load(Ordering::SeqCst),
        )
    }

    /// The synthetic stream ids this participant publishes: (audio, video).
    pub fn stream_ids(&self) -> (u32, u32) {
        (stream_id(&self.id, false), stream_id(&self.id, true))
    }

    /// Sends a raw signaling message.
    pub fn send(&self, message: ClientMessage) {
        let _ = self.signal_tx.send(Outgoing::Message(message));
    }

    /// Leaves politely and closes the connections.
    pub async fn leave(mut self) {
        self.send(ClientMessage::Leave);
        if let Some(session) = self.janus.take() {
            session.destroy().await;
        }
        for pc in [
            self.publisher.lock().await.take(),
            self.subscriber.lock().await.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = pc.close().await;
        }
        for task in self.tasks.drain(..).chain(self.pumps.drain(..)) {
            task.abort();
        }
    }

    /// Vanishes the way a crashed process does: signaling dropped without a word, media
    /// stopped, connections abandoned without closing.
    pub async fn kill(mut self) {
        if let Some(signal) = self.signal.take() {
            signal.kill();
        }
        for task in self.tasks.drain(..).chain(self.pumps.drain(..)) {
            task.abort();
        }
        // Leak the connections' handles' close: the driver stops when they drop, which
        // sends nothing the shard would treat as a goodbye beyond the socket going quiet.
        self.publisher.lock().await.take();
        self.subscriber.lock().await.take();
    }
}

impl Participant {
    /// Joins Janus VideoRoom `room` over `session`: publishes as configured (returning its
    /// publisher id), and subscribes to the publishers `feeds`.
    pub async fn join_janus(
        session: JanusSession,
        room: u64,
        config: ParticipantConfig,
        record_latency: bool,
        feeds: &[u64],
    ) -> Result<(Self, Option<u64>)> {
        let shared = Shared::new(config.clone(), record_latency);
        let mut participant = Self {
            id: config.id.clone(),
            shared: shared.clone(),
            signal: None,
            signal_tx: tokio::sync::mpsc::unbounded_channel().0,
            publisher: Arc::new(Mutex::new(None)),
            subscriber: Arc::new(Mutex::new(None)),
            tasks: Vec::new(),
            pumps: Vec::new(),
            video_sender: None,
            janus: None,
        };
        let mut publisher_id = None;
        if config.audio || config.video {
            let handle = session.attach().await?;
            let (pc, _, senders, video_layers) = participant.publisher_offer().await?;
            let offer = gathered(&pc, &shared.publisher_gathered).await?;
            let event = session
                .message(
                    handle,
                    serde_json::json!({
                        "request": "joinandconfigure",
                        "ptype": "publisher",
                        "room": room,
                        "display": config.id,
                        "audio": config.audio,
                        "video": config.video,
                    }),
                    Some(serde_json::json!({"type": "offer", "sdp": offer.sdp, "trickle": false})),
                )
                .await?;
            publisher_id = event["plugindata"]["data"]["id"].as_u64();
            let answer = event["jsep"]["sdp"]
                .as_str()
                .context("janus sent no answer")?;
            pc.set_remote_description(RTCSessionDescription::answer(answer.to_owned())?)
                .await?;
            *participant.publisher.lock().await = Some(pc);
            let mid = video_mid(&offer.sdp);
            participant.start_pumps(senders, video_layers, mid);
        }
        if config.subscribe && !feeds.is_empty() {
            let handle = session.attach().await?;
            let streams: Vec<_> = feeds
                .iter()
                .map(|feed| serde_json::json!({"feed": feed}))
                .collect();
            let event = session
                .message(
                    handle,
                    serde_json::json!({
                        "request": "join",
                        "ptype": "subscriber",
                        "room": room,
                        "streams": streams,
                    }),
                    None,
                )
                .await?;
            let offer = event["jsep"]["sdp"]
                .as_str()
                .context("janus sent no offer")?;
            let pc = build_pc(&shared, false).await?;
            pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?)
                .await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            let answer = gathered(&pc, &shared.subscriber_gathered).await?;
            *participant.subscriber.lock().await = Some(pc);
            session
                .message(
                    handle,
                    serde_json::json!({"request": "start"}),
                    Some(
                        serde_json::json!({"type": "answer", "sdp": answer.sdp, "trickle": false}),
                    ),
                )
                .await?;
        }
        participant.janus = Some(session);
        Ok((participant, publisher_id))
    }
}

/// The local description once `pc` has gathered its candidates: when gathering is
/// reported complete, or once the description carries a candidate (these peers gather
/// one host candidate; the completion event does not always reach the handler).
async fn gathered(
    pc: &Arc<dyn PeerConnection>,
    done: &watch::Sender<bool>,
) -> Result<RTCSessionDescription> {
    let mut rx = done.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let description = pc
            .local_description()
            .await
            .context("no local description")?;
        if *rx.borrow_and_update() || description.sdp.contains("a=candidate:") {
            return Ok(description);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "ICE gathering did not complete in 10 s"
        );
        // Looked at again on the event, or after 20 ms: a candidate raises no event here.
        let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
    }
}

/// A published track: the track, its sender, its SSRC (audio) and whether it is video.
type LocalTrack = (Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32, bool);

impl Drop for Participant {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.pumps) {
            task.abort();
        }
    }
}

/// The synthetic stream id of a participant's audio or video.
pub fn stream_id(participant: &str, video: bool) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for byte in participant.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(16_777_619);
    }
    (hash & !1) | u32::from(video)
}

fn encoding(ssrc: u32, mime: &str, clock_rate: u32, channels: u16) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn on_server_message(
    shared: &Arc<Shared>,
    publisher: &Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    subscriber: &Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    signal_tx: &tokio::sync::mpsc::UnboundedSender<Outgoing>,
    message: &ServerMessage,
) -> Result<()> {
    match message {
        ServerMessage::Answer { sdp, .. } => {
            let pc = publisher
                .lock()
                .await
                .clone()
                .context("answer without publisher")?;
            pc.set_remote_description(RTCSessionDescription::answer(sdp.clone())?)
                .await?;
            trickle_tcp_candidates(shared, &pc, sdp).await?;
        }
        ServerMessage::Offer { sdp, .. } => {
            let mut slot = subscriber.lock().await;
            let pc = match slot.as_ref() {
                Some(pc) => pc.clone(),
                None => {
                    let pc = build_pc(shared, false).await?;
                    *slot = Some(pc.clone());
                    pc
                }
            };
            drop(slot);
            pc.set_remote_description(RTCSessionDescription::offer(sdp.clone())?)
                .await?;
            trickle_tcp_candidates(shared, &pc, sdp).await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer.clone()).await?;
            let _ = signal_tx.send(Outgoing::Message(ClientMessage::Answer {
                pc: PeerTarget::Subscriber,
                sdp: answer.sdp,
            }));
        }
        _ => {}
    }
    Ok(())
}

/// One RTP stream of a published track (a simulcast layer, or the only stream).
#[derive(Debug, Clone)]
struct Layer {
    ssrc: u32,
    rid: String,
    stream: u32,
    bitrate: u64,
}

/// The id and record of the received track carrying a given synthetic stream.
pub fn track_of(
    records: &HashMap<String, TrackRecord>,
    stream: u32,
) -> Option<(String, TrackRecord)> {
    records
        .iter()
        .find(|(_, r)| r.streams.contains(&stream))
        .map(|(id, r)| (id.clone(), r.clone()))
}

/// The synthetic stream id of layer `index` of `count` (the only layer keeps `base`).
pub fn layer_stream(base: u32, index: usize, count: usize) -> u32 {
    if count <= 1 {
        base
    } else {
        base.wrapping_add(((index as u32) + 1) << 8)
    }
}

/// The `a=mid` of the first video section of an SDP.
fn video_mid(sdp: &str) -> Option<String> {
    let video = &sdp[sdp.find("m=video")?..];
    video
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:").map(str::to_owned))
}

/// The webrtc-rs client opens ICE-TCP connections only to passive candidates it is handed
/// with `add_ice_candidate`, not to those in a description (browsers use both), so a
/// TCP-only test peer re-adds the shard's.
async fn trickle_tcp_candidates(
    shared: &Arc<Shared>,
    pc: &Arc<dyn PeerConnection>,
    sdp: &str,
) -> Result<()> {
    if !shared.config.tcp_only {
        return Ok(());
    }
    for line in sdp.lines() {
        let Some(candidate) = line.trim().strip_prefix("a=") else {
            continue;
        };
        if candidate.starts_with("candidate:") && candidate.contains(" tcp ") {
            pc.add_ice_candidate(webrtc::peer_connection::RTCIceCandidateInit {
                candidate: candidate.to_owned(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

/// Sends synthetic media on one track once the publisher connection is up.
async fn pump(
    shared: Arc<Shared>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    video: bool,
    layers: Vec<Layer>,
    mid: Option<String>,
) {
    let mut state = shared.publisher_state.subscribe();
    if state
        .wait_for(|s| *s == RTCPeerConnectionState::Connected)
        .await
        .is_err()
    {
        return;
    }
    let Ok(parameters) = sender.get_parameters().await else {
        return;
    };
    // The negotiated payload type of this track's codec, and the ids of the header
    // extensions that name a simulcast layer.
    let mime = if video {
        shared.config.video_codec.mime()
    } else {
        "audio/opus"
    };
    let Some(payload_type) = parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
    else {
        tracing::warn!("no negotiated payload type for {mime}");
        return;
    };
    let extension_id = |uri: &str| {
        parameters
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == uri)
            .map(|e| e.id as u8)
    };
    let mid_ext = extension_id(rtc::sdp::extmap::SDES_MID_URI);
    let level_ext = extension_id(rtc::sdp::extmap::AUDIO_LEVEL_URI);
    let rid_ext = extension_id(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);
    let sources: Vec<Arc<std::sync::Mutex<VideoSource>>> = layers
        .iter()
        .map(|layer| {
            Arc::new(std::sync::Mutex::new(VideoSource::new(
                shared.config.video_codec,
                layer.stream,
                layer.bitrate.max(64_000),
                shared.config.keyframe_interval,
            )))
        })
        .collect();
    if video {
        // PLIs from the shard make the next frame of the named layer a key frame.
        let (track, shared) = (track.clone(), shared.clone());
        let targets: Vec<(u32, Arc<std::sync::Mutex<VideoSource>>)> = layers
            .iter()
            .map(|l| l.ssrc)
            .zip(sources.iter().cloned())
            .collect();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(packets) = event else {
                    continue;
                };
                for packet in packets {
                    let Some(pli) = packet.as_any().downcast_ref::<PictureLossIndication>() else {
                        continue;
                    };
                    shared.sent.plis.fetch_add(1, Ordering::Relaxed);
                    for (ssrc, source) in &targets {
                        if *ssrc == pli.media_ssrc
                            && let Ok(mut source) = source.lock()
                        {
                            source.request_keyframe();
                        }
                    }
                }
            }
        });
    }
    let mut audio = OpusSource::new(layers.first().map_or(0, |l| l.stream));
    let mut seqs: Vec<u16> = layers.iter().map(|_| rand::random()).collect();
    let interval = if video {
        VideoSource::INTERVAL
    } else {
        OpusSource::INTERVAL
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        ticker.tick().await;
        let sent_ns = shared.config.epoch.now_ns();
        for (index, layer) in layers.iter().enumerate() {
            let packets = if video {
                match sources[index].lock() {
                    Ok(mut source) => source.next_frame(sent_ns),
                    Err(_) => return,
                }
            } else {
                vec![audio.next(sent_ns)]
            };
            for p in packets {
                let mut header = rtp::header::Header {
                    version: 2,
                    marker: p.marker,
                    payload_type,
                    sequence_number: seqs[index],
                    timestamp: p.timestamp,
                    ssrc: layer.ssrc,
                    ..Default::default()
                };
                if let (false, Some(id), Some(level)) =
                    (video, level_ext, shared.config.audio_level)
                {
                    let _ =
                        header.set_extension(id, bytes::Bytes::from(vec![0x80 | (level & 0x7F)]));
                }
                if !layer.rid.is_empty() {
                    // Simulcast layers are told apart by these (RFC 8852).
                    if let (Some(id), Some(mid)) = (mid_ext, mid.as_ref()) {
                        let _ = header.set_extension(id, bytes::Bytes::from(mid.clone()));
                    }
                    if let Some(id) = rid_ext {
                        let _ = header.set_extension(id, bytes::Bytes::from(layer.rid.clone()));
                    }
                }
                seqs[index] = seqs[index].wrapping_add(1);
                if track
                    .write_rtp(rtp::Packet {
                        header,
                        payload: p.payload,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let counter = if video {
                    &shared.sent.video_packets
                } else {
                    &shared.sent.audio_packets
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if p.keyframe {
                    shared.sent.keyframes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
