//! The shard core: every room, participant and peer connection of a shard, driven
//! without I/O.
//!
//! The media thread feeds it datagrams, commands and the passing of time, and takes the
//! datagrams it wants sent; nothing here touches a socket or reads a clock. One core
//! serves every peer on the shard's single UDP port. It is made of three parts with state
//! of their own, and carries out what involves more than one of them:
//!
//! * **Rooms and sessions** (`registry.rs`): pipelines, admission, entering and leaving,
//!   and the signaling messages that fan out to a room.
//! * **Peers and transport** (`transport.rs`). A datagram is classified (RFC 7983). STUN is
//!   routed by the ICE ufrag in its USERNAME and, once its MESSAGE-INTEGRITY proves it
//!   knows the peer's password, binds its source address to the peer; DTLS and SRTP are
//!   routed by that address. Anything else is dropped and counted. Connections that
//!   produced output are marked dirty; once per batch of input the core drains them into
//!   one list of datagrams, which the I/O loop sends with `sendmmsg` and UDP GSO (see
//!   [`crate::udp`]).
//! * **Media routing** (`router.rs`), the forwarding hot path. A publisher's connection
//!   decrypts an RTP packet into a header and a payload (`Bytes`, reference-counted). The
//!   packet is stored once in its layer's retransmission buffer (a reference, not a copy),
//!   then for each subscriber the downtrack decides whether to forward it and under which
//!   sequence number and timestamp; the subscriber's copy is a new header sharing the same
//!   payload buffer, encrypted by that subscriber's connection straight into its datagram.
//!   No payload byte is copied per subscriber before encryption, which has to produce a
//!   distinct buffer per subscriber anyway.
//!
//! Negotiation (`negotiate.rs`): clients offer on their publisher connection; the shard
//! offers on each subscriber connection whenever tracks come or go, one offer at a time
//! per connection. Relays (`relay.rs`) feed an edge shard's rooms from a parent shard.

mod answering;
pub mod api;
mod downlinks;
mod dynacast;
mod env;
mod forward;
mod guarded;
mod ids;
#[cfg(any(test, feature = "sim"))]
mod invariants;
mod negotiate;
mod pipe;
mod quality;
mod registry;
mod relay;
mod router;
pub mod sdp;
mod transport;

use crate::media::codec::CodecFamily;
use crate::media::downtrack::Downtrack;
use crate::media::keyframe::KeyframeThrottle;
use crate::media::outgoing::{ExtensionIds, SentStamps};
use crate::media::picture_id::PictureIds;
use crate::media::retransmit::RetransmitBuffer;
use crate::media::sender_report::SentCounts;
use crate::metrics::ShardMetrics;
use crate::peer::{IceTimeouts, PeerBuildError, PeerFactory, PeerRole};
use crate::signal::protocol::{ErrorCode, ParticipantInfo, ServerMessage, TrackInfo, TrackKind};
use crate::srtp::RolloverCounter;
use api::{
    AdminError, Command, JoinError, JoinRequest, PipelineInfo, PipelineSpec, SessionId, ShardLoad,
};
use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use env::Env;
pub(crate) use ids::PeerKey;
pub use ids::TrackKey;
use registry::Registry;
pub use relay::relayed_layer_rid;
use router::MediaRouter;
use transport::{Routed, Transport};

/// What sessions are told when the shard stops; they are to join again elsewhere.
const STOPPING: &str = "the shard is stopping; reconnect";
/// What a session is told when its media connection failed past recovery (no ICE restart
/// came in time); it is to join again as the same participant.
const MEDIA_FAILED: &str = "media connection failed";
/// What sessions are told when the control plane takes their room off this shard: it
/// moved nearer its participants, or its shard is being emptied, and the gateway knows
/// where it is now. (A deleted room's rejoin is refused as not found, which says it.)
const RELEASED: &str = "the room was released from this shard; join again";
/// What sessions are told when their room is released after standing empty past its
/// timeout; none of them holds a seat, so none is to come back.
const RELEASED_EMPTY: &str = "the room was released";

/// How long a session may hold a seat of a full room without ever connecting media
/// before a newcomer may take it: a WebSocket alone must not squat a lesson.
pub const SEAT_GRACE: Duration = Duration::from_secs(30);
/// What a session whose seat was reclaimed is told.
const SEAT_RECLAIMED: &str = "no media connection within 30 s; the seat went to someone else";

pub use transport::PROBES_PER_SECOND;

/// Least spacing of keyframe requests to a publisher in an audience room.
const AUDIENCE_KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);

/// How often housekeeping runs (deferred keyframe requests, speakers, timeouts).
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often subscribers' downlinks are shared among their tracks again.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(250);
/// How often the loss of what publishers send is counted and each room told how its
/// participants' connections are doing (when that changed).
const QUALITY_INTERVAL: Duration = Duration::from_secs(2);
/// How often a probe's padding goes out: its rate spread over the half second.
const PROBE_TICK: Duration = Duration::from_millis(10);
/// How often the active speaker is re-evaluated.
const SPEAKER_INTERVAL: Duration = Duration::from_millis(300);
/// A simulcast layer silent this long counts as paused by its publisher.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// How long a retransmission buffer keeps packets.
const RETRANSMIT_AGE: Duration = Duration::from_secs(2);

/// Static configuration of a core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The address advertised as every connection's ICE candidate.
    pub advertised: SocketAddr,
    /// The address advertised as a passive ICE-TCP candidate, when ICE-TCP is on.
    pub advertised_tcp: Option<SocketAddr>,
    /// ICE timing.
    pub ice: IceTimeouts,
    /// Most pipelines hosted at once.
    pub max_pipelines: usize,
    /// Most participants on the shard at once.
    pub max_participants: usize,
    /// When set, a join for an unknown room creates it with this spec (local mode).
    pub auto_create: Option<PipelineSpec>,
    /// Minimum spacing of keyframe requests to one publisher stream.
    pub keyframe_interval: Duration,
    /// Silence after which an address binding is forgotten.
    pub address_idle_timeout: Duration,
    /// Capacity of each session's outgoing message queue.
    pub session_queue: usize,
}

impl CoreConfig {
    /// Defaults for a shard advertising `advertised`.
    pub fn new(advertised: SocketAddr) -> Self {
        Self {
            advertised,
            advertised_tcp: None,
            ice: IceTimeouts::default(),
            max_pipelines: 1000,
            max_participants: 5000,
            auto_create: None,
            keyframe_interval: crate::media::keyframe::DEFAULT_INTERVAL,
            address_idle_timeout: Duration::from_secs(30),
            session_queue: 256,
        }
    }
}

/// How a session is present in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// A participant: takes a seat, announced to the room.
    Participant,
    /// A viewer of an audience room: takes a seat, never announced.
    Viewer,
    /// A child shard relaying the room: no seat, never announced, receives everything.
    Relay,
    /// A publisher of the parent shard, relayed here: announced, no seat.
    Relayed,
}

impl Presence {
    /// How a join would be present in `room`.
    fn for_join(room: &Room, request: &JoinRequest) -> Self {
        if request.relay {
            Presence::Relay
        } else if room.spec.audience && !request.publish {
            Presence::Viewer
        } else {
            Presence::Participant
        }
    }

    fn announced(self) -> bool {
        matches!(self, Self::Participant | Self::Relayed)
    }

    fn takes_seat(self) -> bool {
        matches!(self, Self::Participant | Self::Viewer)
    }
}

struct Room {
    spec: PipelineSpec,
    /// The feed from a parent shard, when this shard is an edge of a broadcast.
    relay: Option<relay::RelayFeed>,
    sessions: Vec<SessionId>,
    by_participant: HashMap<String, SessionId>,
    tracks: Vec<TrackKey>,
    created: Instant,
    empty_since: Option<Instant>,
}

struct Session {
    participant: String,
    name: String,
    room: String,
    events: mpsc::Sender<ServerMessage>,
    publish: bool,
    subscribe: bool,
    publisher: Option<PeerKey>,
    subscriber: Option<PeerKey>,
    tracks: Vec<TrackKey>,
    /// Whether the participant says it is sharing its screen.
    screen_sharing: bool,
    /// State changes the session announced to its room in the current second: (its
    /// start, count). Each fans out to everyone in the room.
    announcements: Option<(Instant, u32)>,
    /// When it joined.
    joined_at: Instant,
    /// Whether one of its media connections ever connected: a seat held by a session
    /// that never did can be reclaimed (see [`SEAT_GRACE`]).
    media_seen: bool,
    /// How the session is present in its room.
    presence: Presence,
    /// A relay recording the room: everyone in it is told while one is there.
    recorder: bool,
    /// Being removed: no more offers to it.
    closing: bool,
    /// It offers its subscriber connection itself (`answering.rs`).
    offer_subscriber: bool,
}

