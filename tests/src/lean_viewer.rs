//! A viewer light enough that a thousand fit on this machine beside the shards: ICE, DTLS
//! and RTCP go through the sans-I/O `rtc` core as for any peer, but once DTLS has agreed
//! on keys, media packets bypass it. Each is verified and decrypted in place by Tutti's
//! own SRTP receiver and read only for its synthetic trailer (which packet, when sent).
//! Nothing is decoded, and the viewer never asks for a retransmission: what the shard
//! does not deliver counts as lost. It negotiates what an rtc peer with the default
//! interceptors negotiates, and sends what such a peer sends about its media:
//! transport-cc feedback every 100 ms and a receiver report every second
//! ([`crate::receiver_feedback`]), so the shard's per-viewer congestion work is done for
//! it as for any real viewer.
//!
//! Latency is taken twice: when the kernel queued the datagram on the viewer's socket
//! (`SO_TIMESTAMPNS`), which is what the shards did to it, and when the viewer read it,
//! which adds the load generator's own queueing behind a thousand other viewers on the
//! same two cores.

use crate::receiver_feedback::{self, ReceiverFeedback};
use crate::signal_client::SignalClient;
use crate::synth::{self, Epoch};
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tutti_sfu::signal::protocol::{ClientMessage, PeerTarget, ServerMessage};
use tutti_sfu::srtp::{Profile, SrtpReceiver, rtp_header_len};

/// What a lean viewer has received.
#[derive(Debug, Default)]
pub struct Reception {
    /// Per synthetic stream id (see [`crate::participant::stream_id`]).
    pub streams: HashMap<u32, StreamReception>,
    /// Every media packet, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Media packets that failed SRTP authentication or replay checks.
    pub rejected: u64,
    /// Media packets that arrived before DTLS had produced keys.
    pub before_keys: u64,
}

/// One media packet's times, in nanoseconds of the presenter's [`Epoch`].
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When the presenter sent it.
    pub sent_ns: u64,
    /// From then until the kernel queued it on the viewer's socket.
    pub socket_latency_ns: u64,
    /// From then until the viewer read it.
    pub read_latency_ns: u64,
}

/// One stream as a lean viewer receives it.
#[derive(Debug, Clone, Copy)]
pub struct StreamReception {
    /// The SSRC the shard sends it to this viewer with.
    pub ssrc: u32,
    /// When its first packet arrived.
    pub first_at: Instant,
    /// Packets received.
    pub packets: u64,
}

/// A running lean viewer.
pub struct LeanViewer {
    /// When it started joining.
    pub started: Instant,
    reception: Arc<Mutex<Reception>>,
    changed: Arc<Notify>,
    keyframes: mpsc::UnboundedSender<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl LeanViewer {
    /// Joins `room` at the shard behind `url` as a subscriber named `id`; latencies are
    /// measured against `epoch`, the presenter's clock.
    pub async fn join(url: &str, token: &str, room: &str, id: &str, epoch: Epoch) -> Result<Self> {
        let started = Instant::now();
        let signal =
            SignalClient::join_subscriber(url, token, room, id, Duration::from_secs(30)).await?;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let clock = SocketClock::enable(&socket, epoch)?;
        let reception = Arc::new(Mutex::new(Reception::default()));
        let changed = Arc::new(Notify::new());
        let (keyframes, keyframe_rx) = mpsc::unbounded_channel();
        let io = ViewerIo {
            signal,
            socket,
            keyframes: keyframe_rx,
            reception: reception.clone(),
            changed: changed.clone(),
            epoch,
            clock,
        };
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            if let Err(err) = io.run().await {
                tracing::warn!(viewer = %id, %err, "lean viewer stopped");
            }
        });
        Ok(Self {
            started,
            reception,
            changed,
            keyframes,
            task,
        })
    }

    /// Runs `read` over what was received so far.
    pub fn with_reception<T>(&self, read: impl FnOnce(&Reception) -> T) -> Result<T> {
        let reception = self
            .reception
            .lock()
            .map_err(|_| anyhow::anyhow!("reception poisoned"))?;
        Ok(read(&reception))
    }

    /// Media packets received so far.
    pub fn packets(&self) -> Result<usize> {
        self.with_reception(|r| r.arrivals.len())
    }

    /// Waits until `predicate` holds over what was received, for at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut predicate: impl FnMut(&Reception) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.with_reception(&mut predicate)? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("lean viewer: timed out waiting for {what}");
            }
        }
    }

    /// Asks the shard for a key frame of synthetic stream `stream` (a picture loss
    /// indication for the SSRC it arrives with). False if that stream has not arrived.
    pub fn request_keyframe(&self, stream: u32) -> Result<bool> {
        if !self.with_reception(|r| r.streams.contains_key(&stream))? {
            return Ok(false);
        }
        Ok(self.keyframes.send(stream).is_ok())
    }

    /// Stops the viewer; the shard sees its signaling socket close.
    pub fn leave(self) {
        self.task.abort();
    }
}

