//! One client's session: admission, then relaying between the client and the shard that
//! holds its room.
//!
//! The loop is generic over the client's frame stream and sink, and reaches shards through
//! a [`ShardConnector`], so its rules are tested without sockets. Every client frame is
//! bounded and validated before anything acts on it; a bad one gets an `error` and the
//! session goes on. A session that floods is rate-limited, then closed; one that keeps
//! guessing passwords or tokens is closed after a few tries.
//!
//! A session outlives its room: after `left` or `reconnect` the client may `join` again on
//! the same socket, which is how it follows a room that moved to another shard.

use crate::admission::{
    Admitted, PasswordCheck, PasswordChecker, RESUME_TTL_SECS, Refusal, ResumeClaims, TokenKeys,
    admit_with_password, admit_with_token,
};
use crate::metrics::GatewayMetrics;
use crate::password_queue::Priority;
use crate::protocol::{ErrorCode, Inbound, JoinRequest, Joined, Outbound, decode_client, encode};
use crate::rooms::RoomDirectory;
use crate::routing::{Placement, RoomRouter, RouteError};
use crate::shard_link::{ShardConnector, ShardLink};
use crate::turn::IceConfig;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tutti_service::ratelimit::TokenBucket;
use tutti_shard_api::protocol::{
    self as shard, ErrorCode as ShardCode, ServerMessage, decode_server, encode_client,
};
use tutti_store::AudioSettings;
use tutti_store::{LiveView, RoomRecord, RouteChange};

/// Messages per second a client may send on average, and its burst.
const RATE: (u32, u32) = (50, 200);
/// Rate-limited frames after which the socket is closed...
const MAX_STRIKES: u32 = 500;
/// ...counted since the last quiet spell this long: an honest client's bursts hours
/// apart never add up to a disconnection.
const STRIKES_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);
/// How long a socket may stay open without being in a room.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shard may take to answer a join.
const SHARD_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused passwords or tokens after which the socket is closed.
const MAX_FAILED_JOINS: u32 = 5;
/// Interval of WebSocket pings to the client.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Silence from the client after which its socket is considered dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(65);

/// A frame from the client.
#[derive(Debug)]
pub enum ClientFrame {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// An answer to our ping.
    Pong,
    /// The client closed the socket.
    Close,
}

/// A frame to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// A text frame.
    Text(String),
    /// A keepalive ping.
    Ping,
}

/// What every session of a gateway shares.
pub struct Gateway {
    /// Room settings.
    pub rooms: RoomDirectory,
    /// Where rooms live.
    pub router: Arc<dyn RoomRouter>,
    /// Links to shards.
    pub connector: Arc<dyn ShardConnector>,
    /// Join token keys; `None` refuses tokens.
    pub tokens: Option<TokenKeys>,
    /// Keys of resume tokens, shared by every gateway of a cluster.
    pub sessions: TokenKeys,
    /// The live state (route changes).
    pub view: Arc<dyn LiveView>,
    /// Bounded argon2 checks.
    pub passwords: PasswordChecker,
    /// ICE servers for clients.
    pub ice: IceConfig,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// Cancelled when the gateway stops: sessions tell their clients to reconnect.
    pub shutdown: CancellationToken,
    /// The region this gateway serves.
    pub region: Option<String>,
    /// Wrong passwords per client address.
    pub guesses: std::sync::Mutex<crate::guesses::GuessLimiter>,
    /// Rooms created on first join per client address.
    pub creations: std::sync::Mutex<crate::guesses::WindowLimiter>,
    /// Whether a client's address is the last one of `X-Forwarded-For` (behind a proxy
    /// of ours) rather than the socket's peer.
    pub trust_forwarded_for: bool,
    /// Where `/metrics` is served, when not on the main port.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Client WebSockets open, in all and per address.
    pub sockets: crate::sockets::SocketCounter,
    /// Sessions given TURN credentials per client address.
    pub turn_grants: std::sync::Mutex<crate::guesses::WindowLimiter>,
    /// What client sockets may hold of unfinished messages, together.
    pub read_budget: Arc<crate::read_budget::ReadBudget>,
}

