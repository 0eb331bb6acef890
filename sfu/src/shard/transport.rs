//! Peers and transport: the shard's connections and everything between them and the
//! socket. Routing a datagram in to the connection it belongs to, answering round-trip
//! probes, the connections' timers, and collecting what they want sent.
//!
//! The rest of the core reaches a connection only by its key, through [`Transport`]:
//! which address belongs to which connection, which connections have output waiting and
//! when each next needs the clock are kept here and nowhere else.

use super::guarded::MovedIn;
use super::{Incoming, Peer, PeerKey, SessionId};
use crate::demux::Demux;
use crate::media::downlink::DownlinkEstimate;
use crate::media::feedback;
use crate::media::loss::Arrival;
use crate::media::outgoing::{self, ExtensionIds, OutPacket, SendStamp, abs_send_time};
use crate::media::uplink_feedback::UplinkFeedback;
use crate::metrics::{DropReason, ShardMetrics};
use crate::peer::PeerRole;
use crate::wire::{self, DatagramKind};
use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Round-trip probes (plain STUN Binding requests) answered per second at most.
pub const PROBES_PER_SECOND: u32 = 500;

/// The shard's connections and their addresses, timers and output.
pub(super) struct Transport {
    /// The address advertised as every connection's ICE candidate.
    advertised: SocketAddr,
    /// The passive ICE-TCP candidate's address, when ICE-TCP is on.
    advertised_tcp: Option<SocketAddr>,
    /// Checks STUN message integrity.
    crypto: Arc<dyn RTCCryptoProvider>,
    metrics: Arc<ShardMetrics>,
    peers: crate::FastMap<PeerKey, Peer>,
    demux: Demux<PeerKey>,
    /// ICE-TCP connections bound to peers, by remote address (ufrags live in `demux`).
    tcp_demux: Demux<PeerKey>,
    tcp_to_close: Vec<SocketAddr>,
    tcp_transmits: Vec<(SocketAddr, BytesMut)>,
    timers: BinaryHeap<Reverse<(Instant, PeerKey)>>,
    /// Peers with output waiting, each once (its `dirty` flag says it is listed).
    dirty: Vec<PeerKey>,
    transmits: Vec<(SocketAddr, BytesMut)>,
    /// Datagram buffers the I/O loop has sent and handed back, for the next packets the
    /// shard writes: in steady state forwarding allocates none.
    spare: Vec<BytesMut>,
    /// The instant abs-send-time counts from.
    epoch: Option<Instant>,
    /// Where the round-trip probes answered since the last [`Self::take_transmits`] were
    /// sent to (wildcard sockets answer from that address)...
    probe_sources: Vec<(SocketAddr, IpAddr)>,
    /// ...and those of the batch it took, which is being sent.
    probe_sources_taken: Vec<(SocketAddr, IpAddr)>,
    /// Probes answered in the current second: (its start, count).
    probe_window: Option<(Instant, u32)>,
    /// Where subscribers' SRTCP is decrypted, reused.
    rtcp_scratch: Vec<u8>,
    /// Where publishers' SRTP is decrypted, reused.
    rtp_scratch: Vec<u8>,
    /// The transport-cc feedback of the subscriber RTCP packet read last.
    pub(super) transport_feedback: feedback::TransportFeedback,
    /// Relay pipes by their far end's RTCP SSRC. Not by address: a shard may send from
    /// another address than the one it advertises (NAT, a pod's own address), and SRTCP
    /// authentication is what proves the sender.
    pipes: crate::FastMap<u32, PeerKey>,
}

/// Where one datagram went.
pub(super) enum Routed {
    /// To this peer's connection, which has read it.
    Peer(PeerKey),
    /// Feedback (RTCP) from this subscriber, decrypted and read by the shard.
    Feedback(PeerKey, Vec<Box<dyn rtc::rtcp::packet::Packet>>),
    /// A publisher's packet of a stream the shard forwards, decrypted and read past `rtc`.
    Media(Incoming, rtc::rtp::Packet),
    /// Taken by the shard from a connection it belongs to, with nothing more to do: a
    /// publisher's RTCP once read, or a bound peer's packet dropped (and counted). Unlike
    /// [`Routed::Nowhere`], it says the sender is known: an ICE-TCP connection stays open.
    Consumed,
    /// Nowhere: answered as a probe, or dropped (and counted).
    Nowhere,
}

/// Size of the reused datagram buffers: an MTU of 1500 less IPv6 and UDP headers.
const MAX_DATAGRAM: usize = 1452;
/// Spare buffers kept between batches; more are dropped.
const MAX_SPARE: usize = 4096;