pub(crate) struct Peer {
    pc: guarded::GuardedPc,
    role: PeerRole,
    session: SessionId,
    /// The local ICE credentials of the current ICE generation, learned from the latest
    /// local description (empty before the first one).
    ufrag: String,
    pwd: String,
    deadline: Option<Instant>,
    connected: bool,
    dirty: bool,
    /// Publisher: the streams it sends that the shard forwards, by SSRC.
    incoming: crate::FastMap<u32, Incoming>,
    /// Subscriber: outgoing SSRC → track.
    outgoing: crate::FastMap<u32, TrackKey>,
    /// Subscriber: an offer awaits its answer.
    offer_out: bool,
    /// Subscriber: tracks changed while an offer was out.
    renegotiate: bool,
    /// Remote candidates the client trickled.
    remote_candidates: u32,
    /// Protects the RTP the shard sends on this connection; made from the DTLS keys once
    /// the connection is up.
    srtp: Option<crate::srtp::SrtpSender>,
    /// Verifies and decrypts what the other end sends, from the same keys: a subscriber's
    /// (or a pipe's far end's) SRTCP, a publisher's SRTP and SRTCP.
    srtp_in: Option<crate::srtp::SrtpReceiver>,
    /// Publisher: the NACKs, transport-cc feedback and receiver reports the shard owes it
    /// for the RTP it reads past `rtc`; made with `srtp_in`.
    uplink: Option<Box<crate::media::uplink_feedback::UplinkFeedback>>,
    /// The connection's next transport-wide sequence number.
    transport_seq: u16,
    /// Subscriber: the bandwidth estimate of its downlink, from its transport-cc feedback;
    /// made when the first packet stamped for it leaves.
    downlink: Option<Box<crate::media::downlink::DownlinkEstimate>>,
    /// Subscriber: probes its downlink for more when the sharing held a track back.
    prober: Option<crate::media::probe::Prober>,
    /// Where its packets go: the ICE selected pair's remote address and protocol.
    route: Option<(SocketAddr, TransportProtocol)>,
    /// A relay pipe to another shard (`pipe.rs`): no connection, keys from the relay's
    /// session, a fixed route.
    pipe: bool,
    /// Subscriber offered by the client (`answering.rs`): the senders its offer's sections
    /// were answered with, each carrying one of the room's tracks at a time.
    slots: Vec<answering::Slot>,
}

/// A stream a publisher sends that the shard forwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    track: TrackKey,
    /// The layer's index in the track.
    layer: usize,
    /// The codec's RTP clock rate (receiver reports' jitter is in its units).
    clock_rate: u32,
    /// Video: the shard asks for what goes missing (NACK).
    video: bool,
    /// The sequence number of the stream's packet the connection last read itself. The
    /// shard reads the rest, but hands the connection one every [`RTC_SYNC_SEQS`]: its own
    /// SRTP context must keep the stream's rollover counter, or, should the stream ever
    /// leave this map (unpublished, then sent again), it could not decrypt it.
    rtc_seen: Option<u16>,
}

/// How far a stream the shard reads itself runs before its connection is handed a packet
/// of it: well inside the half of the sequence space in which a receiver's index estimate
/// (RFC 3711 §3.3.1) holds, even if a few of those packets are lost.
const RTC_SYNC_SEQS: u16 = 8192;

pub(crate) struct Layer {
    rid: String,
    rank: u8,
    ssrc: Option<u32>,
    /// The publisher connection's receiver; `None` for a relayed track.
    receiver: Option<RTCRtpReceiverId>,
    last_packet: Option<Instant>,
    /// What the layer brings in: what it costs each subscriber's downlink.
    rate: crate::media::rate::RateMeter,
    /// What each of its temporal layers brings in (VP8 and VP9; of the base spatial layer
    /// in a stream of spatial layers).
    temporal_rates: crate::media::temporal::TemporalRates,
    /// What each of its spatial layers brings in (VP9 with layer indices).
    spatial_rates: crate::media::spatial::SpatialRates,
    /// What its encoder last said of its spatial layers (VP9 key pictures).
    spatial_structure: crate::media::spatial::SpatialStructure,
    /// An AV1 stream's template dependency structure, from its last key frame's
    /// dependency descriptor.
    dependency_structure: Option<crate::media::dependency_descriptor::Structure>,
    /// A packet above the base spatial layer came on this, the track's one layer: it is a
    /// VP9 SVC stream, whose spatial layers subscribers receive up to one.
    svc: bool,
    /// What its publisher's uplink loses of it, counted per quality window.
    loss: crate::media::uplink::ReceivedLoss,
    /// The share lost in the last quality window, percent; `None` when nothing came.
    loss_percent: Option<f64>,
    buffer: Option<RetransmitBuffer>,
    throttle: KeyframeThrottle,
}

pub(crate) struct DowntrackEntry {
    peer: PeerKey,
    session: SessionId,
    /// Its sender on the subscriber connection; `None` on a relay pipe.
    sender: Option<RTCRtpSenderId>,
    ssrc: u32,
    payload_type: Option<u8>,
    /// The track is RED but this subscriber takes only Opus: it gets each packet's
    /// primary block.
    unwrap_red: bool,
    /// The header extensions this subscriber negotiated for the stream, which the shard
    /// writes on every packet (playout delay only in music rooms).
    extensions: ExtensionIds,
    /// Turns the stream's sequence numbers into SRTP packet indexes.
    rollover: RolloverCounter,
    /// The video's RTX stream, where probes pad; `None` for audio and relay pipes.
    rtx: Option<crate::media::rtx::RtxStream>,
    /// What the send-time extensions of recent packets carried, for their resends: video
    /// with such extensions only (audio is not resent).
    stamps: Option<SentStamps>,
    /// What the stream sent, for its sender reports.
    sent: SentCounts,
    state: Downtrack,
    /// VP8/VP9 picture IDs kept continuous across the layer switches `state` makes.
    picture_ids: PictureIds,
    fraction_lost: u8,
}

pub(crate) struct PublishedTrack {
    id: String,
    room: String,
    session: SessionId,
    /// The publisher connection; `None` for a track relayed from a parent shard.
    peer: Option<PeerKey>,
    source_track_id: String,
    mid: Option<String>,
    kind: TrackKind,
    family: CodecFamily,
    codec: RTCRtpCodec,
    layers: Vec<Layer>,
    audio_level_ext: Option<u8>,
    /// The AV1 dependency descriptor's extension ID, when the publisher negotiated it.
    dependency_ext: Option<u8>,
    muted: bool,
    downtracks: Vec<DowntrackEntry>,
    /// Which simulcast layers the publisher is asked to encode (dynacast); `None` for a
    /// track of one layer, or one relayed from a parent shard.
    layer_switch: Option<crate::media::dynacast::LayerSwitch>,
    /// Which spatial layers of an SVC track the publisher is asked to encode (dynacast);
    /// `None` until the track shows itself SVC, and for a relayed one.
    spatial_switch: Option<crate::media::dynacast::LayerSwitch>,
}

#[derive(Default)]
struct RateWindow {
    at: Option<Instant>,
    received_bytes: u64,
    forwarded_bytes: u64,
    forwarded_packets: u64,
    cpu_seconds: f64,
    load: ShardLoad,
}