/// What every gateway is configured with, in either mode.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The HTTP address.
    pub listen: std::net::SocketAddr,
    /// Declared rooms and the template of rooms created on first join.
    pub rooms: crate::config::LocalRooms,
    /// Join token signing secret.
    pub jwt_secret: Option<String>,
    /// Resume token secret, shared by every gateway of a cluster; `None` generates one,
    /// so that only this gateway can resume its sessions.
    pub session_secret: Option<String>,
    /// ICE servers for clients.
    pub ice: IceConfig,
    /// The region this gateway serves: viewers are seated on edges in it first.
    pub region: Option<String>,
    /// Take a client's address from the last entry of `X-Forwarded-For`, which the
    /// gateway's own proxy (the ingress) appends; only safe behind one.
    pub trust_forwarded_for: bool,
    /// Rooms one client address may create on first join per 10 minutes (0: no limit).
    pub rooms_per_client: u32,
    /// Where `/metrics` is served instead of the main port, when set.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Client WebSockets held at once, in all and per address.
    pub sockets: crate::sockets::SocketLimits,
    /// Sessions of one client address given TURN credentials per 10 minutes (0: no limit).
    pub turn_grants_per_client: u32,
}

/// The mode-specific parts of a gateway.
pub struct GatewayParts {
    /// The live state.
    pub view: Arc<dyn LiveView>,
    /// Where rooms live.
    pub router: Arc<dyn RoomRouter>,
    /// Links to shards.
    pub connector: Arc<dyn ShardConnector>,
    /// Room occupancy for the list.
    pub occupancy: crate::rooms::OccupancyMap,
    /// Metrics.
    pub metrics: Arc<GatewayMetrics>,
}

impl Gateway {
    /// Assembles a gateway from its parts and options.
    pub fn build(
        parts: GatewayParts,
        options: &GatewayOptions,
    ) -> Result<Arc<Self>, crate::admission::TokenError> {
        let tokens = options
            .jwt_secret
            .as_deref()
            .map(|secret| TokenKeys::new(secret.as_bytes()))
            .transpose()?;
        let session_secret = options
            .session_secret
            .clone()
            .unwrap_or_else(|| tutti_service::token::random_token(43));
        Ok(Arc::new(Self {
            rooms: RoomDirectory::new(
                parts.view.clone(),
                options.rooms.auto_create.clone(),
                parts.occupancy,
            ),
            router: parts.router,
            connector: parts.connector,
            tokens,
            sessions: TokenKeys::new(session_secret.as_bytes())?,
            view: parts.view,
            passwords: PasswordChecker::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            ice: options.ice.clone(),
            metrics: parts.metrics,
            shutdown: CancellationToken::new(),
            region: options.region.clone(),
            guesses: Default::default(),
            creations: std::sync::Mutex::new(crate::guesses::WindowLimiter::new(
                options.rooms_per_client,
            )),
            trust_forwarded_for: options.trust_forwarded_for,
            metrics_listen: options.metrics_listen,
            sockets: crate::sockets::SocketCounter::new(options.sockets),
            turn_grants: std::sync::Mutex::new(crate::guesses::WindowLimiter::new(
                options.turn_grants_per_client,
            )),
            read_budget: crate::read_budget::ReadBudget::new(crate::read_budget::DEFAULT_POOL),
        }))
    }
}

/// A session's presence in a room.
struct InRoom {
    room: String,
    /// The participant's id in the room.
    participant: String,
    /// The route epoch the session joined at; `u64::MAX` for a viewer, who follows its
    /// edge rather than the stage's route.
    epoch: u64,
    to_shard: mpsc::Sender<String>,
}