/// One subscriber's connection, borrowed to send it media: looked up once per packet.
pub(super) struct PeerTx<'a> {
    peer: &'a mut Peer,
    transmits: &'a mut Vec<(SocketAddr, BytesMut)>,
    tcp_transmits: &'a mut Vec<(SocketAddr, BytesMut)>,
    spare: &'a mut Vec<BytesMut>,
    epoch: Instant,
}

impl PeerTx<'_> {
    /// Whether media can go out: the connection is up and its SRTP keys are known.
    pub(super) fn connected(&self) -> bool {
        self.peer.connected && self.peer.srtp.is_some()
    }

    /// The send stamps of a packet first sent now: the connection's next transport-wide
    /// sequence number and the abs-send-time of `now`.
    pub(super) fn stamp(&mut self, now: Instant) -> SendStamp {
        let transport_seq = self.peer.transport_seq;
        self.peer.transport_seq = transport_seq.wrapping_add(1);
        SendStamp {
            transport_seq,
            abs_send_time: abs_send_time(now.saturating_duration_since(self.epoch)),
        }
    }

    /// Writes `packet` with the extensions `ids` names into a reused buffer, lets `patch`
    /// change its payload there, protects it as SRTP packet `index` and queues it for the
    /// connection's selected address; returns its size on the wire. `None` when it cannot
    /// go out (no keys, no selected pair).
    pub(super) fn send_rtp(
        &mut self,
        ids: &ExtensionIds,
        packet: &OutPacket<'_>,
        index: u64,
        patch: impl FnOnce(&mut [u8]),
    ) -> Option<usize> {
        let srtp = self.peer.srtp.as_ref()?;
        let (to, protocol) = self.peer.route?;
        let needed = outgoing::header_room(packet) + packet.payload.len() + srtp.tag_len();
        let mut buf = match self.spare.pop() {
            Some(buf) if needed <= MAX_DATAGRAM => buf,
            // A publisher's packet larger than a usual MTU still goes out as it came (the
            // kernel fragments it), in a buffer of its own.
            spare => {
                self.spare.extend(spare);
                BytesMut::with_capacity(needed.max(MAX_DATAGRAM))
            }
        };
        let header_len = outgoing::write(&mut buf, ids, packet);
        if let Some(payload) = buf.get_mut(header_len..) {
            patch(payload);
        }
        if srtp
            .protect(&mut buf, header_len, packet.ssrc, index)
            .is_err()
        {
            self.spare.push(buf);
            return None;
        }
        let size = buf.len();
        match protocol {
            TransportProtocol::TCP => self.tcp_transmits.push((to, buf)),
            _ => self.transmits.push((to, buf)),
        }
        Some(size)
    }

    /// A packet first sent now under transport-wide sequence number `seq`, `size` bytes
    /// on the wire: remembered for the downlink estimate, which starts with the first.
    pub(super) fn stamped_sent(&mut self, seq: u16, size: usize, now: Instant) {
        self.peer
            .downlink
            .get_or_insert_with(|| Box::new(DownlinkEstimate::new(now)))
            .on_sent(seq, size, now);
    }
}

impl Peer {
    /// When the connection next needs the clock: its own timers, and a publisher's
    /// feedback.
    fn next_deadline(&mut self) -> Option<Instant> {
        let connection = self.pc.with(|pc| pc.poll_timeout()).flatten();
        let feedback = self.uplink.as_ref().map(|u| u.next_due());
        match (connection, feedback) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads where the connection's packets go now. ICE changes its selected pair while
    /// handling a datagram, a timeout or a new description, so reading it after those
    /// (and for every connection with output, once per turn) keeps the route exact
    /// without asking on every forwarded packet.
    fn refresh_route(&mut self) {
        // A pipe's route is the address its far end named; there is no ICE.
        if self.pipe {
            return;
        }
        self.route = self
            .pc
            .with(|pc| pc.selected_transport())
            .flatten()
            .map(|to| (to.peer_addr, to.transport_protocol));
    }
}

impl Transport {
    /// No connections; addresses unused for `idle_timeout` are forgotten.
    pub(super) fn new(
        advertised: SocketAddr,
        advertised_tcp: Option<SocketAddr>,
        idle_timeout: Duration,
        crypto: Arc<dyn RTCCryptoProvider>,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        Self {
            advertised,
            advertised_tcp,
            crypto,
            metrics,
            peers: crate::FastMap::default(),
            demux: Demux::new(idle_timeout),
            tcp_demux: Demux::new(idle_timeout),
            tcp_to_close: Vec::new(),
            tcp_transmits: Vec::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            transmits: Vec::new(),
            spare: Vec::new(),
            epoch: None,
            probe_sources: Vec::new(),
            probe_sources_taken: Vec::new(),
            probe_window: None,
            rtcp_scratch: Vec::new(),
            rtp_scratch: Vec::new(),
            transport_feedback: feedback::TransportFeedback::default(),
            pipes: crate::FastMap::default(),
        }
    }

