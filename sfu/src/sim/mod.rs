//! The shard core on a virtual clock, over an in-memory network.
//!
//! The core is sans-I/O: datagrams, commands and the passing of time go in, transmits and
//! session messages come out, and every entry point takes the current instant. [`Sim`]
//! drives one core with simulated participants ([`Client`]: `rtc` peer connections with
//! synthetic encoders) over a [`Net`] whose links delay and lose what they are told to,
//! jumping from one due event to the next. Seconds of a call take milliseconds, and the
//! media behaviour (keyframe requests, retransmissions, simulcast switching, speaker
//! detection) is tested exactly where a real socket test could only wait and hope.
//!
//! After every step the core's maps are checked against each other
//! ([`ShardCore::check_invariants`]): a change that leaves a session, connection or track
//! half-removed fails at the step that did it.
//!
//! What stays with the socket tests is what needs real I/O: the UDP port and its batching,
//! ICE-TCP, the async `webrtc` crate's and aiortc's interoperability, and browsers.

mod client;
pub mod net;
pub mod synth;

pub use client::{Client, ClientSpec, Received, VideoSpec, extmap_id, stream_id};
pub use net::{LinkParams, Loss, Net};

use crate::metrics::ShardMetrics;
use crate::shard::api::{Command, JoinError, JoinRequest, PipelineSpec};
use crate::shard::{CoreConfig, Env, ShardCore};
use crate::signal::protocol::{ClientMessage, ServerMessage};
use bytes::BytesMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Where the simulated shard listens.
pub const SHARD: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 3478);

/// The address of client `index`'s publisher connection (its subscriber's is the next
/// port).
pub fn client_addr(index: usize) -> SocketAddr {
    let host = u8::try_from(index % 250 + 2).unwrap_or(2);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, host)), 5000)
}

/// A shard core, its clients and the network between them, on a virtual clock.
pub struct Sim {
    start: Instant,
    now: Instant,
    core: ShardCore,
    /// The network; set links on it to delay or lose traffic.
    pub net: Net,
    clients: Vec<Client>,
    udp_out: Vec<(SocketAddr, BytesMut)>,
    tcp_out: Vec<(SocketAddr, BytesMut)>,
    certificate: rtc::peer_connection::certificate::RTCCertificate,
    /// Addresses no client owns whose datagrams the test reads itself (another shard's
    /// end of a relay pipe), with what arrived there.
    taps: Vec<(SocketAddr, Vec<BytesMut>)>,
}