/// Runs a client session from address `client` until the client goes away or the
/// gateway stops.
pub async fn run_session<S, R>(
    mut sink: S,
    mut stream: R,
    gateway: Arc<Gateway>,
    client: std::net::IpAddr,
) where
    S: Sink<ServerFrame> + Unpin,
    R: Stream<Item = ClientFrame> + Unpin,
{
    let metrics = gateway.metrics.clone();
    metrics.sockets.inc();
    let mut session = Session {
        gateway,
        client: crate::guesses::Guesser::of(client),
        room: None,
        budget: TokenBucket::new(RATE.0, RATE.1),
        strikes: Strikes::default(),
        failed_joins: 0,
    };
    let mut from_shard: Option<mpsc::Receiver<String>> = None;
    let mut join_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.reset();
    let shutdown = session.gateway.shutdown.clone();
    let mut routes = session.gateway.view.watch_routes();
    loop {
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = sink.send(session.reconnect("the gateway is restarting; join again")).await;
                break;
            }
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    None | Some(ClientFrame::Close) => break,
                    Some(ClientFrame::Pong) => Step::Continue,
                    Some(ClientFrame::Binary) => {
                        Step::Reply(session.error(ErrorCode::BadMessage, "binary frames are not part of the protocol"))
                    }
                    Some(ClientFrame::Text(text)) => session.on_client_text(&text, &mut from_shard).await,
                }
            }
            message = recv(&mut from_shard) => match message {
                Some(text) => session.on_shard_text(&text),
                None => {
                    // The shard's side closed: it died, or dropped the session.
                    from_shard = None;
                    session.left();
                    Step::Reply(session.reconnect("lost the connection to the room's shard; join again"))
                }
            },
            change = routes.recv(), if session.room.is_some() => {
                if session.moved(change) {
                    // The operator placed the room elsewhere (its shard was lost): this
                    // session's shard no longer holds it. Rejoin where it is now.
                    if let Some(room) = &session.room {
                        tracing::info!(room = %room.room, participant = %room.participant, "room moved; the client is told to join again");
                    }
                    from_shard = None;
                    Step::LeftRoom(session.reconnect("the room moved to another shard; join again"))
                } else {
                    Step::Continue
                }
            }
            _ = tokio::time::sleep_until(join_deadline), if session.room.is_none() => {
                let _ = sink.send(session.error(ErrorCode::NotJoined, "no join within 30 s; closing")).await;
                break;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    break;
                }
                if sink.send(ServerFrame::Ping).await.is_err() {
                    break;
                }
                Step::Continue
            }
        };
        match step {
            Step::Continue => {}
            Step::Reply(frame) => {
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            Step::ReplyAndClose(frame) => {
                let _ = sink.send(frame).await;
                break;
            }
            Step::LeftRoom(frame) => {
                from_shard = None;
                session.left();
                join_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(room) = session.room.take() {
        let _ = room
            .to_shard
            .try_send(encode_client(&shard::ClientMessage::Leave));
        metrics.exited(&room.room);
    }
    metrics.sockets.dec();
}

/// Waits for the next frame from the shard, or forever when not in a room.
async fn recv(from_shard: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match from_shard {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Why a shard did not take a session.
#[derive(Debug)]
enum ShardJoinError {
    /// It does not hold the room (any more), is draining, or is full: try elsewhere.
    Elsewhere,
    /// It refused the participant for a reason that holds anywhere.
    Refused(Refusal),
    /// It could not be reached, or did not answer.
    Unreachable(String),
}

/// Edges a viewer is offered before the gateway gives up for now.
const MAX_SEATING_TRIES: usize = 4;

/// What to do after one event.
enum Step {
    Continue,
    Reply(ServerFrame),
    ReplyAndClose(ServerFrame),
    /// The room is left (the shard ended the session); send this and stay connected.
    LeftRoom(ServerFrame),
}

struct Session {
    gateway: Arc<Gateway>,
    /// Who the client is for password throttling.
    client: crate::guesses::Guesser,
    room: Option<InRoom>,
    budget: TokenBucket,
    strikes: Strikes,
    failed_joins: u32,
}

impl Session {
    fn frame(message: &Outbound) -> ServerFrame {
        ServerFrame::Text(encode(message))
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        self.gateway.metrics.error(code);
        Self::frame(&Outbound::Error {
            code,
            message: message.into(),
        })
    }

    fn reconnect(&self, reason: &str) -> ServerFrame {
        Self::frame(&Outbound::Reconnect {
            reason: reason.to_owned(),
        })
    }

    fn left(&mut self) {
        if let Some(room) = self.room.take() {
            self.gateway.metrics.exited(&room.room);
            let view = &self.gateway.view;
            if view
                .room(&room.room)
                .is_some_and(|record| record.placed_by_latency(&view.shards()))
            {
                let router = self.gateway.router.clone();
                tokio::spawn(async move {
                    router.forget_latency(&room.room, &room.participant).await;
                });
            }
        }
    }

    async fn on_client_text(
        &mut self,
        text: &str,
        from_shard: &mut Option<mpsc::Receiver<String>>,
    ) -> Step {
        let now = Instant::now();
        if !self.budget.take(now) {
            let close = self.strikes.strike(now);
            let frame = self.error(ErrorCode::RateLimited, "too many messages; slow down");
            return if close {
                Step::ReplyAndClose(frame)
            } else {
                Step::Reply(frame)
            };
        }
        let message = match decode_client(text) {
            Ok(message) => message,
            Err(err) => return Step::Reply(self.error(err.code, err.message)),
        };
        match (&self.room, message) {
            (_, Inbound::Relay(shard::ClientMessage::Ping)) => Step::Reply(ServerFrame::Text(
                shard::encode_server(&ServerMessage::Pong),
            )),
            (Some(_), Inbound::Join(_)) => Step::Reply(self.error(
                ErrorCode::AlreadyJoined,
                "this session is in a room; leave first",
            )),
            (None, Inbound::Relay(_)) => {
                Step::Reply(self.error(ErrorCode::NotJoined, "send join first"))
            }
            (Some(room), Inbound::Relay(message)) => {
                if room.to_shard.send(encode_client(&message)).await.is_err() {
                    *from_shard = None;
                    self.left();
                    return Step::Reply(
                        self.reconnect("lost the connection to the room's shard; join again"),
                    );
                }
                self.gateway.metrics.to_shard();
                Step::Continue
            }
            (None, Inbound::Join(request)) => match self.join(&request).await {
                Ok((link, joined, epoch)) => {
                    self.gateway.metrics.join(Ok(()));
                    self.gateway.metrics.entered(&joined.room);
                    tracing::info!(room = %joined.room, participant = %joined.participant, "joined");
                    self.room = Some(InRoom {
                        room: joined.room.clone(),
                        participant: joined.participant.clone(),
                        epoch,
                        to_shard: link.tx,
                    });
                    *from_shard = Some(link.rx);
                    Step::Reply(Self::frame(&Outbound::Joined(joined)))
                }
                Err(refusal) => {
                    self.gateway.metrics.join(Err(refusal.code));
                    tracing::info!(room = %request.room, code = refusal.code.as_str(), "join refused");
                    let guessing = matches!(
                        refusal.code,
                        ErrorCode::WrongPassword | ErrorCode::Unauthorized
                    );
                    if guessing {
                        self.failed_joins += 1;
                    }
                    let frame = self.error(refusal.code, refusal.message);
                    if self.failed_joins >= MAX_FAILED_JOINS {
                        Step::ReplyAndClose(frame)
                    } else {
                        Step::Reply(frame)
                    }
                }
            },
        }
    }

    /// Whether a route change means this session's room left its shard.
    fn moved(&self, change: Result<RouteChange, broadcast::error::RecvError>) -> bool {
        let Some(room) = &self.room else {
            return false;
        };
        let epoch = match change {
            Ok(change) if change.room == room.room => change.route.map(|r| r.epoch),
            Ok(_) => return false,
            // Missed some changes: look at the route as it is now.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.gateway.view.route(&room.room).map(|r| r.epoch)
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        };
        epoch.is_some_and(|epoch| epoch > room.epoch)
    }

    /// Who a join comes in as: from a valid resume token, a join token, or a password.
    async fn admit(
        &self,
        request: &JoinRequest,
        settings: &RoomRecord,
    ) -> Result<(Admitted, Option<String>), Refusal> {
        let gateway = &self.gateway;
        let resumed = request
            .resume
            .as_deref()
            .and_then(|token| gateway.sessions.verify_as::<ResumeClaims>(token).ok())
            .filter(|claims| {
                claims.room == request.room
                    && claims.password
                        == crate::admission::password_fingerprint(settings.password_hash.as_deref())
            });
        if let Some(claims) = resumed {
            let admitted = Admitted {
                name: claims.name,
                publish: claims.publish,
                subscribe: claims.subscribe,
            };
            return Ok((admitted, Some(claims.participant)));
        }
        let admitted = match (&request.token, &gateway.tokens) {
            (Some(token), Some(keys)) => admit_with_token(request, keys.verify(token))?,
            (Some(_), None) => {
                return Err(Refusal {
                    code: ErrorCode::Unauthorized,
                    message: "this gateway does not accept join tokens".into(),
                });
            }
            (None, _) => {
                let guarded = settings.password_hash.is_some() && request.password.is_some();
                if guarded {
                    let locked = gateway
                        .guesses
                        .lock()
                        .map_or(Ok(()), |g| g.check(self.client, Instant::now()));
                    if let Err(wait) = locked {
                        gateway.metrics.password_lockouts.inc();
                        return Err(Refusal {
                            code: ErrorCode::RateLimited,
                            message: format!(
                                "too many wrong passwords from your address; try again in {} s",
                                wait.as_secs().max(1)
                            ),
                        });
                    }
                }
                let priority = match gateway.guesses.lock() {
                    Ok(guesses) if !guesses.has_failed(self.client) => Priority::FirstTry,
                    _ => Priority::Repeat,
                };
                let check = gateway
                    .passwords
                    .check(
                        self.client,
                        priority,
                        settings.password_hash.as_deref(),
                        request.password.as_deref(),
                    )
                    .await;
                if guarded && let Ok(mut guesses) = gateway.guesses.lock() {
                    match check {
                        PasswordCheck::Wrong => {
                            guesses.failed(self.client, Instant::now());
                        }
                        PasswordCheck::Matched => guesses.succeeded(self.client),
                        _ => {}
                    }
                }
                admit_with_password(request, check)?
            }
        };
        Ok((admitted, None))
    }

    /// The ICE servers for a participant of `room`: TURN credentials named after it (so
    /// that coturn's logs and per-user quotas tell sessions apart), while the client's
    /// address has not collected too many lately; STUN alone beyond that.
    fn ice_servers(&self, room: &str, participant: &str) -> Vec<crate::protocol::IceServer> {
        let gateway = &self.gateway;
        let granted = gateway
            .turn_grants
            .lock()
            .is_ok_and(|mut grants| grants.create(self.client, Instant::now()).is_ok());
        if !granted {
            tracing::info!(
                room,
                "TURN credentials withheld: this address collected its share"
            );
            return gateway.ice.stun_only();
        }
        gateway
            .ice
            .servers_for(&format!("{room}/{participant}"), SystemTime::now())
    }

    /// Opens a session on `shard` with `join`; the participants already there. For a
    /// viewer, a full edge is one more reason to try elsewhere.
    async fn join_on(
        &self,
        shard: &tutti_store::ShardRecord,
        join: shard::ClientMessage,
        viewer: bool,
    ) -> Result<(ShardLink, Vec<shard::ParticipantInfo>, AudioSettings), ShardJoinError> {
        let mut link = self
            .gateway
            .connector
            .connect(shard)
            .await
            .map_err(ShardJoinError::Unreachable)?;
        if link.tx.send(encode_client(&join)).await.is_err() {
            return Err(ShardJoinError::Unreachable("it closed the link".into()));
        }
        let reply = tokio::time::timeout(SHARD_JOIN_TIMEOUT, link.rx.recv())
            .await
            .ok()
            .flatten()
            .and_then(|text| decode_server(&text).ok());
        match reply {
            Some(ServerMessage::Joined {
                participants,
                audio,
                ..
            }) => Ok((link, participants, audio)),
            Some(ServerMessage::Error {
                code: ShardCode::RoomNotFound | ShardCode::ShardDraining,
                ..
            }) => Err(ShardJoinError::Elsewhere),
            Some(ServerMessage::Error {
                code: ShardCode::RoomFull,
                ..
            }) if viewer => Err(ShardJoinError::Elsewhere),
            Some(ServerMessage::Error { code, message }) => Err(ShardJoinError::Refused(Refusal {
                code: code.into(),
                message,
            })),
            _ => Err(ShardJoinError::Unreachable("no answer to the join".into())),
        }
    }

    /// Seats a viewer of a broadcast on one of its edges.
    async fn watch(&self, request: &JoinRequest) -> Result<(ShardLink, Joined, u64), Refusal> {
        let gateway = &self.gateway;
        let broadcast = gateway
            .view
            .broadcast(&request.room)
            .ok_or_else(|| Refusal {
                code: ErrorCode::RoomNotFound,
                message: format!("there is no broadcast called {}", request.room),
            })?;
        let not_yet = |why: &str| Refusal {
            code: ErrorCode::Unavailable,
            message: format!("{}: {why}; try again shortly", broadcast.name),
        };
        let cascade = gateway
            .view
            .cascade(&broadcast.name)
            .ok_or_else(|| not_yet("the broadcast is not on the air yet"))?;
        if broadcast.hls
            && let Some(most) = broadcast.max_webrtc_viewers
            && cascade.edges.iter().map(|e| e.viewers).sum::<u32>() >= most
        {
            return Err(Refusal {
                code: ErrorCode::UseHls,
                message: format!(
                    "{} has its most WebRTC viewers: watch it at /hls/{}/index.m3u8",
                    broadcast.name, broadcast.name
                ),
            });
        }
        let name = request
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("viewer")
            .chars()
            .take(shard::MAX_NAME_CHARS)
            .collect::<String>();
        let participant = format!("v{}", tutti_service::token::random_token(15));
        let shards = gateway.view.shards();
        let mut tried: Vec<String> = Vec::new();
        for _ in 0..MAX_SEATING_TRIES {
            let Some(edge) = crate::seating::edges_for_viewer(
                &cascade,
                &shards,
                broadcast.max_viewers_per_shard,
                gateway.region.as_deref(),
                &tried,
            )
            .into_iter()
            .next() else {
                break;
            };
            tried.push(edge.id.clone());
            let join = shard::ClientMessage::Join {
                room: cascade.stage.clone(),
                participant: participant.clone(),
                name: Some(name.clone()),
                publish: Some(false),
                subscribe: Some(true),
                relay: None,
                pipe: None,
                recorder: None,
                offer_subscriber: request.offer_subscriber.then_some(true),
            };
            match self.join_on(edge, join, true).await {
                Ok((link, participants, audio)) => {
                    let joined = Joined {
                        room: broadcast.name.clone(),
                        participant: participant.clone(),
                        name: name.clone(),
                        publish: false,
                        subscribe: true,
                        participants,
                        ice_servers: self.ice_servers(&broadcast.name, &participant),
                        resume: String::new(),
                        simulcast: false,
                        svc: false,
                        svc_codec: tutti_store::SvcCodec::Vp9,
                        audio,
                    };
                    return Ok((link, joined, u64::MAX));
                }
                Err(ShardJoinError::Refused(refusal)) => return Err(refusal),
                Err(err) => {
                    tracing::debug!(edge = %edge.id, ?err, "edge refused a viewer; trying the next");
                }
            }
        }
        Err(not_yet("no edge has a free seat; the broadcast is growing"))
    }

    /// Admits a join and opens the participant's session on the room's shard.
    async fn join(&self, request: &JoinRequest) -> Result<(ShardLink, Joined, u64), Refusal> {
        if request.watch {
            return self.watch(request).await;
        }
        let gateway = &self.gateway;
        let settings = gateway
            .rooms
            .settings_for_join(&request.room, request.audio)
            .ok_or_else(|| Refusal {
                code: ErrorCode::RoomNotFound,
                message: format!("there is no room called {}", request.room),
            })?;
        let creates = gateway.view.room(&request.room).is_none()
            && gateway.view.route(&request.room).is_none();
        if creates {
            let allowed = gateway
                .creations
                .lock()
                .map_or(Ok(()), |mut c| c.create(self.client, Instant::now()));
            if let Err(wait) = allowed {
                return Err(Refusal {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "you created as many rooms as one address may for now; try again in {} s, or join an existing room",
                        wait.as_secs().max(1)
                    ),
                });
            }
        }
        let (admitted, resumed) = self.admit(request, &settings).await?;
        let participant =
            resumed.unwrap_or_else(|| format!("p{}", tutti_service::token::random_token(15)));
        let unavailable = |why: String| Refusal {
            code: ErrorCode::ShardUnavailable,
            message: why,
        };
        // Latency placement needs to know where this participant is before the room is
        // placed (or moved): the report goes first.
        if settings.placed_by_latency(&gateway.view.shards()) {
            let report = tutti_store::LatencyReport {
                room: request.room.clone(),
                participant: participant.clone(),
                rtt_ms: request.rtt_ms(),
            };
            if let Err(err) = gateway.router.report_latency(report).await {
                tracing::warn!(room = %request.room, %err, "round trips not reported");
            }
        }
        let mut failed: Option<Placement> = None;
        for _ in 0..3 {
            let placement = match gateway.router.shard_for(&settings, failed.as_ref()).await {
                Ok(placement) => placement,
                Err(RouteError::Unavailable(why)) => {
                    return Err(Refusal {
                        code: ErrorCode::Unavailable,
                        message: format!("joins are paused: {why}; calls already running go on"),
                    });
                }
                Err(err) => return Err(unavailable(err.to_string())),
            };
            let shard_id = placement.shard.id.clone();
            let join = shard::ClientMessage::Join {
                room: request.room.clone(),
                participant: participant.clone(),
                name: Some(admitted.name.clone()),
                publish: Some(admitted.publish),
                subscribe: Some(admitted.subscribe),
                relay: None,
                pipe: None,
                recorder: None,
                offer_subscriber: request.offer_subscriber.then_some(true),
            };
            match self.join_on(&placement.shard, join, false).await {
                Ok((link, participants, audio)) => {
                    let now = SystemTime::now();
                    let exp = now
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                        .saturating_add(RESUME_TTL_SECS);
                    let resume = gateway
                        .sessions
                        .sign(&ResumeClaims {
                            room: request.room.clone(),
                            participant: participant.clone(),
                            name: admitted.name.clone(),
                            publish: admitted.publish,
                            subscribe: admitted.subscribe,
                            exp,
                            password: crate::admission::password_fingerprint(
                                settings.password_hash.as_deref(),
                            ),
                        })
                        .unwrap_or_default();
                    let joined = Joined {
                        room: request.room.clone(),
                        participant: participant.clone(),
                        name: admitted.name.clone(),
                        publish: admitted.publish,
                        subscribe: admitted.subscribe,
                        participants,
                        ice_servers: self.ice_servers(&request.room, &participant),
                        resume,
                        simulcast: settings.simulcast && admitted.publish,
                        svc: settings.svc && admitted.publish,
                        svc_codec: settings.svc_codec,
                        audio,
                    };
                    return Ok((link, joined, placement.epoch));
                }
                // The shard let the room go (it stood empty) or is draining: ask again.
                Err(ShardJoinError::Elsewhere) => failed = Some(placement),
                Err(ShardJoinError::Refused(refusal)) => return Err(refusal),
                Err(ShardJoinError::Unreachable(why)) => {
                    return Err(unavailable(format!("shard {shard_id}: {why}")));
                }
            }
        }
        Err(unavailable(format!(
            "room {} could not be placed",
            request.room
        )))
    }

    fn on_shard_text(&mut self, text: &str) -> Step {
        let Ok(message) = decode_server(text) else {
            tracing::warn!("undecodable frame from a shard dropped");
            return Step::Continue;
        };
        self.gateway.metrics.to_client();
        match message {
            ServerMessage::Left {
                reconnect: true,
                reason,
            } => Step::LeftRoom(self.reconnect(&reason)),
            ServerMessage::Left { .. } => Step::LeftRoom(Self::frame(&Outbound::Shard(message))),
            ServerMessage::Joined { .. } => Step::Continue,
            ServerMessage::Error { code, message } => Step::Reply(self.error(code.into(), message)),
            other => Step::Reply(Self::frame(&Outbound::Shard(other))),
        }
    }
}

/// Rate-limited frames of a session, forgotten after a quiet minute: an honest client's
/// bursts hours apart never add up to a disconnection.
#[derive(Debug, Default)]
struct Strikes {
    count: u32,
    last: Option<Instant>,
}

impl Strikes {
    /// Counts one at `now`; whether the session has had too many and must close.
    fn strike(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) >= STRIKES_FORGOTTEN_AFTER)
        {
            self.count = 0;
        }
        self.last = Some(now);
        self.count += 1;
        self.count > MAX_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_close_a_flooder_but_are_forgotten_after_a_quiet_minute() {
        let t0 = Instant::now();
        let mut strikes = Strikes::default();
        // Bursts an hour apart never close the session.
        for hour in 0..10u64 {
            let at = t0 + Duration::from_secs(3600 * hour);
            assert!(!(0..MAX_STRIKES).any(|_| strikes.strike(at)), "hour {hour}");
        }
        // Strikes less than a minute apart add up.
        let mut flooder = Strikes::default();
        let closed_at = (0..=MAX_STRIKES)
            .position(|i| flooder.strike(t0 + Duration::from_secs(u64::from(i) / 10)));
        assert_eq!(closed_at, Some(MAX_STRIKES as usize));
        // Exactly a quiet minute after the last one, the count starts over.
        let mut quiet = Strikes::default();
        for _ in 0..MAX_STRIKES {
            quiet.strike(t0);
        }
        assert!(!quiet.strike(t0 + STRIKES_FORGOTTEN_AFTER));
        assert_eq!(quiet.count, 1);
    }
}