    // ---------------------------------------------------------------- the connections

    /// One connection.
    pub(super) fn peer(&self, key: PeerKey) -> Option<&Peer> {
        self.peers.get(&key)
    }

    /// One connection, to change.
    pub(super) fn peer_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        self.peers.get_mut(&key)
    }

    /// One connection, to send it media; `now` starts the abs-send-time clock.
    pub(super) fn tx(&mut self, key: PeerKey, now: Instant) -> Option<PeerTx<'_>> {
        let peer = self.peers.get_mut(&key)?;
        Some(PeerTx {
            peer,
            transmits: &mut self.transmits,
            tcp_transmits: &mut self.tcp_transmits,
            spare: &mut self.spare,
            epoch: *self.epoch.get_or_insert(now),
        })
    }

    /// The connection is up: from its DTLS keys, the shard can protect what it sends.
    pub(super) fn connected(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        peer.connected = true;
        peer.refresh_route();
        if peer.srtp.is_some() {
            return;
        }
        let keys = peer.pc.with(|pc| pc.srtp_session_keys()).flatten();
        let Some((profile, keys)) =
            keys.and_then(|(profile, keys)| Some((crate::srtp::Profile::from_rtc(profile)?, keys)))
        else {
            tracing::warn!(peer = %key, "connected without usable SRTP keys: no media will be sent");
            return;
        };
        tracing::debug!(peer = %key, ?profile, "SRTP keys exported");
        peer.srtp =
            crate::srtp::SrtpSender::new(profile, &keys.local_master_key, &keys.local_master_salt)
                .ok();
        // What the other end sends is read by the shard itself: a subscriber's RTCP, and a
        // publisher's RTP (but a stream's first packets and RTX, which `rtc` still reads)
        // and RTCP.
        peer.srtp_in = crate::srtp::SrtpReceiver::new(
            profile,
            &keys.remote_master_key,
            &keys.remote_master_salt,
        )
        .ok();
        if peer.role == PeerRole::Publisher && peer.srtp_in.is_some() {
            let transport_cc = peer.pc.with(transport_cc_id).flatten();
            peer.uplink = Some(Box::new(UplinkFeedback::new(transport_cc, now)));
        }
        if peer.srtp.is_none() {
            tracing::warn!(peer = %key, "connected without usable SRTP keys: no media will be sent");
        }
    }

    /// Writes RTCP the shard made (sender reports) through one of a connection's senders;
    /// rtc protects it as SRTCP and the connection then has output to send.
    pub(super) fn write_rtcp(
        &mut self,
        key: PeerKey,
        sender: RTCRtpSenderId,
        packets: Vec<Box<dyn rtc::rtcp::packet::Packet>>,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let packets = MovedIn::new(packets);
        let written = peer.pc.with(move |pc| {
            pc.rtp_sender(sender)
                .map(|mut sender| sender.write_rtcp(now, packets.take()))
        });
        if let Some(Some(Err(err))) = written {
            tracing::debug!(peer = %key, %err, "sender report refused");
        }
        self.mark_dirty(key);
    }

    /// Takes back datagram buffers the I/O loop has sent, for reuse.
    pub(super) fn recycle(&mut self, sent: impl Iterator<Item = BytesMut>) {
        for mut buf in sent {
            if self.spare.len() >= MAX_SPARE {
                break;
            }
            // Only buffers that are whole and large enough: a view into a shared
            // allocation would reallocate on first write.
            buf.clear();
            if buf.try_reclaim(MAX_DATAGRAM) {
                self.spare.push(buf);
            }
        }
    }

    /// Every connection.
    pub(super) fn peers(&self) -> impl Iterator<Item = (PeerKey, &Peer)> {
        self.peers.iter().map(|(key, peer)| (*key, peer))
    }

    /// Adds a connection; it has output (its first timer) at once.
    pub(super) fn add(&mut self, key: PeerKey, peer: Peer) {
        self.peers.insert(key, peer);
        self.mark_dirty(key);
    }

    /// Adds a relay pipe whose far end sends its RTCP under `ssrc`. False, and nothing
    /// added, if another pipe is known by the same.
    pub(super) fn add_pipe(&mut self, key: PeerKey, peer: Peer, ssrc: u32) -> bool {
        if self.pipes.contains_key(&ssrc) {
            return false;
        }
        self.pipes.insert(ssrc, key);
        self.add(key, peer);
        true
    }

    /// Whether a pipe is known by its far end's RTCP SSRC.
    pub(super) fn has_pipe(&self, ssrc: u32) -> bool {
        self.pipes.contains_key(&ssrc)
    }

    /// Whether an SSRC is already used towards `to` by any pipe there: the far end tells
    /// the streams of all its pipes from this shard apart by SSRC alone.
    pub(super) fn pipe_ssrc_taken(&self, to: SocketAddr, ssrc: u32) -> bool {
        self.pipes.values().any(|key| {
            self.peers.get(key).is_some_and(|peer| {
                peer.route.is_some_and(|(addr, _)| addr == to) && peer.outgoing.contains_key(&ssrc)
            })
        })
    }

    /// Queues a datagram the core wrote itself (a pipe's RTCP) for `to`.
    pub(super) fn queue_datagram(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.transmits.push((to, datagram));
    }

    /// The address advertised for the shard's UDP port.
    pub(super) fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// Closes a connection, telling the client at once (DTLS close_notify) rather than
    /// letting ICE time out, and forgets its addresses; its ICE-TCP connections are to be
    /// closed.
    pub(super) fn close(&mut self, key: PeerKey) {
        if let Some(mut peer) = self.peers.remove(&key) {
            // A poisoned connection is simply dropped: closing it would run the code that
            // panicked again.
            if let Some(Ok(())) = peer.pc.with(|pc| pc.close()) {
                while let Some(Some(datagram)) = peer.pc.with(|pc| pc.poll_write()) {
                    let out = match datagram.transport.transport_protocol {
                        TransportProtocol::TCP => &mut self.tcp_transmits,
                        _ => &mut self.transmits,
                    };
                    out.push((datagram.transport.peer_addr, datagram.message));
                }
            }
        }
        self.forget_addresses(key);
    }

    /// Drops a peer's address bindings; its ICE-TCP connections are to be closed.
    fn forget_addresses(&mut self, key: PeerKey) {
        self.pipes.retain(|_, pipe| *pipe != key);
        self.demux.remove_peer(key);
        let closed = self.tcp_demux.remove_peer(key);
        self.tcp_to_close.extend(closed);
    }

    /// The connections that panicked, and their sessions (see [`super::guarded`]).
    pub(super) fn poisoned(&self) -> Vec<(PeerKey, SessionId)> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.pc.is_poisoned())
            .map(|(key, peer)| (*key, peer.session))
            .collect()
    }

    /// Routes STUN by the ICE credentials of the description a peer just applied: its
    /// first one, and fresh ones after an ICE restart (the old ufrag stops routing).
    pub(super) fn adopt_ice_credentials(&mut self, key: PeerKey, sdp: &str) {
        let Some((ufrag, pwd)) = crate::peer::ice_credentials(sdp) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.ufrag == ufrag && peer.pwd == pwd {
            return;
        }
        if !peer.ufrag.is_empty() {
            tracing::debug!(peer = %key, "ICE restarted with fresh credentials");
            self.demux.unregister_ufrag(&peer.ufrag);
            // The cap on a client's candidates is per ICE session: a restart gathers anew.
            peer.remote_candidates = 0;
        }
        peer.ufrag = ufrag.to_owned();
        peer.pwd = pwd.to_owned();
        self.demux.register_ufrag(ufrag.to_owned(), key);
    }

    // ---------------------------------------------------------------- datagrams in

    /// Routes one datagram (or ICE-TCP frame) from `from`, sent to the local address `to`
    /// when the socket reports it, to the connection it belongs to, which reads it.
    pub(super) fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        datagram: &[u8],
        protocol: TransportProtocol,
    ) -> Routed {
        let kind = wire::classify(datagram);
        if kind == DatagramKind::Rtcp
            && protocol == TransportProtocol::UDP
            && let Some(ssrc) = datagram.get(4..8)
            && let Some(&key) = self
                .pipes
                .get(&u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]))
        {
            self.metrics.datagram_in(3);
            return self.read_feedback(key, datagram, now);
        }
        let bound = match protocol {
            TransportProtocol::TCP => self.tcp_demux.peer_by_addr(from, None, now),
            _ => self.demux.peer_by_addr(from, to, now),
        };
        let key = match (kind, bound) {
            (DatagramKind::Unknown, _) => {
                self.metrics.dropped(DropReason::Garbage);
                return Routed::Nowhere;
            }
            (_, Some(key)) => key,
            (DatagramKind::Stun, None) => {
                if protocol == TransportProtocol::UDP
                    && let Some(response) = wire::probe_response(datagram, from)
                {
                    self.answer_probe(now, from, to, response);
                    return Routed::Nowhere;
                }
                match self.authenticate_stun(datagram) {
                    Ok(key) => {
                        match protocol {
                            TransportProtocol::TCP => self.tcp_demux.bind(from, None, key, now),
                            _ => self.demux.bind(from, to, key, now),
                        }
                        key
                    }
                    Err(reason) => {
                        self.metrics.dropped(reason);
                        return Routed::Nowhere;
                    }
                }
            }
            (_, None) => {
                self.metrics.dropped(DropReason::UnknownSource);
                return Routed::Nowhere;
            }
        };
        self.metrics.datagram_in(match kind {
            DatagramKind::Stun => 0,
            DatagramKind::Dtls => 1,
            DatagramKind::Rtp => 2,
            _ => 3,
        });
        let local_addr = match protocol {
            TransportProtocol::TCP => self.advertised_tcp.unwrap_or(self.advertised),
            _ => self.advertised,
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            self.forget_addresses(key);
            self.metrics.dropped(DropReason::UnknownSource);
            return Routed::Nowhere;
        };
        let transport = TransportContext {
            local_addr,
            peer_addr: from,
            ecn: None,
            transport_protocol: protocol,
        };
        if kind == DatagramKind::Rtp && peer.uplink.is_some() {
            if peer.route.is_none() {
                self.metrics.dropped(DropReason::UnknownSource);
                return Routed::Consumed;
            }
            match read_publisher_rtp(peer, datagram, &mut self.rtp_scratch, &self.metrics, now) {
                Ok(Some((incoming, packet))) => {
                    arm_uplink(&mut self.timers, peer, key);
                    return Routed::Media(incoming, packet);
                }
                // Not a stream the shard knows yet: `rtc` reads it (it decrypts it again
                // with its own context), announces the stream or unwraps the RTX.
                Ok(None) => arm_uplink(&mut self.timers, peer, key),
                Err(reason) => {
                    self.metrics.dropped(reason);
                    return Routed::Consumed;
                }
            }
        }
        if kind == DatagramKind::Rtcp && peer.srtp_in.is_some() {
            // A subscriber's feedback, read here rather than by its connection (see
            // media::feedback). Accepted on the terms rtc's own ICE handler accepts
            // non-STUN traffic: from the bound address, once a pair is selected (consent
            // freshness rests on STUN alone there too).
            if peer.route.is_none() {
                self.metrics.dropped(DropReason::UnknownSource);
                return Routed::Consumed;
            }
            return self.read_feedback(key, datagram, now);
        }
        let input = TaggedBytesMut {
            now,
            transport,
            message: BytesMut::from(datagram),
        };
        // `rtc` reports malformed records and packets by logging and dropping them;
        // an error here means the connection itself is unusable.
        if let Some(Err(err)) = peer.pc.with(move |pc| pc.handle_read(input)) {
            tracing::debug!(peer = %key, %err, "datagram rejected by peer connection");
        }
        peer.refresh_route();
        Routed::Peer(key)
    }

    /// Verifies, decrypts and reads the SRTCP a subscriber or a pipe's far end sent.
    fn read_feedback(&mut self, key: PeerKey, datagram: &[u8], now: Instant) -> Routed {
        let Some(peer) = self.peers.get_mut(&key) else {
            self.metrics.dropped(DropReason::UnknownSource);
            return Routed::Nowhere;
        };
        let Some(srtcp) = peer.srtp_in.as_mut() else {
            self.metrics.dropped(DropReason::UnknownSource);
            return Routed::Nowhere;
        };
        self.rtcp_scratch.clear();
        self.rtcp_scratch.extend_from_slice(datagram);
        let Ok(len) = srtcp.unprotect_rtcp(&mut self.rtcp_scratch) else {
            self.metrics.dropped(DropReason::BadSrtcp);
            return Routed::Consumed;
        };
        if let Some(uplink) = peer.uplink.as_mut() {
            // A publisher's RTCP: its sender reports, echoed in the shard's receiver reports.
            feedback::sender_reports(&self.rtcp_scratch[..len], |ssrc, ntp| {
                uplink.on_sender_report(ssrc, ntp, now);
            });
            return Routed::Consumed;
        }
        let mut packets = Vec::new();
        if !feedback::read(
            &self.rtcp_scratch[..len],
            &mut packets,
            &mut self.transport_feedback,
        ) {
            tracing::debug!(peer = %key, "malformed RTCP: read in part");
        }
        Routed::Feedback(key, packets)
    }

    /// Finds the peer a STUN request names and checks it knows the peer's password.
    fn authenticate_stun(&self, datagram: &[u8]) -> Result<PeerKey, DropReason> {
        let ufrag = wire::stun_username(datagram)
            .and_then(wire::local_ufrag)
            .ok_or(DropReason::UnknownUfrag)?;
        let key = self
            .demux
            .peer_by_ufrag(ufrag)
            .ok_or(DropReason::UnknownUfrag)?;
        let peer = self.peers.get(&key).ok_or(DropReason::UnknownUfrag)?;
        let mut message = rtc::stun::message::Message {
            raw: datagram.to_vec(),
            ..Default::default()
        };
        message.decode().map_err(|_| DropReason::Garbage)?;
        rtc::stun::integrity::MessageIntegrity::check(
            &mut message,
            peer.pwd.as_bytes(),
            self.crypto.crypto(),
        )
        .map_err(|_| DropReason::BadIntegrity)?;
        Ok(key)
    }

    /// Queues the answer to a round-trip probe, from the address it was sent to. At most
    /// [`PROBES_PER_SECOND`] are answered: a probe's answer is no larger than the probe,
    /// but a forged source could still aim them at someone.
    fn answer_probe(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        response: Vec<u8>,
    ) {
        let window = match self.probe_window {
            Some((start, count))
                if now.saturating_duration_since(start) < Duration::from_secs(1) =>
            {
                (start, count)
            }
            _ => (now, 0),
        };
        if window.1 >= PROBES_PER_SECOND {
            self.metrics.dropped(DropReason::ProbeLimit);
            return;
        }
        self.probe_window = Some((window.0, window.1 + 1));
        if let Some(local) = to {
            self.probe_sources.push((from, local));
        }
        self.transmits.push((from, BytesMut::from(&response[..])));
    }

    /// The local address datagrams to `to` must leave from: the one `to` last sent to,
    /// when the socket reports it (a wildcard bind); `None` lets the kernel choose.
    pub(super) fn local_ip_for(&self, to: SocketAddr) -> Option<IpAddr> {
        self.demux.local_for(to).or_else(|| {
            self.probe_sources_taken
                .iter()
                .find(|(addr, _)| *addr == to)
                .map(|(_, local)| *local)
        })
    }

    /// An ICE-TCP connection closed.
    pub(super) fn tcp_closed(&mut self, from: SocketAddr) {
        self.tcp_demux.unbind(from);
    }

    /// ICE-TCP connections whose peer is gone and which the I/O loop should close.
    pub(super) fn take_tcp_to_close(&mut self, out: &mut Vec<SocketAddr>) {
        out.append(&mut self.tcp_to_close);
    }

    /// Forgets addresses silent past the idle timeout.
    pub(super) fn evict_idle(&mut self, now: Instant) {
        self.demux.evict_idle(now);
        self.tcp_demux.evict_idle(now);
    }

    // ---------------------------------------------------------------- datagrams out

    /// Notes that a connection has output to send.
    pub(super) fn mark_dirty(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(&key)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Drains every dirty peer's outgoing UDP datagrams into `out` (ICE-TCP packets into
    /// `tcp_out`) and re-arms its timer.
    pub(super) fn take_transmits(
        &mut self,
        out: &mut Vec<(SocketAddr, BytesMut)>,
        tcp_out: &mut Vec<(SocketAddr, BytesMut)>,
    ) {
        // The previous batch has been sent; this one's probe answers need these.
        self.probe_sources_taken = std::mem::take(&mut self.probe_sources);
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            let Some(peer) = self.peers.get_mut(key) else {
                continue;
            };
            peer.dirty = false;
            // Whatever made the connection dirty (a description applied, an ICE restart)
            // may have moved its selected pair.
            peer.refresh_route();
            while let Some(Some(datagram)) = peer.pc.with(|pc| pc.poll_write()) {
                let out = match datagram.transport.transport_protocol {
                    TransportProtocol::TCP => &mut self.tcp_transmits,
                    _ => &mut self.transmits,
                };
                out.push((datagram.transport.peer_addr, datagram.message));
            }
            let deadline = peer.next_deadline();
            if deadline != peer.deadline {
                peer.deadline = deadline;
                if let Some(at) = deadline {
                    self.timers.push(Reverse((at, *key)));
                }
            }
        }
        // The list's allocation is kept for the next batch.
        self.dirty = dirty;
        self.dirty.clear();
        out.append(&mut self.transmits);
        tcp_out.append(&mut self.tcp_transmits);
    }

    // ---------------------------------------------------------------- time

    /// When the earliest connection timer is due.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Fires the next connection timer due by `now`, if any, and returns its peer (whose
    /// events and output the core then takes). Timers a later deadline superseded are
    /// skipped.
    pub(super) fn fire_next_timer(&mut self, now: Instant) -> Option<PeerKey> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                return None;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.deadline != Some(at) {
                continue;
            }
            peer.deadline = None;
            self.metrics.connection_timers.inc();
            // A publisher's timer may be its feedback's (sent when the core drives it).
            let connection_due = peer.uplink.is_none()
                || peer
                    .pc
                    .with(|pc| pc.poll_timeout())
                    .flatten()
                    .is_some_and(|at| at <= now);
            if connection_due && let Some(Err(err)) = peer.pc.with(|pc| pc.handle_timeout(now)) {
                tracing::debug!(peer = %key, %err, "timeout handling failed");
            }
            peer.refresh_route();
            return Some(key);
        }
        None
    }

    /// After a timer fired: a deadline that does not move forward would spin the loop,
    /// so it is pushed 1 ms on.
    pub(super) fn defer_stuck_timer(&mut self, key: PeerKey, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&key)
            && let Some(next) = peer.next_deadline()
            && next <= now
        {
            let later = now + Duration::from_millis(1);
            peer.deadline = Some(later);
            self.timers.push(Reverse((later, key)));
        }
    }

    // ---------------------------------------------------------------- publishers

    /// A packet of publisher `key` that its connection delivered (a stream's first
    /// packets, a retransmission unwrapped from RTX): the stream it belongs to, if the
    /// shard forwards it and it is not a second copy, with its arrival noted for the
    /// publisher's NACKs.
    pub(super) fn publisher_media(
        &mut self,
        key: PeerKey,
        header: &rtc::rtp::header::Header,
        now: Instant,
    ) -> Option<Incoming> {
        let peer = self.peers.get_mut(&key)?;
        let incoming = *peer.incoming.get(&header.ssrc)?;
        if incoming.video
            && let Some(uplink) = peer.uplink.as_mut()
        {
            let arrival = uplink.on_video(header.ssrc, header.sequence_number, now);
            arm_uplink(&mut self.timers, peer, key);
            match arrival {
                Arrival::Old => {
                    self.metrics.dropped(DropReason::Duplicate);
                    return None;
                }
                Arrival::Repair => {
                    self.metrics.publisher_packets_repaired.inc();
                }
                Arrival::New => {}
            }
        }
        Some(incoming)
    }

    /// Sends publisher `key` the feedback due at `now`, through its connection (which
    /// protects it as SRTCP).
    pub(super) fn send_uplink_feedback(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(uplink) = peer.uplink.as_mut() else {
            return;
        };
        if uplink.next_due() > now {
            return;
        }
        let mut compounds = Vec::new();
        let asked = uplink.due(now, &mut compounds);
        self.metrics.publisher_packets_asked.inc_by(asked as u64);
        if compounds.is_empty() {
            return;
        }
        let compounds = MovedIn::new(compounds);
        let written = peer.pc.with(move |pc| {
            let id = pc.get_receivers().next()?;
            let mut receiver = pc.rtp_receiver(id)?;
            let mut written = Ok(());
            for packets in compounds.take() {
                if let Err(err) = receiver.write_rtcp(now, packets) {
                    written = Err(err);
                }
            }
            Some(written)
        });
        if let Some(Some(Err(err))) = written {
            tracing::debug!(peer = %key, %err, "feedback to the publisher refused");
        }
        self.mark_dirty(key);
    }

    // ---------------------------------------------------------------- checks

    /// Addresses bound to peers (tests of what may bind).
    #[cfg(test)]
    pub(super) fn bound_addrs(&self) -> usize {
        self.demux.bound_addrs()
    }

    /// Whether every ICE ufrag routes to a live peer that holds it (see
    /// [`super::invariants`]).
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn check(&self) -> Result<(), String> {
        for (key, peer) in &self.peers {
            if !peer.ufrag.is_empty() && self.demux.peer_by_ufrag(&peer.ufrag) != Some(*key) {
                return Err(format!("peer {key}: its ufrag does not route to it"));
            }
        }
        let holding = self.peers.values().filter(|p| !p.ufrag.is_empty()).count();
        if self.demux.registered_ufrags() != holding {
            return Err(format!(
                "{} ufrags route, {holding} peers hold one",
                self.demux.registered_ufrags()
            ));
        }
        Ok(())
    }
}