impl Sim {
    /// A core with `config` (its advertised address is [`SHARD`]) that creates rooms on
    /// first join with `spec`, in a seeded world whose wall clock starts at 2023-11-14.
    pub fn new(config: CoreConfig, spec: PipelineSpec) -> Result<Self, String> {
        Self::with_env(config, spec, |start| {
            Env::seeded(1, start, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        })
    }

    /// The same, with the core's randomness, CPU meter and wall clock from `env` (given
    /// the virtual start instant).
    pub fn with_env(
        mut config: CoreConfig,
        spec: PipelineSpec,
        env: impl FnOnce(Instant) -> Env,
    ) -> Result<Self, String> {
        config.advertised = SHARD;
        config.auto_create = Some(spec);
        let start = Instant::now();
        let core = ShardCore::with_env(config, Arc::new(ShardMetrics::new()), start, env(start))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            start,
            now: start,
            core,
            net: Net::new(LinkParams::default(), 1),
            clients: Vec::new(),
            udp_out: Vec::new(),
            tcp_out: Vec::new(),
            certificate: client::client_certificate()?,
            taps: Vec::new(),
        })
    }

    /// A core with the default configuration and rooms.
    pub fn with_defaults() -> Result<Self, String> {
        Self::new(CoreConfig::new(SHARD), PipelineSpec::default())
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The core's metrics.
    pub fn metrics(&self) -> &ShardMetrics {
        self.core.metrics()
    }

    /// The core, to send it commands or read its state.
    pub fn core(&mut self) -> &mut ShardCore {
        &mut self.core
    }

    /// A client.
    pub fn client(&self, index: usize) -> &Client {
        &self.clients[index]
    }

    /// A client, to act on.
    pub fn client_mut(&mut self, index: usize) -> &mut Client {
        &mut self.clients[index]
    }

    /// Sends a command and returns its reply.
    pub fn ask<T>(&mut self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, mut rx) = oneshot::channel();
        self.core.handle_command(self.now, make(reply));
        rx.try_recv().ok()
    }

    /// Joins `room` as participant `id`, publishing and receiving what `spec` says; returns
    /// the client's index.
    pub fn join(&mut self, room: &str, id: &str, spec: ClientSpec) -> Result<usize, JoinError> {
        let (session, events_rx) = self.join_raw(JoinRequest {
            room: room.into(),
            participant: id.into(),
            name: id.into(),
            publish: spec.audio.is_some() || spec.video.is_some(),
            subscribe: spec.subscribe || spec.offers.is_some(),
            relay: false,
            pipe: None,
            recorder: false,
            offer_subscriber: spec.offers.is_some(),
        })?;
        let index = self.clients.len();
        let (client, offer) = Client::new(
            index,
            id,
            session,
            events_rx,
            &spec,
            client_addr(index),
            self.now,
            &self.certificate,
        )
        .map_err(|e| JoinError::new(crate::signal::protocol::ErrorCode::Internal, e))?;
        self.clients.push(client);
        if let Some(offer) = offer {
            self.signal(index, offer);
        }
        Ok(index)
    }

    /// Joins with `request` as it is, for a session the test plays itself; returns the
    /// session and its messages.
    pub fn join_raw(
        &mut self,
        request: JoinRequest,
    ) -> Result<(crate::shard::api::SessionId, mpsc::Receiver<ServerMessage>), JoinError> {
        let (events, events_rx) = mpsc::channel(1024);
        let session = self
            .ask(|reply| Command::Join {
                request,
                events,
                reply,
            })
            .unwrap_or_else(|| {
                Err(JoinError::new(
                    crate::signal::protocol::ErrorCode::Internal,
                    "no reply",
                ))
            })?;
        self.check();
        Ok((session, events_rx))
    }

    /// Keeps what the shard sends to `addr` for [`Self::tapped`].
    pub fn tap(&mut self, addr: SocketAddr) {
        self.taps.push((addr, Vec::new()));
    }

    /// What arrived at a tapped address since the last look.
    pub fn tapped(&mut self, addr: SocketAddr) -> Vec<BytesMut> {
        self.taps
            .iter_mut()
            .find(|(a, _)| *a == addr)
            .map(|(_, got)| std::mem::take(got))
            .unwrap_or_default()
    }

    /// Sends a datagram from `from` to the shard over the network.
    pub fn send_to_shard(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.net.send(self.now, from, SHARD, BytesMut::from(bytes));
    }

    /// Sends a signaling message of client `index` to the core.
    pub fn signal(&mut self, index: usize, message: ClientMessage) {
        let session = self.clients[index].session;
        self.core
            .handle_command(self.now, Command::Signal { session, message });
        self.check();
    }

    /// Client `index` leaves.
    pub fn leave(&mut self, index: usize) {
        let session = self.clients[index].session;
        self.core
            .handle_command(self.now, Command::Leave { session });
        self.check();
    }

    /// Advances to the next event (a datagram arriving, a timer, a frame to encode), or by
    /// at most `limit`, and handles everything due then.
    fn step(&mut self, limit: Instant) {
        let mut next = self.core.poll_timeout().min(limit);
        if let Some(due) = self.net.next_due() {
            next = next.min(due);
        }
        for client in &mut self.clients {
            if let Some(due) = client.next_deadline() {
                next = next.min(due);
            }
        }
        self.now = next.max(self.now);
        let now = self.now;
        for datagram in self.net.pop_due(now) {
            if datagram.to == SHARD {
                self.core
                    .handle_datagram(now, datagram.from, Some(SHARD.ip()), &datagram.bytes);
            } else if let Some(client) = self
                .clients
                .iter_mut()
                .find(|c| c.addresses().contains(&datagram.to))
            {
                client.deliver(now, datagram.from, datagram.to, datagram.bytes);
            } else if let Some((_, got)) = self.taps.iter_mut().find(|(a, _)| *a == datagram.to) {
                got.push(datagram.bytes);
            }
        }
        self.core.handle_timeout(now);
        for index in 0..self.clients.len() {
            let replies = self.clients[index].take_messages(now);
            for reply in replies {
                self.signal(index, reply);
            }
            self.clients[index].step(now, &mut self.net);
        }
        self.core.handle_timeout(now);
        self.core
            .take_transmits(&mut self.udp_out, &mut self.tcp_out);
        for (to, bytes) in &self.udp_out {
            // The network holds a copy, and the core gets its buffer back as it does from
            // the socket loop.
            self.net.send(now, SHARD, *to, BytesMut::from(&bytes[..]));
        }
        self.core
            .recycle(self.udp_out.drain(..).map(|(_, bytes)| bytes));
        self.tcp_out.clear();
        self.check();
    }

    /// Fails the test at the step that broke the core's maps.
    fn check(&self) {
        if let Err(broken) = self.core.check_invariants() {
            panic!("after {:?} of virtual time: {broken}", self.elapsed());
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.step(until);
        }
    }

    /// Runs until `done` holds, for at most `limit` of virtual time; returns how long it
    /// took, or says what did not happen.
    pub fn run_until(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Result<Duration, String> {
        let started = self.now;
        let until = started + limit;
        loop {
            if done(self) {
                return Ok(self.now - started);
            }
            if self.now >= until {
                return Err(format!("{what}: not within {limit:?} of virtual time"));
            }
            self.step(until);
        }
    }

    /// Runs until every connection the clients have is up.
    pub fn connect_all(&mut self) -> Result<Duration, String> {
        self.run_until(Duration::from_secs(10), "every client connected", |sim| {
            sim.clients.iter().all(|c| {
                (!c.has_publisher() || c.publisher_connected())
                    && (!c.has_subscriber() || c.subscriber_connected())
            })
        })
    }
}

#[cfg(test)]
mod tests;