/// The sans-I/O shard.
pub struct ShardCore {
    config: CoreConfig,
    factory: PeerFactory,
    metrics: Arc<ShardMetrics>,
    /// Rooms, sessions, admission and signaling fan-out.
    registry: Registry,
    /// The published tracks, their subscribers, and who speaks.
    media: MediaRouter,
    /// The connections, and everything between them and the socket.
    transport: Transport,
    ids: ids::Ids,
    env: Env,
    /// Raised when a peer connection panicked (see [`guarded`]).
    pc_alarm: Arc<std::sync::atomic::AtomicBool>,
    /// This shard's ends of relay pipes from its parents (`pipe.rs`).
    edge_pipes: HashMap<api::PipeId, pipe::EdgePipe>,
    /// Which pipe carries each relayed SSRC.
    edge_streams: crate::FastMap<u32, api::PipeId>,
    next_pipe: api::PipeId,
    /// Where pipe media is decrypted, reused.
    pipe_scratch: Vec<u8>,
    next_housekeeping: Instant,
    /// When each room is next told how its participants' connections are doing.
    next_quality: Instant,
    /// What each room was last told of its participants' connections, and the sessions
    /// that heard it.
    announced_qualities: HashMap<
        String,
        (
            Vec<tutti_shard_api::protocol::ParticipantQuality>,
            std::collections::HashSet<SessionId>,
        ),
    >,
    next_speaker: Instant,
    next_slow: Instant,
    /// When subscribers' downlinks are next shared among their tracks.
    next_allocation: Instant,
    /// When running probes next send padding or are judged.
    next_probe_tick: Instant,
    rates: RateWindow,
    stopped: bool,
    /// Heap allocations made while forwarding, where they are counted (see
    /// [`crate::alloc_count`]).
    #[cfg(any(test, feature = "sim"))]
    forward_allocations: u64,
}

impl ShardCore {
    /// A core with no rooms, in the real world ([`Env::system`]).
    pub fn new(
        config: CoreConfig,
        metrics: Arc<ShardMetrics>,
        now: Instant,
    ) -> Result<Self, PeerBuildError> {
        Self::with_env(config, metrics, now, Env::system())
    }

    /// A core with no rooms whose randomness, CPU readings and wall clock come from `env`.
    pub fn with_env(
        config: CoreConfig,
        metrics: Arc<ShardMetrics>,
        now: Instant,
        env: Env,
    ) -> Result<Self, PeerBuildError> {
        let factory = PeerFactory::new(config.advertised, config.advertised_tcp, config.ice)?;
        Ok(Self {
            transport: Transport::new(
                config.advertised,
                config.advertised_tcp,
                config.address_idle_timeout,
                factory.crypto().clone(),
                metrics.clone(),
            ),
            config,
            factory,
            metrics,
            registry: Registry::default(),
            media: MediaRouter::default(),
            ids: ids::Ids::default(),
            env,
            pc_alarm: Arc::default(),
            edge_pipes: HashMap::new(),
            edge_streams: crate::FastMap::default(),
            next_pipe: 0,
            pipe_scratch: Vec::new(),
            #[cfg(any(test, feature = "sim"))]
            forward_allocations: 0,
            next_housekeeping: now,
            next_quality: now + QUALITY_INTERVAL,
            announced_qualities: HashMap::new(),
            next_speaker: now,
            next_slow: now,
            next_allocation: now,
            next_probe_tick: now,
            rates: RateWindow::default(),
            stopped: false,
        })
    }

    /// Whether a `Shutdown` command has been handled.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Makes the next call into one of `session`'s connections (its publisher's, or its
    /// subscriber's) panic, as a bug in the WebRTC stack would (tests of containment).
    #[cfg(any(test, feature = "sim"))]
    pub fn inject_pc_panic(&mut self, session: SessionId, publisher: bool) -> bool {
        let key = self
            .registry
            .session(session)
            .and_then(|s| if publisher { s.publisher } else { s.subscriber });
        match key.and_then(|key| self.transport.peer_mut(key)) {
            Some(peer) => {
                peer.pc.panic_on_next_call();
                true
            }
            None => false,
        }
    }

    /// What `session`'s subscriber connection may be sent by its downlink estimate, bits
    /// per second, and the round trip, once its feedback has been read.
    #[cfg(any(test, feature = "sim"))]
    pub fn downlink_estimate(&self, session: SessionId) -> Option<(f64, Option<Duration>)> {
        let key = self.registry.session(session)?.subscriber?;
        let estimate = self.transport.peer(key)?.downlink.as_ref()?;
        Some((estimate.usable_bps(), estimate.rtt()))
    }

    /// The metrics this core updates.
    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    // ---------------------------------------------------------------- datagrams in