/// Decrypts a publisher's RTP datagram with the shard's own context and notes it for the
/// publisher's feedback. Read whole when its stream is one the shard forwards; `None`
/// when it is not (yet), for the connection to read.
fn read_publisher_rtp(
    peer: &mut Peer,
    datagram: &[u8],
    scratch: &mut Vec<u8>,
    metrics: &ShardMetrics,
    now: Instant,
) -> Result<Option<(Incoming, rtc::rtp::Packet)>, DropReason> {
    let (Some(srtp), Some(uplink)) = (peer.srtp_in.as_mut(), peer.uplink.as_mut()) else {
        return Ok(None);
    };
    scratch.clear();
    scratch.extend_from_slice(datagram);
    let len = srtp
        .unprotect_rtp(scratch)
        .map_err(|_| DropReason::BadSrtp)?;
    let plain = scratch.get(..len).ok_or(DropReason::Garbage)?;
    let ssrc = plain.get(8..12).ok_or(DropReason::Garbage)?;
    let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
    let incoming = peer.incoming.get_mut(&ssrc);
    uplink.on_datagram(plain, now, incoming.as_ref().map(|i| i.clock_rate));
    let Some(incoming) = incoming else {
        return Ok(None);
    };
    let seq = u16::from_be_bytes([plain[2], plain[3]]);
    if connection_reads(&mut incoming.rtc_seen, seq) {
        // Forwarded when the connection delivers it, through the shard's `drive`.
        return Ok(None);
    }
    let incoming = *incoming;
    let mut packet =
        <rtc::rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut &plain[..])
            .map_err(|_| DropReason::Garbage)?;
    // The payload is copied out as a plain vector, whose first clone (the retransmission
    // buffer's, inside forwarding) would allocate its reference count; made shared here,
    // every clone only counts.
    packet.payload = bytes::Bytes::from_owner(Vec::from(std::mem::take(&mut packet.payload)));
    // A second copy of a packet of the stream's own SSRC fails the replay check above;
    // retransmissions in the stream's own SSRC only ever fill gaps.
    if incoming.video
        && uplink.on_video(ssrc, packet.header.sequence_number, now) == Arrival::Repair
    {
        metrics.publisher_packets_repaired.inc();
    }
    Ok(Some((incoming, packet)))
}