impl Drop for LeanViewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ViewerIo {
    signal: SignalClient,
    socket: UdpSocket,
    keyframes: mpsc::UnboundedReceiver<u32>,
    reception: Arc<Mutex<Reception>>,
    changed: Arc<Notify>,
    epoch: Epoch,
    clock: SocketClock,
}

/// Kernel receive times of a socket's datagrams, on a presenter's [`Epoch`].
#[derive(Debug, Clone, Copy)]
pub struct SocketClock {
    /// The wall clock (which socket timestamps use) at the epoch.
    realtime_at_epoch_ns: u128,
}

impl SocketClock {
    /// Asks the kernel to stamp every datagram `socket` receives (`SO_TIMESTAMPNS`).
    pub fn enable(socket: &UdpSocket, epoch: Epoch) -> Result<Self> {
        setsockopt(socket, sockopt::ReceiveTimestampns, &true)
            .context("SO_TIMESTAMPNS on a subscriber's socket")?;
        // The two clocks are read between two readings of the epoch, and the closest pair
        // of a few tries is kept: a thread preempted between them (a thousand viewers
        // joining on two cores) would otherwise skew every latency of this socket.
        let mut best: Option<(u64, u128)> = None;
        for _ in 0..8 {
            let before = epoch.now_ns();
            let realtime = realtime_ns();
            let after = epoch.now_ns();
            let spread = after.saturating_sub(before);
            let offset = realtime.saturating_sub(u128::from(before + spread / 2));
            if best.is_none_or(|(best_spread, _)| spread < best_spread) {
                best = Some((spread, offset));
            }
            if spread < 20_000 {
                break;
            }
        }
        Ok(Self {
            realtime_at_epoch_ns: best.map_or(0, |(_, offset)| offset),
        })
    }

    /// Room for the control message that carries the stamp.
    pub fn control_buffer() -> Vec<u8> {
        nix::cmsg_space!(TimeSpec)
    }

    /// A kernel stamp as nanoseconds of the epoch.
    pub fn queued_ns(&self, at: Option<u128>) -> Option<u64> {
        at.map(|at| u64::try_from(at.saturating_sub(self.realtime_at_epoch_ns)).unwrap_or(u64::MAX))
    }
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One datagram read with `recvmsg`: its length, source and kernel receive time (wall
/// clock, ns), if the kernel gave one. `control` needs [`SocketClock::control_buffer`]'s
/// room.
pub fn recv_timestamped(
    fd: RawFd,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<u128>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(control), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let from = message
        .address
        .and_then(|a| a.as_sockaddr_in().map(|v4| SocketAddr::V4((*v4).into())))
        .ok_or_else(|| std::io::Error::other("datagram without an IPv4 source"))?;
    let mut at = None;
    for cmsg in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
            at = Some(ts.tv_sec() as u128 * 1_000_000_000 + ts.tv_nsec() as u128);
        }
    }
    Ok((message.bytes, from, at))
}

fn build(local: SocketAddr) -> Result<RTCPeerConnection> {
    let mut media_engine =
        rtc::peer_connection::configuration::media_engine::MediaEngine::default();
    media_engine.register_default_codecs()?;
    // The answer offers what a peer with rtc's default interceptors offers (transport-cc,
    // NACK, reports), but the interceptors themselves are dropped: media never passes
    // through rtc, so the viewer's own [`ReceiverFeedback`] sends what they would.
    drop(
        rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors(
            rtc::interceptor::Registry::new(),
            &mut media_engine,
        )?,
    );
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .build(Instant::now())?;
    pc.add_local_candidate(tutti_sfu::peer::host_candidate(local)?)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc)
}