    /// Handles one datagram received from `from`, sent to the local address `to` when the
    /// socket reports it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        datagram: &[u8],
    ) {
        self.handle_input(now, from, to, datagram, TransportProtocol::UDP);
    }

    /// The local address datagrams to `to` must leave from: the one `to` last sent to,
    /// when the socket reports it (a wildcard bind); `None` lets the kernel choose.
    pub fn local_ip_for(&self, to: SocketAddr) -> Option<IpAddr> {
        self.transport.local_ip_for(to)
    }

    /// Handles one ICE-TCP frame from the connection with `from`. Returns `false` when the
    /// connection should be closed: nothing on it is routed to a peer (an unauthenticated
    /// first frame, or a peer that is gone).
    pub fn handle_tcp_frame(&mut self, now: Instant, from: SocketAddr, frame: &[u8]) -> bool {
        self.handle_input(now, from, None, frame, TransportProtocol::TCP)
    }

    /// An ICE-TCP connection closed.
    pub fn tcp_closed(&mut self, from: SocketAddr) {
        self.transport.tcp_closed(from);
    }

    fn handle_input(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        datagram: &[u8],
        protocol: TransportProtocol,
    ) -> bool {
        if protocol == TransportProtocol::UDP && self.pipe_datagram(datagram, now) {
            self.finish_step(now);
            return true;
        }
        match self.transport.receive(now, from, to, datagram, protocol) {
            Routed::Peer(key) => self.drive(key, now),
            Routed::Feedback(key, packets) => self.on_subscriber_rtcp(key, packets, now),
            Routed::Media(incoming, packet) => {
                self.forward(incoming.track, incoming.layer, packet, now)
            }
            Routed::Consumed => {}
            Routed::Nowhere => return false,
        }
        self.finish_step(now);
        true
    }

    /// ICE-TCP connections whose peer is gone and which the I/O loop should close.
    pub fn take_tcp_to_close(&mut self, out: &mut Vec<SocketAddr>) {
        self.transport.take_tcp_to_close(out);
    }

    // ---------------------------------------------------------------- driving peers

    /// Drains a peer's events and inbound messages, acting on each.
    fn drive(&mut self, key: PeerKey, now: Instant) {
        self.transport.send_uplink_feedback(key, now);
        loop {
            let Some(peer) = self.transport.peer_mut(key) else {
                return;
            };
            // Events first: a track's `OnOpen` is raised by the packet that also waits in
            // the read queue, and the track must exist before that packet is forwarded.
            match peer.pc.with(|pc| pc.poll_event()) {
                Some(Some(event)) => {
                    self.on_peer_event(key, event, now);
                    continue;
                }
                Some(None) => {}
                None => break,
            }
            let Some(Some(message)) = peer.pc.with(|pc| pc.poll_read()) else {
                break;
            };
            match message.message {
                RTCMessage::RtpPacket(_, packet) => self.on_publisher_rtp(key, packet, now),
                RTCMessage::RtcpPacket(_, packets) => self.on_subscriber_rtcp(key, packets, now),
                _ => {}
            }
        }
        self.transport.mark_dirty(key);
    }

    fn on_peer_event(&mut self, key: PeerKey, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.transport.peer_mut(key) else {
                    return;
                };
                tracing::debug!(peer = %key, role = ?peer.role, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        let session = peer.session;
                        self.transport.connected(key, now);
                        if let Some(s) = self.registry.session_mut(session) {
                            s.media_seen = true;
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        peer.connected = false;
                        let session = peer.session;
                        self.registry.doom(session, MEDIA_FAILED);
                    }
                    _ => peer.connected = false,
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track_open(key, init, now);
            }
            _ => {}
        }
    }

    /// Drains every dirty peer's outgoing UDP datagrams into `out` (ICE-TCP packets into
    /// `tcp_out`) and re-arms its timer.
    pub fn take_transmits(
        &mut self,
        out: &mut Vec<(SocketAddr, BytesMut)>,
        tcp_out: &mut Vec<(SocketAddr, BytesMut)>,
    ) {
        self.transport.take_transmits(out, tcp_out);
    }

    /// Takes back the buffers of datagrams the I/O loop has sent: the next packets the
    /// shard forwards are written into them.
    pub fn recycle(&mut self, sent: impl Iterator<Item = BytesMut>) {
        self.transport.recycle(sent);
    }

    // ---------------------------------------------------------------- time

    /// When the core next needs [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let next = match self.transport.next_timer() {
            Some(at) if at < self.next_housekeeping => at,
            _ => self.next_housekeeping,
        };
        let next = next.min(self.next_probe_tick);
        self.pipe_next_due().map_or(next, |due| due.min(next))
    }

    /// Handles the passing of time up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(key) = self.transport.fire_next_timer(now) {
            self.drive(key, now);
            self.transport.defer_stuck_timer(key, now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.housekeeping(now);
        }
        if now >= self.next_probe_tick {
            let padding = self
                .media
                .run_probes(&mut self.transport, &self.metrics, now);
            // Idle, the probe check rides on the housekeeping tick: on a phase of its own
            // it would wake the media thread as often again.
            self.next_probe_tick = if padding {
                now + PROBE_TICK
            } else {
                self.next_housekeeping
            };
        }
        self.pipe_nacks(now);
        self.finish_step(now);
    }

    fn housekeeping(&mut self, now: Instant) {
        self.send_deferred_keyframe_requests(now);
        let wall = self.env.wall_time(now);
        self.media.send_reports(&mut self.transport, now, wall);
        if now >= self.next_allocation || std::mem::take(&mut self.media.downlink_fell) {
            self.next_allocation = now + ALLOCATION_INTERVAL;
            let sharing: std::collections::HashSet<SessionId> = self
                .registry
                .sessions()
                .filter(|(_, s)| s.screen_sharing)
                .map(|(id, _)| id)
                .collect();
            self.media
                .allocate_downlinks(&mut self.transport, &self.metrics, &sharing, now);
            for (publisher, message) in self.media.switch_publisher_layers(now) {
                if let Some(message) = self.relay_demand(publisher, message) {
                    self.send(publisher, message);
                }
            }
        }
        if now >= self.next_quality {
            self.next_quality = now + QUALITY_INTERVAL;
            self.announce_qualities(now);
        }
        if now >= self.next_speaker {
            self.next_speaker = now + SPEAKER_INTERVAL;
            self.evaluate_speakers(now);
        }
        if now >= self.next_slow {
            self.next_slow = now + Duration::from_secs(1);
            self.release_empty_rooms(now);
            self.transport.evict_idle(now);
            self.update_rates(now);
        }
    }

    fn evaluate_speakers(&mut self, now: Instant) {
        for (room, speaker) in self.media.speaker_changes(now) {
            let participant =
                speaker.and_then(|s| self.registry.session(s).map(|s| s.participant.clone()));
            self.broadcast(&room, None, ServerMessage::ActiveSpeaker { participant });
        }
    }

    fn release_empty_rooms(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .registry
            .rooms()
            .filter(|(_, room)| {
                room.empty_since.is_some_and(|since| {
                    now.saturating_duration_since(since) >= room.spec.empty_timeout()
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            tracing::info!(room = %name, "releasing pipeline empty past its timeout");
            self.metrics.pipelines_released_empty.inc();
            self.release_room(&name, now, RELEASED_EMPTY);
        }
    }

    fn update_rates(&mut self, now: Instant) {
        let received = self.metrics.rtp_received_bytes.get();
        let forwarded = self.metrics.rtp_forwarded_bytes.get();
        let packets = self.metrics.rtp_forwarded_packets.get();
        let cpu = self.env.cpu_seconds().unwrap_or(0.0);
        if let Some(at) = self.rates.at {
            let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
            let rate = |new: u64, old: u64| ((new.saturating_sub(old)) as f64 / secs) as u64;
            self.rates.load.ingress_bps = rate(received, self.rates.received_bytes) * 8;
            self.rates.load.egress_bps = rate(forwarded, self.rates.forwarded_bytes) * 8;
            self.rates.load.forwarded_packets_per_second =
                rate(packets, self.rates.forwarded_packets);
            self.rates.load.cpu_cores = ((cpu - self.rates.cpu_seconds) / secs).max(0.0);
        }
        self.rates.at = Some(now);
        self.rates.received_bytes = received;
        self.rates.forwarded_bytes = forwarded;
        self.rates.forwarded_packets = packets;
        self.rates.cpu_seconds = cpu;
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics
            .pipelines
            .set(self.registry.room_count() as i64);
        self.metrics.participants.set(self.seated() as i64);
        self.metrics.tracks.set(self.media.len() as i64);
        self.metrics
            .forwarded_streams
            .set(self.forwarded_streams() as i64);
    }

    /// Spacing of keyframe requests to a publisher stream of `room`. An audience is large
    /// and every viewer may ask, so its publishers hear at most one request a second.
    fn keyframe_interval(&self, room: &str) -> Duration {
        let audience = self.registry.room(room).is_some_and(|r| r.spec.audience);
        if audience {
            self.config
                .keyframe_interval
                .max(AUDIENCE_KEYFRAME_INTERVAL)
        } else {
            self.config.keyframe_interval
        }
    }

    /// Sessions that take a seat: participants and viewers, not relays.
    fn seated(&self) -> usize {
        self.registry.seated()
    }

    fn forwarded_streams(&self) -> usize {
        self.media.forwarded_streams()
    }

    /// Ends the sessions doomed during the last step.
    fn finish_step(&mut self, now: Instant) {
        if self
            .pc_alarm
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            // Rare: find the connections that panicked and end their sessions.
            for (key, session) in self.transport.poisoned() {
                self.metrics.peer_panics.inc();
                tracing::error!(peer = %key, %session, "peer connection panicked; ending its session");
                self.registry
                    .doom(session, "internal error in the media connection");
            }
        }
        while let Some((session, reason)) = self.registry.next_doomed() {
            self.remove_session(session, now, Some(reason));
        }
    }

    // ---------------------------------------------------------------- commands

    /// Handles one control-plane command.
    pub fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            #[cfg(feature = "fault-injection")]
            Command::StallForever => {
                tracing::error!("fault injection: the media thread hangs for good");
                loop {
                    std::thread::park();
                }
            }
            Command::Join {
                request,
                events,
                reply,
            } => {
                let result = self.join(request, events, now);
                if let Err(err) = &result {
                    self.metrics.error(err.code);
                }
                let _ = reply.send(result);
            }
            // Client SDP and candidates reach the WebRTC stack only through guarded calls
            // (`guarded`): a panic there ends this session alone.
            Command::Signal { session, message } => self.on_signal(session, message, now),
            Command::Leave { session } => self.remove_session(session, now, None),
            Command::PutPipeline { name, spec, reply } => {
                let _ = reply.send(self.put_pipeline(name, spec, now));
            }
            Command::Subscribers { room, reply } => {
                let _ = reply.send(self.subscriber_reception(&room, now));
            }
            Command::ListPipelines { reply } => {
                let mut list: Vec<PipelineInfo> = self
                    .registry
                    .rooms()
                    .filter_map(|(name, _)| self.pipeline_info(name, now))
                    .collect();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(list);
            }
            Command::ReleasePipeline { name, reply } => {
                let result = if self.registry.room(&name).is_some() {
                    self.release_room(&name, now, RELEASED);
                    Ok(())
                } else {
                    Err(AdminError::NotFound(name))
                };
                let _ = reply.send(result);
            }
            Command::Load { reply } => {
                let _ = reply.send(self.load());
            }
            Command::Drain { reply } => {
                self.registry.drain();
                let _ = reply.send(self.load());
            }
            Command::RelayAttach {
                room,
                demand,
                reply,
            } => {
                let attached = self.relay_attach(&room, demand, now);
                let _ = reply.send(if attached {
                    Ok(())
                } else {
                    Err(AdminError::NotFound(room))
                });
            }
            Command::RelayParticipant {
                room,
                participant,
                name,
                present,
            } => self.relay_participant(&room, &participant, &name, present, now),
            Command::RelayScreenShare {
                room,
                participant,
                active,
            } => self.relay_screen_share(&room, &participant, active),
            Command::RelayRecording { room, active } => self.relay_recording(&room, active),
            Command::RelayTrack { track, reply } => {
                let _ = reply.send(self.relay_track(track, now));
            }
            Command::PipeOpen {
                room,
                parent,
                own_key,
                own_ssrc,
                reply,
            } => {
                let opened = match pipe::PipeKey::decode(&own_key) {
                    Some(own) => self
                        .pipe_open(&room, &parent, &own, own_ssrc)
                        .map_err(|err| err.to_string()),
                    None => Err("own key is not a pipe key".into()),
                };
                let _ = reply.send(opened);
            }
            Command::PipeTrack { pipe, track, reply } => {
                let _ = reply.send(self.pipe_track(pipe, track, now));
            }
            Command::RelayRtp { handle, packet } => {
                self.forward(handle.track, handle.layer, packet, now);
            }
            Command::RelayTrackEnded { room, track } => self.relay_track_ended(&room, &track, now),
            Command::RelayDetach { room } => self.relay_detach(&room, now),
            Command::Shutdown => {
                let sessions = self.registry.session_ids();
                for &session in &sessions {
                    if let Some(s) = self.registry.session_mut(session) {
                        s.closing = true;
                    }
                }
                for session in sessions {
                    self.remove_session(session, now, Some(STOPPING));
                }
                self.stopped = true;
            }
        }
        self.finish_step(now);
    }

    fn load(&self) -> ShardLoad {
        ShardLoad {
            pipelines: self.registry.room_count() as u32,
            participants: self.seated() as u32,
            tracks: self.media.len() as u32,
            forwarded_streams: self.forwarded_streams() as u32,
            draining: self.registry.is_draining(),
            ..self.rates.load.clone()
        }
    }

    fn put_pipeline(
        &mut self,
        name: String,
        spec: PipelineSpec,
        now: Instant,
    ) -> Result<(bool, PipelineInfo), AdminError> {
        if !crate::signal::protocol::valid_id(&name) {
            return Err(AdminError::Invalid(
                "name must be 1-64 characters of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        spec.validate().map_err(AdminError::Invalid)?;
        let created = self
            .registry
            .put_room(&name, spec, self.config.max_pipelines, now)?;
        self.update_gauges();
        let info = self
            .pipeline_info(&name, now)
            .ok_or_else(|| AdminError::NotFound(name.clone()))?;
        Ok((created, info))
    }

    fn pipeline_info(&self, name: &str, now: Instant) -> Option<PipelineInfo> {
        let room = self.registry.room(name)?;
        Some(PipelineInfo {
            name: name.to_owned(),
            spec: room.spec.clone(),
            participants: room
                .sessions
                .iter()
                .filter_map(|s| self.registry.session(*s))
                .filter(|s| s.presence.takes_seat())
                .count() as u32,
            tracks: room.tracks.len() as u32,
            forwarded_streams: room
                .tracks
                .iter()
                .filter_map(|t| self.media.track(*t))
                .map(|t| t.downtracks.len() as u32)
                .sum(),
            age_seconds: now.saturating_duration_since(room.created).as_secs(),
            empty_seconds: room
                .empty_since
                .map(|since| now.saturating_duration_since(since).as_secs()),
            max_subscriber_loss_percent: room
                .tracks
                .iter()
                .filter_map(|t| self.media.track(*t))
                .flat_map(|t| &t.downtracks)
                .map(|d| f64::from(d.fraction_lost) * 100.0 / 256.0)
                .fold(0.0, f64::max),
        })
    }

    /// Ends every session of room `name`, telling each `reason`, and frees its pipeline.
    fn release_room(&mut self, name: &str, now: Instant, reason: &str) {
        let sessions = self
            .registry
            .room(name)
            .map(|room| room.sessions.clone())
            .unwrap_or_default();
        for &session in &sessions {
            if let Some(s) = self.registry.session_mut(session) {
                s.closing = true;
            }
        }
        for session in sessions {
            self.remove_session(session, now, Some(reason));
        }
        self.registry.remove_room(name);
        self.media.close_room(name);
        self.update_gauges();
    }

    // ---------------------------------------------------------------- sessions

    fn join(
        &mut self,
        request: JoinRequest,
        events: mpsc::Sender<ServerMessage>,
        now: Instant,
    ) -> Result<SessionId, JoinError> {
        self.registry.room_for_join(
            &request,
            self.config.auto_create.as_ref(),
            self.config.max_pipelines,
            now,
        )?;
        if let Some(old) = self.registry.replaced_by(&request) {
            self.remove_session(old, now, Some("replaced by a newer session"));
        }
        if let Some(squatter) = self.registry.seat_squatter(&request, now) {
            tracing::info!(room = %request.room, "seat reclaimed from a session without media");
            self.remove_session(squatter, now, Some(SEAT_RECLAIMED));
        }
        let pipe = request.pipe.clone().filter(|_| request.relay);
        if let Some(pipe) = &pipe {
            self.check_pipe(pipe)
                .map_err(|err| JoinError::new(ErrorCode::BadMessage, err.to_string()))?;
        }
        let presence = self
            .registry
            .admit(&request, self.config.max_participants)?;
        let participants: Vec<ParticipantInfo> = self
            .registry
            .announced_in(&request.room)
            .into_iter()
            .filter_map(|s| self.participant_info(s))
            .collect();
        let (existing_tracks, audio) = self
            .registry
            .room(&request.room)
            .map(|room| (room.tracks.clone(), room.spec.audio))
            .unwrap_or_default();
        let id = self.ids.session();
        let info = ParticipantInfo {
            id: request.participant.clone(),
            name: request.name.clone(),
            tracks: Vec::new(),
            screen_sharing: false,
        };
        self.registry.enter(
            id,
            Session {
                participant: request.participant.clone(),
                name: request.name,
                room: request.room.clone(),
                events,
                publish: request.publish,
                subscribe: request.subscribe,
                publisher: None,
                subscriber: None,
                tracks: Vec::new(),
                screen_sharing: false,
                announcements: None,
                joined_at: now,
                media_seen: false,
                presence,
                recorder: request.recorder && presence == Presence::Relay,
                closing: false,
                offer_subscriber: request.offer_subscriber && presence != Presence::Relay,
            },
        );
        self.send(
            id,
            ServerMessage::Joined {
                room: request.room.clone(),
                participant: request.participant,
                participants,
                audio,
            },
        );
        if presence.announced() {
            self.broadcast(
                &request.room,
                Some(id),
                ServerMessage::ParticipantJoined { participant: info },
            );
        }
        let recorders = self.registry.recorders_in(&request.room);
        if request.recorder && presence == Presence::Relay {
            if recorders == 1 {
                tracing::info!(room = %request.room, "the room is being recorded");
                self.broadcast(
                    &request.room,
                    Some(id),
                    ServerMessage::Recording { active: true },
                );
            }
        } else if !request.recorder
            && (recorders > 0
                || self
                    .registry
                    .room(&request.room)
                    .and_then(|r| r.relay.as_ref())
                    .is_some_and(|feed| feed.recording))
        {
            // Relays are told too: an edge tells its viewers (and the edges below it).
            self.send(id, ServerMessage::Recording { active: true });
        }
        if let Some(pipe) = &pipe
            && let Err(err) = self.open_pipe(id, pipe)
        {
            // Checked above, and nothing ran in between.
            tracing::warn!(session = %id, %err, "relay pipe refused after its check");
        }
        if request.subscribe {
            for track in existing_tracks {
                self.add_downtrack(id, track, now);
            }
        }
        self.update_gauges();
        tracing::info!(session = %id, room = %request.room, "participant joined");
        Ok(id)
    }

    fn participant_info(&self, session: SessionId) -> Option<ParticipantInfo> {
        let s = self.registry.session(session)?;
        Some(ParticipantInfo {
            id: s.participant.clone(),
            name: s.name.clone(),
            tracks: s
                .tracks
                .iter()
                .filter_map(|t| self.media.track(*t).map(|t| self.track_info(t)))
                .collect(),
            screen_sharing: s.screen_sharing,
        })
    }

    fn track_info(&self, track: &PublishedTrack) -> TrackInfo {
        TrackInfo {
            id: track.id.clone(),
            kind: track.kind,
            stream_id: self
                .registry
                .session(track.session)
                .map(|s| s.participant.clone())
                .unwrap_or_default(),
            codec: track.codec.mime_type.clone(),
            layers: track
                .layers
                .iter()
                .filter(|l| !l.rid.is_empty())
                .map(|l| l.rid.clone())
                .collect(),
            muted: track.muted,
        }
    }

    /// Sends a message to a session; a session whose queue is full is ended.
    fn send(&mut self, session: SessionId, message: ServerMessage) {
        self.registry.send(&self.metrics, session, message);
    }

    fn send_error(&mut self, session: SessionId, code: ErrorCode, message: impl Into<String>) {
        self.send(
            session,
            ServerMessage::Error {
                code,
                message: message.into(),
            },
        );
    }

    /// Sends a message to every session of a room except `except`.
    fn broadcast(&mut self, room: &str, except: Option<SessionId>, message: ServerMessage) {
        self.registry
            .broadcast(&self.metrics, room, except, &message);
    }

    /// Ends a session: unpublishes its tracks, closes its connections, tells the room.
    fn remove_session(&mut self, id: SessionId, now: Instant, reason: Option<&str>) {
        let Some(session) = self.registry.session_mut(id) else {
            return;
        };
        session.closing = true;
        let room_name = session.room.clone();
        let participant = session.participant.clone();
        for track in session.tracks.clone() {
            self.unpublish(track, now);
        }
        if let Some(room) = self.registry.room(&room_name) {
            for track in room.tracks.clone() {
                if let Some(track) = self.media.track_mut(track) {
                    track.downtracks.retain(|d| d.session != id);
                }
            }
        }
        if let Some(reason) = reason {
            self.send(
                id,
                ServerMessage::Left {
                    reason: reason.to_owned(),
                    reconnect: [STOPPING, MEDIA_FAILED, RELEASED].contains(&reason),
                },
            );
        }
        let Some(session) = self.registry.leave(id, now) else {
            return;
        };
        for key in [session.publisher, session.subscriber]
            .into_iter()
            .flatten()
        {
            self.close_peer(key);
        }
        self.media.forget_speaker(&room_name, id);
        if session.presence.announced() {
            self.broadcast(
                &room_name,
                None,
                ServerMessage::ParticipantLeft { participant },
            );
        }
        if session.recorder && self.registry.recorders_in(&room_name) == 0 {
            tracing::info!(room = %room_name, "the room is no longer recorded");
            self.broadcast(&room_name, None, ServerMessage::Recording { active: false });
        }
        self.update_gauges();
        tracing::info!(session = %id, room = %room_name, reason = reason.unwrap_or("left"), "participant left");
    }

    fn close_peer(&mut self, key: PeerKey) {
        self.transport.close(key);
    }

    fn new_peer(&mut self, session: SessionId, role: PeerRole, now: Instant) -> Option<PeerKey> {
        let music = self
            .registry
            .session(session)
            .and_then(|s| self.registry.room(&s.room))
            .is_some_and(|room| room.spec.audio.is_music());
        let pc = match self.factory.build(role, music, now) {
            Ok(pc) => pc,
            Err(err) => {
                tracing::error!(%err, "cannot build a peer connection");
                self.send_error(
                    session,
                    ErrorCode::Internal,
                    "cannot create a peer connection",
                );
                return None;
            }
        };
        let key = self.ids.peer();
        self.transport.add(
            key,
            Peer::new(
                guarded::GuardedPc::new(pc, self.pc_alarm.clone()),
                role,
                session,
            ),
        );
        Some(key)
    }
}

impl PublishedTrack {
    /// Whether its publisher was told to stop encoding spatial layer `sid`.
    fn spatial_paused(&self, sid: usize) -> bool {
        self.spatial_switch
            .as_ref()
            .is_some_and(|s| !s.is_active(sid))
    }
}

impl DowntrackEntry {
    /// A downtrack to `(peer, session)` through `sender`, sending as `(ssrc, payload
    /// type)` (the type once negotiated) a track of `(video, clock rate, codec family)`,
    /// with nothing sent yet.
    fn new(
        (peer, session): (PeerKey, SessionId),
        sender: Option<RTCRtpSenderId>,
        (ssrc, payload_type): (u32, Option<u8>),
        (video, clock_rate, family): (bool, u32, CodecFamily),
    ) -> Self {
        Self {
            peer,
            session,
            sender,
            ssrc,
            payload_type,
            unwrap_red: false,
            extensions: ExtensionIds::default(),
            rollover: RolloverCounter::default(),
            rtx: None,
            stamps: None,
            sent: SentCounts::default(),
            state: Downtrack::new(video, clock_rate),
            picture_ids: PictureIds::new(family),
            fraction_lost: 0,
        }
    }
}

impl Peer {
    /// A connection of `session` in `role` that has negotiated nothing yet.
    fn new(pc: guarded::GuardedPc, role: PeerRole, session: SessionId) -> Self {
        Self {
            pc,
            role,
            session,
            ufrag: String::new(),
            pwd: String::new(),
            deadline: None,
            connected: false,
            dirty: false,
            incoming: crate::FastMap::default(),
            outgoing: crate::FastMap::default(),
            offer_out: false,
            slots: Vec::new(),
            renegotiate: false,
            remote_candidates: 0,
            srtp: None,
            srtp_in: None,
            uplink: None,
            transport_seq: 0,
            downlink: None,
            prober: None,
            route: None,
            pipe: false,
        }
    }
}

impl Room {
    fn new(spec: PipelineSpec, now: Instant) -> Self {
        Self {
            spec,
            relay: None,
            sessions: Vec::new(),
            by_participant: HashMap::new(),
            tracks: Vec::new(),
            created: now,
            empty_since: Some(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DropReason;
    use crate::signal::protocol::{ClientMessage, PeerTarget};
    use rand::RngExt;
    use tokio::sync::oneshot;

    fn core() -> ShardCore {
        let mut config = CoreConfig::new("127.0.0.1:40000".parse().unwrap());
        config.auto_create = Some(PipelineSpec::default());
        ShardCore::new(config, Arc::new(ShardMetrics::new()), Instant::now()).unwrap()
    }

    #[test]
    fn round_trip_probes_are_answered_from_where_they_arrived_within_a_budget() {
        let mut core = core();
        let start = Instant::now();
        let mut probe = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        probe.extend_from_slice(b"tutti-probe!");
        let from: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let local: IpAddr = "192.0.2.10".parse().unwrap();
        let answers = |core: &mut ShardCore| {
            let (mut out, mut tcp) = (Vec::new(), Vec::new());
            core.take_transmits(&mut out, &mut tcp);
            out.len()
        };
        core.handle_datagram(start, from, Some(local), &probe);
        let (mut out, mut tcp) = (Vec::new(), Vec::new());
        core.take_transmits(&mut out, &mut tcp);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, from);
        assert_eq!(&out[0].1[0..2], &[0x01, 0x01], "a Binding success response");
        // Sent from the address the probe came to, not bound to any peer afterwards.
        assert_eq!(core.local_ip_for(from), Some(local));
        assert_eq!(core.transport.bound_addrs(), 0);
        // A flood within one second: the budget's worth is answered, the rest dropped.
        for _ in 0..PROBES_PER_SECOND + 100 {
            core.handle_datagram(start + Duration::from_millis(500), from, None, &probe);
        }
        assert_eq!(answers(&mut core), PROBES_PER_SECOND as usize - 1);
        // The next second has a fresh budget.
        core.handle_datagram(start + Duration::from_millis(1500), from, None, &probe);
        assert_eq!(answers(&mut core), 1);
    }

    fn join(
        core: &mut ShardCore,
        room: &str,
        id: &str,
    ) -> (SessionId, mpsc::Receiver<ServerMessage>) {
        let (session, rx) = join_named(core, room, id, id);
        (session.unwrap(), rx)
    }

    fn join_named(
        core: &mut ShardCore,
        room: &str,
        id: &str,
        name: &str,
    ) -> (Result<SessionId, JoinError>, mpsc::Receiver<ServerMessage>) {
        let (events, rx) = mpsc::channel(64);
        let (reply, mut result) = oneshot::channel();
        core.handle_command(
            Instant::now(),
            Command::Join {
                request: JoinRequest {
                    room: room.into(),
                    participant: id.into(),
                    name: name.into(),
                    publish: true,
                    subscribe: true,
                    relay: false,
                    pipe: None,
                    recorder: false,
                    offer_subscriber: false,
                },
                events,
                reply,
            },
        );
        (result.try_recv().unwrap(), rx)
    }

    fn signal(core: &mut ShardCore, session: SessionId, message: ClientMessage) {
        core.handle_command(Instant::now(), Command::Signal { session, message });
    }

    fn drain(rx: &mut mpsc::Receiver<ServerMessage>) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(message) = rx.try_recv() {
            out.push(message);
        }
        out
    }

    fn chats(messages: &[ServerMessage]) -> Vec<(String, Option<String>)> {
        messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Chat { text, to, .. } => Some((text.clone(), to.clone())),
                _ => None,
            })
            .collect()
    }

    fn join_relay(
        core: &mut ShardCore,
        room: &str,
        id: &str,
        recorder: bool,
    ) -> (SessionId, mpsc::Receiver<ServerMessage>) {
        let (events, rx) = mpsc::channel(64);
        let (reply, mut result) = oneshot::channel();
        core.handle_command(
            Instant::now(),
            Command::Join {
                request: JoinRequest {
                    room: room.into(),
                    participant: id.into(),
                    name: id.into(),
                    publish: false,
                    subscribe: true,
                    relay: true,
                    pipe: None,
                    recorder,
                    offer_subscriber: false,
                },
                events,
                reply,
            },
        );
        (result.try_recv().unwrap().unwrap(), rx)
    }

    fn recording(messages: &[ServerMessage]) -> Vec<bool> {
        messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Recording { active } => Some(*active),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn everyone_in_a_room_is_told_while_a_recorder_is_in_it() {
        let mut core = core();
        let (_, mut teacher) = join(&mut core, "lesson", "teacher");
        // An edge's relay is no recorder: nobody is told anything.
        let (_, mut edge) = join_relay(&mut core, "lesson", "relay.edge", false);
        assert!(recording(&drain(&mut teacher)).is_empty());
        assert!(recording(&drain(&mut edge)).is_empty());
        // The first recorder: everyone else hears it once, the recorder itself nothing.
        let (first, mut recorder) = join_relay(&mut core, "lesson", "recorder.a", true);
        assert_eq!(recording(&drain(&mut teacher)), vec![true]);
        assert_eq!(recording(&drain(&mut edge)), vec![true]);
        assert!(recording(&drain(&mut recorder)).is_empty());
        let (second, _second_rx) = join_relay(&mut core, "lesson", "recorder.b", true);
        assert!(recording(&drain(&mut teacher)).is_empty(), "already told");
        // A newcomer is told right after `joined`; a room without a recorder tells nobody.
        let (_, mut student) = join(&mut core, "lesson", "student");
        let messages = drain(&mut student);
        assert!(matches!(
            messages.first(),
            Some(ServerMessage::Joined { .. })
        ));
        assert_eq!(recording(&messages), vec![true]);
        let (_, mut elsewhere) = join(&mut core, "other", "someone");
        assert!(recording(&drain(&mut elsewhere)).is_empty());
        // Only when the last recorder leaves is the room no longer recorded.
        core.handle_command(Instant::now(), Command::Leave { session: first });
        assert!(recording(&drain(&mut teacher)).is_empty());
        core.handle_command(Instant::now(), Command::Leave { session: second });
        assert_eq!(recording(&drain(&mut teacher)), vec![false]);
        assert_eq!(recording(&drain(&mut student)), vec![false]);
    }

    #[test]
    fn an_edge_tells_its_viewers_and_newcomers_while_the_stage_is_recorded() {
        let mut core = core();
        let (_, mut viewer) = join(&mut core, "stage", "viewer");
        let (demand, _) = tokio::sync::watch::channel(Default::default());
        assert!(core.relay_attach("stage", demand, Instant::now()));
        let told = |core: &mut ShardCore, active| {
            core.handle_command(
                Instant::now(),
                Command::RelayRecording {
                    room: "stage".into(),
                    active,
                },
            );
        };
        told(&mut core, true);
        told(&mut core, true);
        assert_eq!(recording(&drain(&mut viewer)), vec![true], "once");
        // A newcomer, and the relay of an edge below, are told as they join.
        let (_, mut late) = join(&mut core, "stage", "late");
        assert_eq!(recording(&drain(&mut late)), vec![true]);
        let (_, mut below) = join_relay(&mut core, "stage", "relay.below", false);
        assert_eq!(recording(&drain(&mut below)), vec![true]);
        told(&mut core, false);
        assert_eq!(recording(&drain(&mut viewer)), vec![false]);
        let (_, mut later) = join(&mut core, "stage", "later");
        assert!(recording(&drain(&mut later)).is_empty());
        // Cut off from its parent, the edge no longer says the stage is recorded.
        told(&mut core, true);
        drain(&mut viewer);
        core.relay_detach("stage", Instant::now());
        assert_eq!(recording(&drain(&mut viewer)), vec![false]);
    }

    #[test]
    fn nicknames_are_unique_per_room_ignoring_case_spaces_and_lookalikes() {
        let mut core = core();
        let (first, _a) = join_named(&mut core, "lesson", "p1", "Teacher");
        assert!(first.is_ok());
        // A Cyrillic Te, a full-width T, a zero-width joiner: the same name to the eye.
        for clash in [
            "teacher",
            "TEACHER",
            " Teacher ",
            "\u{0422}eacher",
            "\u{FF34}eacher",
            "Teach\u{200D}er",
        ] {
            let (result, _rx) = join_named(&mut core, "lesson", "p2", clash);
            assert_eq!(
                result.unwrap_err().code,
                ErrorCode::NicknameTaken,
                "{clash}"
            );
        }
        // Other rooms and other names are free; rejoining with one's own id is a replacement.
        assert!(join_named(&mut core, "other", "p3", "teacher").0.is_ok());
        assert!(join_named(&mut core, "lesson", "p4", "Student").0.is_ok());
        assert!(join_named(&mut core, "lesson", "p1", "TEACHER").0.is_ok());
        assert_eq!(core.registry.room("lesson").unwrap().sessions.len(), 2);
    }

    #[test]
    fn chat_reaches_the_room_and_direct_messages_only_their_recipient() {
        let mut core = core();
        let (a, mut a_rx) = join(&mut core, "ensemble", "a");
        let (_b, mut b_rx) = join(&mut core, "ensemble", "b");
        let (_c, mut c_rx) = join(&mut core, "ensemble", "c");
        let (_x, mut x_rx) = join(&mut core, "elsewhere", "x");
        for rx in [&mut a_rx, &mut b_rx, &mut c_rx, &mut x_rx] {
            drain(rx);
        }
        signal(
            &mut core,
            a,
            ClientMessage::Chat {
                text: "tune to A".into(),
                to: None,
            },
        );
        signal(
            &mut core,
            a,
            ClientMessage::Chat {
                text: "you were sharp".into(),
                to: Some("b".into()),
            },
        );
        signal(
            &mut core,
            a,
            ClientMessage::Chat {
                text: "hello?".into(),
                to: Some("x".into()),
            },
        );
        let everyone = ("tune to A".to_owned(), None);
        let private = ("you were sharp".to_owned(), Some("b".to_owned()));
        let a_got = drain(&mut a_rx);
        assert_eq!(chats(&a_got), vec![everyone.clone(), private.clone()]);
        assert!(a_got.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::ParticipantNotFound,
                ..
            }
        )));
        assert_eq!(chats(&drain(&mut b_rx)), vec![everyone.clone(), private]);
        assert_eq!(chats(&drain(&mut c_rx)), vec![everyone]);
        assert!(chats(&drain(&mut x_rx)).is_empty());
    }

    #[test]
    fn a_seat_held_without_media_goes_to_a_newcomer_after_the_grace() {
        let mut config = CoreConfig::new("127.0.0.1:40000".parse().unwrap());
        config.auto_create = Some(PipelineSpec {
            max_participants: 2,
            ..PipelineSpec::default()
        });
        let start = Instant::now();
        let mut core = ShardCore::new(config, Arc::new(ShardMetrics::new()), start).unwrap();
        let join_at = |core: &mut ShardCore, id: &str, at: Instant| {
            let (events, rx) = mpsc::channel(64);
            let (reply, mut result) = oneshot::channel();
            let request = JoinRequest {
                room: "lesson".into(),
                participant: id.into(),
                name: id.into(),
                publish: true,
                subscribe: true,
                relay: false,
                pipe: None,
                recorder: false,
                offer_subscriber: false,
            };
            core.handle_command(
                at,
                Command::Join {
                    request,
                    events,
                    reply,
                },
            );
            (result.try_recv().unwrap(), rx)
        };
        let (squatter, mut squatter_rx) = join_at(&mut core, "squatter", start);
        let (teacher, _teacher_rx) = join_at(&mut core, "teacher", start + Duration::from_secs(1));
        let teacher = teacher.unwrap();
        // The teacher's media connected; the squatter's never did.
        core.registry.session_mut(teacher).unwrap().media_seen = true;
        let (early, _) = join_at(&mut core, "student", start + Duration::from_secs(10));
        assert_eq!(
            early.unwrap_err().code,
            ErrorCode::RoomFull,
            "within the grace"
        );
        let (late, _) = join_at(
            &mut core,
            "student",
            start + SEAT_GRACE + Duration::from_secs(1),
        );
        assert!(late.is_ok(), "the squatted seat went to the student");
        assert!(core.registry.session(squatter.unwrap()).is_none());
        assert!(
            core.registry.session(teacher).is_some(),
            "a seat with media is kept"
        );
        assert!(drain(&mut squatter_rx).iter().any(
            |m| matches!(m, ServerMessage::Left { reason, .. } if reason.contains("no media"))
        ));
        // Full again, and the student's own grace is not over: refused.
        let (refused, _) = join_at(
            &mut core,
            "fourth",
            start + SEAT_GRACE + Duration::from_secs(5),
        );
        assert_eq!(refused.unwrap_err().code, ErrorCode::RoomFull);
    }

    #[test]
    fn state_floods_are_cut_and_only_publishers_share_screens() {
        let mut core = core();
        let (a, mut a_rx) = join(&mut core, "class", "a");
        let (_b, mut b_rx) = join(&mut core, "class", "b");
        drain(&mut b_rx);
        drain(&mut a_rx);
        let at = Instant::now();
        for i in 0..40 {
            let message = ClientMessage::ScreenShare { active: i % 2 == 0 };
            core.handle_command(
                at,
                Command::Signal {
                    session: a,
                    message,
                },
            );
        }
        let announced = drain(&mut b_rx)
            .iter()
            .filter(|m| matches!(m, ServerMessage::ScreenShare { .. }))
            .count();
        assert_eq!(
            announced,
            super::negotiate::ANNOUNCEMENTS_PER_SECOND as usize
        );
        let refused = drain(&mut a_rx)
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .count();
        // Once the budget is spent the state stays "sharing"; every later "stopped" is
        // refused (18 of them), every repeated "sharing" changes nothing.
        assert_eq!(refused, 18);
        // A second later the budget is back.
        let later = at + Duration::from_millis(1001);
        core.handle_command(
            later,
            Command::Signal {
                session: a,
                message: ClientMessage::ScreenShare { active: false },
            },
        );
        assert_eq!(drain(&mut b_rx).len(), 1);

        // A participant who may not publish has no screen to share.
        let (events, mut listener_rx) = mpsc::channel(64);
        let (reply, mut result) = oneshot::channel();
        core.handle_command(
            at,
            Command::Join {
                request: JoinRequest {
                    room: "class".into(),
                    participant: "listener".into(),
                    name: "Listener".into(),
                    publish: false,
                    subscribe: true,
                    relay: false,
                    pipe: None,
                    recorder: false,
                    offer_subscriber: false,
                },
                events,
                reply,
            },
        );
        let listener = result.try_recv().unwrap().unwrap();
        drain(&mut listener_rx);
        drain(&mut b_rx);
        signal(
            &mut core,
            listener,
            ClientMessage::ScreenShare { active: true },
        );
        assert!(matches!(
            drain(&mut listener_rx).as_slice(),
            [ServerMessage::Error {
                code: ErrorCode::Forbidden,
                ..
            }]
        ));
        assert!(drain(&mut b_rx).is_empty(), "nothing reached the room");
    }

    #[test]
    fn screen_share_is_announced_and_seen_by_late_joiners() {
        let mut core = core();
        let (a, _a_rx) = join(&mut core, "class", "a");
        let (_b, mut b_rx) = join(&mut core, "class", "b");
        drain(&mut b_rx);
        signal(&mut core, a, ClientMessage::ScreenShare { active: true });
        signal(&mut core, a, ClientMessage::ScreenShare { active: true });
        let got = drain(&mut b_rx);
        let announced = got
            .iter()
            .filter(|m| matches!(m, ServerMessage::ScreenShare { active: true, .. }))
            .count();
        assert_eq!(announced, 1, "a repeated state is not announced twice");
        let (_c, mut c_rx) = join(&mut core, "class", "c");
        let joined = drain(&mut c_rx);
        assert!(joined.iter().any(|m| matches!(
            m,
            ServerMessage::Joined { participants, .. }
                if participants.iter().any(|p| p.id == "a" && p.screen_sharing)
        )));
    }

    #[test]
    fn random_datagrams_are_dropped_without_harm() {
        let mut core = core();
        let (_session, _rx) = join(&mut core, "r", "p");
        let mut rng = rand::rng();
        let now = Instant::now();
        for i in 0..20_000u32 {
            let len = rng.random_range(0..1500);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Every first-byte range in turn, and STUN with the magic cookie half the time.
            if let Some(first) = bytes.first_mut() {
                *first = (i % 256) as u8;
            }
            if i % 2 == 0 && bytes.len() >= 8 {
                bytes[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            let from = SocketAddr::from(([10, 0, (i % 7) as u8, 1], 1000 + (i % 50) as u16));
            core.handle_datagram(now, from, None, &bytes);
            assert!(!core.handle_tcp_frame(now, from, &bytes));
        }
        let mut out = Vec::new();
        let mut tcp = Vec::new();
        core.take_transmits(&mut out, &mut tcp);
        assert!(
            out.is_empty() && tcp.is_empty(),
            "nothing answers strangers"
        );
        let metrics = core.metrics();
        let dropped: u64 = [
            DropReason::Garbage,
            DropReason::UnknownUfrag,
            DropReason::UnknownSource,
            DropReason::BadIntegrity,
        ]
        .into_iter()
        .map(|r| metrics.dropped_count(r))
        .sum();
        assert_eq!(dropped, 40_000);
        assert_eq!(core.transport.bound_addrs(), 0);
        assert_eq!(core.registry.sessions().count(), 1);
    }

    #[test]
    fn garbage_sdp_is_rejected_and_the_session_keeps_its_seat() {
        let mut core = core();
        let (session, mut rx) = join(&mut core, "r", "p");
        assert!(matches!(rx.try_recv(), Ok(ServerMessage::Joined { .. })));
        let mut rng = rand::rng();
        let samples = [
            String::new(),
            "v=0".into(),
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n".into(),
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio x y z\r\na=mid:\r\n".into(),
            (0..3000)
                .map(|_| rng.random_range(b' '..=b'~') as char)
                .collect::<String>(),
            "m=\r\n".repeat(2000),
        ];
        for sdp in samples {
            core.handle_command(
                Instant::now(),
                Command::Signal {
                    session,
                    message: ClientMessage::Offer {
                        pc: PeerTarget::Publisher,
                        sdp: sdp.clone(),
                    },
                },
            );
            match rx.try_recv() {
                Ok(ServerMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::SdpRejected),
                other => panic!("{sdp:?} gave {other:?}"),
            }
            core.handle_command(
                Instant::now(),
                Command::Signal {
                    session,
                    message: ClientMessage::Answer {
                        pc: PeerTarget::Subscriber,
                        sdp,
                    },
                },
            );
            assert!(matches!(
                rx.try_recv(),
                Ok(ServerMessage::Error {
                    code: ErrorCode::OutOfOrder,
                    ..
                })
            ));
        }
        assert!(core.registry.session(session).is_some());
        assert_eq!(core.metrics().peer_panics.get(), 0);
    }

    #[test]
    fn joins_beyond_capacity_and_duplicate_ids_behave() {
        let mut core = core();
        let (reply, mut result) = oneshot::channel();
        let (events, _rx) = mpsc::channel(4);
        core.handle_command(
            Instant::now(),
            Command::PutPipeline {
                name: "duo".into(),
                spec: PipelineSpec {
                    max_participants: 2,
                    ..PipelineSpec::default()
                },
                reply,
            },
        );
        assert!(result.try_recv().unwrap().is_ok());
        let (first, mut first_rx) = join(&mut core, "duo", "a");
        let (_second, _second_rx) = join(&mut core, "duo", "b");
        // A third participant is refused; the same id again replaces its old session.
        let (reply, mut result) = oneshot::channel();
        core.handle_command(
            Instant::now(),
            Command::Join {
                request: JoinRequest {
                    room: "duo".into(),
                    participant: "c".into(),
                    name: "c".into(),
                    publish: true,
                    subscribe: true,
                    relay: false,
                    pipe: None,
                    recorder: false,
                    offer_subscriber: false,
                },
                events,
                reply,
            },
        );
        assert_eq!(
            result.try_recv().unwrap().unwrap_err().code,
            ErrorCode::RoomFull
        );
        let (again, _again_rx) = join(&mut core, "duo", "a");
        assert_ne!(again, first);
        let mut replaced = false;
        while let Ok(message) = first_rx.try_recv() {
            replaced |= matches!(message, ServerMessage::Left { .. });
        }
        assert!(replaced, "the older session was told it was replaced");
        assert_eq!(core.registry.room("duo").unwrap().sessions.len(), 2);
    }
}
