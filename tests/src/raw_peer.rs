//! A subscriber whose UDP socket the test owns: built on the sans-I/O `rtc` core, so that
//! after it has authenticated (ICE, DTLS) it can also send arbitrary bytes from its own,
//! bound address. That is how a buggy or hostile participant's junk reaches the shard's
//! peer connection rather than being dropped at the port's demultiplexer.

use crate::signal_client::SignalClient;
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tutti_sfu::signal::protocol::{ClientMessage, PeerTarget, ServerMessage};

/// A running raw subscriber.
pub struct RawSubscriber {
    /// Connection state of its subscriber connection.
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// RTP packets it decrypted.
    pub rtp_received: Arc<AtomicU64>,
    /// Synthetic `(stream, index)` of every packet it decrypted.
    pub received: Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
    /// SRTP packets it threw away on arrival to simulate loss.
    pub discarded: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
    junk: mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawSubscriber {
    /// Joins `room` as a subscriber.
    pub async fn join(url: &str, token: &str, room: &str, id: &str) -> Result<Self> {
        Self::join_lossy(url, token, room, id, LossModel::None).await
    }

    /// Joins `room` as a subscriber whose network loses media packets before they are
    /// decrypted, as `loss` says.
    pub async fn join_lossy(
        url: &str,
        token: &str,
        room: &str,
        id: &str,
        loss: LossModel,
    ) -> Result<Self> {
        let signal =
            SignalClient::join_subscriber(url, token, room, id, Duration::from_secs(10)).await?;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (junk, junk_rx) = mpsc::unbounded_channel();
        let rtp_received = Arc::new(AtomicU64::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let discarded = Arc::new(AtomicU64::new(0));
        let loss = Loss {
            model: loss,
            seen: 0,
            discarded: discarded.clone(),
        };
        let changed = Arc::new(tokio::sync::Notify::new());
        let sink = Sink {
            count: rtp_received.clone(),
            log: received.clone(),
            changed: changed.clone(),
        };
        let task = tokio::spawn(async move {
            if let Err(err) = run(signal, socket, state_tx, junk_rx, sink, loss).await {
                tracing::warn!(%err, "raw subscriber stopped");
            }
        });
        Ok(Self {
            state,
            rtp_received,
            received,
            discarded,
            changed,
            junk,
            task,
        })
    }

    /// Sends bytes from the subscriber's own socket to the shard's media address.
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.junk.send(bytes);
    }

    /// Waits until `predicate` holds over what was received and discarded.
    pub async fn wait_for<F>(&self, timeout: Duration, what: &str, mut predicate: F) -> Result<()>
    where
        F: FnMut(&[(u32, u32)], u64) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let log = self
                    .received
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log poisoned"))?;
                if predicate(&log, self.discarded.load(Ordering::SeqCst)) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("raw subscriber: timed out waiting for {what}");
            }
        }
    }

    /// Waits for the connection to be established.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(
            timeout,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .context("raw subscriber did not connect")??;
        Ok(())
    }
}

impl Drop for RawSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which arriving media packets a raw subscriber's simulated network loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossModel {
    /// None.
    None,
    /// Every nth packet; a retransmission of it gets through.
    EveryNth(u64),
    /// Every packet (retransmissions included) whose sequence number is a multiple of this:
    /// losses no repair can fix.
    Sequence(u16),
}

struct Loss {
    model: LossModel,
    seen: u64,
    discarded: Arc<AtomicU64>,
}

impl Loss {
    /// Whether to discard this arriving datagram.
    fn discard(&mut self, datagram: &[u8]) -> bool {
        // Only SRTP media (not RTCP, DTLS or STUN); its header travels in the clear.
        let rtp = datagram.len() > 12
            && (128..=191).contains(&datagram[0])
            && !(192..=223).contains(&datagram[1]);
        if !rtp {
            return false;
        }
        self.seen += 1;
        let lose = match self.model {
            LossModel::None => false,
            LossModel::EveryNth(nth) => self.seen.is_multiple_of(nth.max(1)),
            LossModel::Sequence(modulo) => {
                u16::from_be_bytes([datagram[2], datagram[3]]).is_multiple_of(modulo.max(1))
            }
        };
        if lose {
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
        lose
    }
}

struct Sink {
    count: Arc<AtomicU64>,
    log: Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
    changed: Arc<tokio::sync::Notify>,
}

fn build(local: SocketAddr) -> Result<RTCPeerConnection> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = register_default_interceptors(Default::default(), &mut media_engine)?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())?;
    pc.add_local_candidate(tutti_sfu::peer::host_candidate(local)?)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    Ok(pc)
}

async fn run(
    mut signal: SignalClient,
    socket: UdpSocket,
    state: watch::Sender<RTCPeerConnectionState>,
    mut junk: mpsc::UnboundedReceiver<Vec<u8>>,
    sink: Sink,
    mut loss: Loss,
) -> Result<()> {
    let local = socket.local_addr()?;
    let mut pc: Option<RTCPeerConnection> = None;
    let mut shard: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 2048];
    loop {
        if let Some(pc) = pc.as_mut() {
            while let Some(out) = pc.poll_write() {
                shard = Some(out.transport.peer_addr);
                socket
                    .send_to(&out.message, out.transport.peer_addr)
                    .await?;
            }
            while let Some(event) = pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = event {
                    let _ = state.send(s);
                }
            }
            while let Some(message) = pc.poll_read() {
                if let RTCMessage::RtpPacket(_, packet) = message.message {
                    sink.count.fetch_add(1, Ordering::Relaxed);
                    // Only the trailer matters here (which packet it is), not the filler.
                    if let Some(probe) = crate::synth::probe(&packet.payload, 0)
                        && let Ok(mut log) = sink.log.lock()
                    {
                        log.push((probe.stream, probe.index));
                    }
                    sink.changed.notify_waiters();
                }
            }
        }
        let deadline = pc
            .as_mut()
            .and_then(|pc| pc.poll_timeout())
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            message = signal.rx.recv() => {
                let Some(message) = message else { return Ok(()) };
                if let ServerMessage::Offer { sdp, .. } = message {
                    if pc.is_none() {
                        pc = Some(build(local)?);
                    }
                    if let Some(pc) = pc.as_mut() {
                        pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(sdp)?)?;
                        let answer = pc.create_answer(None)?;
                        pc.set_local_description(Instant::now(), answer.clone())?;
                        signal.send(ClientMessage::Answer { pc: PeerTarget::Subscriber, sdp: answer.sdp });
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let (n, from) = received?;
                shard = Some(from);
                if loss.discard(&buf[..n]) {
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
                }
            }
            bytes = junk.recv() => {
                if let (Some(bytes), Some(shard)) = (bytes, shard) {
                    socket.send_to(&bytes, shard).await?;
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                if let Some(pc) = pc.as_mut() {
                    let _ = pc.handle_timeout(Instant::now());
                }
            }
        }
    }
}