/// Whether a datagram is SRTP media (RFC 7983's RTP range, not an RTCP packet type).
fn is_media(datagram: &[u8]) -> bool {
    datagram.len() >= 12
        && (128..=191).contains(&datagram[0])
        && !(192..=223).contains(&datagram[1])
}

impl ViewerIo {
    async fn run(mut self) -> Result<()> {
        let local = self.socket.local_addr()?;
        let mut pc: Option<RTCPeerConnection> = None;
        let mut srtp: Option<SrtpReceiver> = None;
        let mut shard: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 2048];
        let mut control = SocketClock::control_buffer();
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far().into());
        tokio::pin!(timer);
        let mut rtc_dirty = false;
        let mut feedback: Option<ReceiverFeedback> = None;
        let (mut transport_cc_tick, mut report_tick) = receiver_feedback::feedback_intervals();
        loop {
            if rtc_dirty && let Some(pc) = pc.as_mut() {
                rtc_dirty = false;
                while let Some(out) = pc.poll_write() {
                    self.socket
                        .send_to(&out.message, out.transport.peer_addr)
                        .await?;
                }
                while let Some(event) = pc.poll_event() {
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Connected,
                    ) = event
                        && srtp.is_none()
                    {
                        srtp = receiver(pc);
                        if srtp.is_none() {
                            bail!("connected without usable SRTP keys");
                        }
                    }
                }
                // rtc hands up nothing a lean viewer uses (media never passes through it).
                while pc.poll_read().is_some() {}
                let deadline = pc.poll_timeout().unwrap_or_else(far);
                timer.as_mut().reset(deadline.into());
            }
            tokio::select! {
                readable = self.socket.readable() => {
                    readable?;
                    let fd = self.socket.as_raw_fd();
                    let received = self.socket.try_io(Interest::READABLE, || {
                        recv_timestamped(fd, &mut buf, &mut control)
                    });
                    let (n, from, at) = match received {
                        Ok(received) => received,
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Err(err.into()),
                    };
                    shard = Some(from);
                    if is_media(&buf[..n]) {
                        self.media(srtp.as_mut(), feedback.as_mut(), &mut buf[..n], at);
                        continue;
                    }
                    if let Some(pc) = pc.as_mut() {
                        let _ = pc.handle_read(TaggedBytesMut {
                            now: Instant::now(),
                            transport: TransportContext {
                                local_addr: local,
                                peer_addr: from,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(&buf[..n]),
                        });
                        rtc_dirty = true;
                    }
                }
                () = &mut timer => {
                    match pc.as_mut() {
                        Some(pc) => {
                            let _ = pc.handle_timeout(Instant::now());
                            rtc_dirty = true;
                        }
                        None => timer.as_mut().reset(far().into()),
                    }
                }
                message = self.signal.rx.recv() => {
                    let Some(message) = message else { return Ok(()) };
                    if let ServerMessage::Offer { sdp, .. } = message {
                        let pc = match pc.as_mut() {
                            Some(pc) => pc,
                            None => pc.insert(build(local)?),
                        };
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(sdp)?)?;
                        let answer = pc.create_answer(None)?;
                        pc.set_local_description(Instant::now(), answer.clone())?;
                        let transport_cc = tutti_sfu::sim::extmap_id(&answer.sdp, rtc::sdp::extmap::TRANSPORT_CC_URI);
                        feedback.get_or_insert_with(|| ReceiverFeedback::new(rand::random(), transport_cc));
                        self.signal.send(ClientMessage::Answer { pc: PeerTarget::Subscriber, sdp: answer.sdp });
                        rtc_dirty = true;
                    }
                }
                _ = transport_cc_tick.tick() => {
                    let (Some(pc), Some(feedback), Some(_)) = (pc.as_mut(), feedback.as_mut(), srtp.as_ref()) else { continue };
                    let media_ssrc = self.reception.lock().ok().and_then(|r| r.streams.values().map(|s| s.ssrc).min()).unwrap_or(0);
                    // Each on its own: together they could outgrow a datagram.
                    for packet in feedback.transport_cc(media_ssrc) {
                        rtc_dirty |= write_rtcp(pc, Box::new(packet));
                    }
                }
                _ = report_tick.tick() => {
                    let (Some(pc), Some(feedback), Some(_)) = (pc.as_mut(), feedback.as_mut(), srtp.as_ref()) else { continue };
                    let now_us = i64::try_from(self.epoch.now_ns() / 1000).unwrap_or(i64::MAX);
                    if let Some(report) = feedback.receiver_report(now_us) {
                        rtc_dirty |= write_rtcp(pc, Box::new(report));
                    }
                }
                stream = self.keyframes.recv() => {
                    let (Some(stream), Some(pc), Some(_)) = (stream, pc.as_mut(), shard) else { continue };
                    let ssrc = self.reception.lock().ok().and_then(|r| r.streams.get(&stream).map(|s| s.ssrc));
                    let receiver = pc.get_receivers().next();
                    if let (Some(ssrc), Some(id)) = (ssrc, receiver)
                        && let Some(mut receiver) = pc.rtp_receiver(id)
                    {
                        let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: ssrc };
                        receiver.write_rtcp(Instant::now(), vec![Box::new(pli)]).context("PLI")?;
                        rtc_dirty = true;
                    }
                }
            }
        }
    }

    /// A media datagram: verified, decrypted in place, noted for feedback and read for its
    /// trailer.
    fn media(
        &self,
        srtp: Option<&mut SrtpReceiver>,
        feedback: Option<&mut ReceiverFeedback>,
        packet: &mut [u8],
        at: Option<u128>,
    ) {
        let Ok(mut reception) = self.reception.lock() else {
            return;
        };
        let Some(srtp) = srtp else {
            reception.before_keys += 1;
            return;
        };
        let Ok(len) = srtp.unprotect_rtp(packet) else {
            reception.rejected += 1;
            return;
        };
        let plain = &packet[..len];
        let Some(header_len) = rtp_header_len(plain) else {
            reception.rejected += 1;
            return;
        };
        let read_ns = self.epoch.now_ns();
        let queued_ns = self.clock.queued_ns(at).unwrap_or(read_ns);
        if let Some(feedback) = feedback {
            feedback.on_rtp(
                plain,
                i64::try_from(queued_ns / 1000).unwrap_or(i64::MAX),
                None,
            );
        }
        // The trailer alone: checking every filler byte would cost more than the SRTP.
        let payload = &plain[header_len..];
        let Some(probe) = synth::probe(payload, payload.len().saturating_sub(synth::TRAILER_LEN))
        else {
            return;
        };
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let stream = reception
            .streams
            .entry(probe.stream)
            .or_insert(StreamReception {
                ssrc,
                first_at: Instant::now(),
                packets: 0,
            });
        stream.packets += 1;
        let first = stream.packets == 1;
        reception.arrivals.push(Arrival {
            sent_ns: probe.sent_ns,
            socket_latency_ns: queued_ns.saturating_sub(probe.sent_ns),
            read_latency_ns: read_ns.saturating_sub(probe.sent_ns),
        });
        drop(reception);
        if first {
            self.changed.notify_waiters();
        }
    }
}

/// Sends `packet` over the connection's RTCP (through its first receiver: rtc sends a
/// receiver's RTCP the same way whichever receiver it names); whether it was queued. A
/// failure is logged and the viewer carries on, as a browser would.
fn write_rtcp(pc: &mut RTCPeerConnection, packet: Box<dyn rtc::rtcp::Packet>) -> bool {
    let Some(id) = pc.get_receivers().next() else {
        return false;
    };
    let Some(mut receiver) = pc.rtp_receiver(id) else {
        return false;
    };
    match receiver.write_rtcp(Instant::now(), vec![packet]) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(%err, "lean viewer: feedback not sent");
            false
        }
    }
}

/// The receiving side of the connection's SRTP, from the keys DTLS agreed.
fn receiver(pc: &RTCPeerConnection) -> Option<SrtpReceiver> {
    let (profile, keys) = pc.srtp_session_keys()?;
    let profile = Profile::from_rtc(profile)?;
    SrtpReceiver::new(profile, &keys.remote_master_key, &keys.remote_master_salt).ok()
}