/// Whether the connection reads packet `seq` of a stream the shard otherwise reads itself:
/// one every [`super::RTC_SYNC_SEQS`] sequence numbers, `seen` being the last it read.
fn connection_reads(seen: &mut Option<u16>, seq: u16) -> bool {
    match *seen {
        Some(last) if (super::RTC_SYNC_SEQS..0x8000).contains(&seq.wrapping_sub(last)) => {
            *seen = Some(seq);
            true
        }
        Some(_) => false,
        None => {
            *seen = Some(seq);
            false
        }
    }
}

/// Moves a publisher's timer earlier when its feedback is due before it.
fn arm_uplink(timers: &mut BinaryHeap<Reverse<(Instant, PeerKey)>>, peer: &mut Peer, key: PeerKey) {
    let Some(due) = peer.uplink.as_ref().map(|u| u.next_due()) else {
        return;
    };
    if peer.deadline.is_none_or(|at| due < at) {
        peer.deadline = Some(due);
        timers.push(Reverse((due, key)));
    }
}

/// The id a publisher's connection negotiated for transport-wide sequence numbers.
fn transport_cc_id(pc: &mut rtc::peer_connection::RTCPeerConnection) -> Option<u8> {
    let receivers: Vec<_> = pc.get_receivers().collect();
    receivers.into_iter().find_map(|id| {
        crate::peer::extension_id(
            &pc.rtp_receiver(id)?
                .get_parameters()
                .rtp_parameters
                .header_extensions,
            rtc::sdp::extmap::TRANSPORT_CC_URI,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_reads_one_packet_in_8192_across_wraps_and_losses() {
        let mut seen = None;
        let mut read = Vec::new();
        // Three wraps of a stream, one packet in seven lost on the way.
        let mut seq = 60_000u16;
        for n in 0..200_000u32 {
            seq = seq.wrapping_add(1);
            if n % 7 == 3 {
                continue;
            }
            if connection_reads(&mut seen, seq) {
                read.push(n);
            }
        }
        // The gaps between the packets it read stay far inside the half of the sequence
        // space in which its own index estimate holds.
        let gaps: Vec<u32> = read.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(read.len() >= 20, "{} read", read.len());
        assert!(gaps.iter().all(|g| (8_192..8_200).contains(g)), "{gaps:?}");
        // A reordered older packet is the shard's, not the connection's.
        let before = seen;
        assert!(!connection_reads(&mut seen, seq.wrapping_sub(5)));
        assert_eq!(seen, before);
    }
}
