//! WHIP and WHEP sessions as HTTP resources, each backed by an ordinary client session.
//!
//! A resource is a task that plays the part of a WebSocket client: it feeds
//! [`run_session`] the `join` and `offer` a web client would send and reads its replies. So
//! an HTTP client gets exactly the admission, limits, routing and shard behaviour a
//! WebSocket client gets, with no second implementation of any of them. The task lives
//! until the client DELETEs the resource, the session ends (the shard stopped hearing the
//! client's consent checks, the room moved, the gateway stops), or the gateway stops.

use super::events::{OnAir, Streams};
use super::fragment::{IceFragment, ice_credentials, restart_fragment, with_ice_credentials};
use crate::guesses::{Guesser, WindowLimiter};
use crate::protocol::{ErrorCode, IceServer};
use crate::session::{ClientFrame, Gateway, ServerFrame, run_session};
use crate::sockets::SocketSlot;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a join may take (placement, then the shard's answer).
const JOIN_WAIT: Duration = Duration::from_secs(20);
/// How long the shard may take to answer an offer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Sessions one client address may open within [`crate::guesses::CREATION_WINDOW`]: an
/// encoder that reconnects every few seconds for a while fits.
pub const SESSIONS_PER_CLIENT: u32 = 120;

/// Why a request failed: what the HTTP answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status.
    pub status: StatusCode,
    /// The client protocol's error code for it.
    pub code: ErrorCode,
    /// For the client's logs.
    pub message: String,
}

impl Failure {
    /// A failure with `code`, answered with the status [`status_of`] gives it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
        }
    }
}

/// The HTTP status a refusal of the client protocol stands for (RFC 9725 §4.2, RFC 9110).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadMessage | ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::PasswordRequired | ErrorCode::WrongPassword => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RoomNotFound | ErrorCode::TrackNotFound | ErrorCode::ParticipantNotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::RoomFull
        | ErrorCode::NicknameTaken
        | ErrorCode::AlreadyJoined
        | ErrorCode::NotJoined
        | ErrorCode::OutOfOrder => StatusCode::CONFLICT,
        ErrorCode::SdpRejected | ErrorCode::CodecUnsupported => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ShardUnavailable | ErrorCode::Unavailable | ErrorCode::UseHls => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::SlowConsumer | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Which protocol a resource speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A publisher (RFC 9725).
    Whip,
    /// A viewer.
    Whep,
}

/// What a resource answers its creation with.
#[derive(Debug)]
pub struct Created {
    /// The resource's id (the last segment of its URL).
    pub id: String,
    /// The SDP answer.
    pub answer: String,
    /// The entity tag of its ICE session.
    pub etag: String,
    /// ICE servers for the client.
    pub ice_servers: Vec<IceServer>,
}

/// What a PATCH did.
#[derive(Debug)]
pub enum Patched {
    /// Candidates were passed on.
    Trickled,
    /// ICE restarted: the answering fragment and the new entity tag.
    Restarted {
        /// The shard's new credentials and candidates.
        fragment: String,
        /// The new entity tag.
        etag: String,
    },
}

/// A request to a running resource.
enum Command {
    Patch {
        fragment: IceFragment,
        if_match: Option<String>,
        reply: oneshot::Sender<Result<Patched, Failure>>,
    },
    Delete {
        reply: oneshot::Sender<()>,
    },
    /// A layer choice (`None`: back to the server's).
    Layer {
        request: Option<super::layers::LayerRequest>,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
}

struct Handle {
    kind: Kind,
    /// The broadcast (or room) in its URL.
    target: String,
    commands: mpsc::Sender<Command>,
    /// Its event streams (WHEP's server-sent events).
    events: Arc<Streams>,
}

/// The WHIP and WHEP resources of a gateway.
pub struct Resources {
    running: Mutex<HashMap<String, Handle>>,
    creations: Mutex<WindowLimiter>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            running: Mutex::default(),
            creations: Mutex::new(WindowLimiter::new(SESSIONS_PER_CLIENT)),
        }
    }
}

/// How a resource starts: the `join` message its session sends, then its offer.
pub struct Start {
    /// Which protocol.
    pub kind: Kind,
    /// The broadcast or room in its URL.
    pub target: String,
    /// The client protocol `join`.
    pub join: Value,
    /// The client's SDP offer.
    pub offer: String,
    /// A viewer's simulcast layer (`low`, `medium`, `high`), asked for every video track.
    pub quality: Option<&'static str>,
}

impl Resources {
    /// Counts a new session of `client`; the wait when it opened too many lately.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.creations.lock() {
            Ok(mut creations) => creations.create(Guesser::of(client), now),
            Err(_) => Ok(()),
        }
    }

    /// How many resources run now.
    pub fn len(&self) -> usize {
        self.running.lock().map_or(0, |r| r.len())
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a resource for `client`, holding `slot` (its place among the client's
    /// sockets) while it lives; its answer once the shard gave one.
    pub async fn start(
        self: &Arc<Self>,
        gateway: Arc<Gateway>,
        client: IpAddr,
        slot: SocketSlot,
        start: Start,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Created, Failure> {
        let id = tutti_service::token::random_token(22);
        let (commands_tx, commands) = mpsc::channel(4);
        let (created_tx, created) = oneshot::channel();
        let events = Arc::new(Streams::default());
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                id.clone(),
                Handle {
                    kind: start.kind,
                    target: start.target.clone(),
                    commands: commands_tx,
                    events: events.clone(),
                },
            );
        }
        let resources = self.clone();
        let task_id = id.clone();
        let sessions = tracker.clone();
        tracker.spawn(async move {
            let (driver, session) =
                Driver::open(gateway, client, start.quality, events.clone(), &sessions);
            driver
                .run(task_id.clone(), start, created_tx, commands)
                .await;
            events.end();
            // The session is over (the driver closed it) before its place is given back.
            let _ = session.await;
            drop(slot);
            if let Ok(mut running) = resources.running.lock() {
                running.remove(&task_id);
            }
        });
        created
            .await
            .unwrap_or_else(|_| Err(Failure::new(ErrorCode::Internal, "the session ended")))
    }

    fn commands(&self, kind: Kind, target: &str, id: &str) -> Option<mpsc::Sender<Command>> {
        let running = self.running.lock().ok()?;
        running
            .get(id)
            .filter(|h| h.kind == kind && h.target == target)
            .map(|h| h.commands.clone())
    }

    /// The event streams of resource `id`, while it runs.
    pub fn events(&self, kind: Kind, target: &str, id: &str) -> Option<Arc<Streams>> {
        let running = self.running.lock().ok()?;
        running
            .get(id)
            .filter(|h| h.kind == kind && h.target == target)
            .map(|h| h.events.clone())
    }

    /// Applies a PATCH to resource `id`; `None` when there is no such resource.
    pub async fn patch(
        &self,
        kind: Kind,
        target: &str,
        id: &str,
        fragment: IceFragment,
        if_match: Option<String>,
    ) -> Option<Result<Patched, Failure>> {
        let commands = self.commands(kind, target, id)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Patch {
                fragment,
                if_match,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Applies a layer choice to WHEP resource `id` (`None`: the server's choice again);
    /// `None` when there is no such resource.
    pub async fn select_layer(
        &self,
        target: &str,
        id: &str,
        request: Option<super::layers::LayerRequest>,
    ) -> Option<Result<(), Failure>> {
        let commands = self.commands(Kind::Whep, target, id)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Layer { request, reply })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Ends resource `id`; whether there was one.
    pub async fn delete(&self, kind: Kind, target: &str, id: &str) -> bool {
        let Some(commands) = self.commands(kind, target, id) else {
            return false;
        };
        let (reply, done) = oneshot::channel();
        if commands.send(Command::Delete { reply }).await.is_err() {
            // It ended on its own meanwhile: gone either way.
            return true;
        }
        let _ = done.await;
        true
    }
}

/// Whether an `If-Match` value names entity tag `etag` (or is `*`).
pub fn if_match_allows(if_match: &str, etag: &str) -> bool {
    if_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag)
}

fn new_etag() -> String {
    format!("\"{}\"", tutti_service::token::random_token(16))
}

/// The client side of one session, driven by the resource's task.
struct Driver {
    to_session: mpsc::Sender<ClientFrame>,
    from_session: mpsc::Receiver<ServerFrame>,
    /// The layer a viewer asked for, asked of every video track as it is announced.
    quality: Option<&'static str>,
    /// Video tracks announced before the first answer, when the layer can be asked.
    announced: Vec<String>,
    /// Whether the first offer was answered (the tracks have their place on the
    /// connection, and the layer of each can be asked).
    answered: bool,
    /// Whether anything is published, told to the event streams.
    on_air: OnAir,
    events: Arc<Streams>,
    /// The indexes of the offer's video sections.
    video_sections: Vec<usize>,
    /// The layer the viewer came with (`?quality=`), to go back to when a chosen layer
    /// is unselected.
    initial_quality: Option<&'static str>,
    /// The session left its room.
    ended: bool,
}

/// Errors a session may answer other messages with (a trickled candidate, a layer asked
/// of a track that went): not the answer to an offer.
const UNRELATED_ERRORS: [&str; 3] = ["bad_message", "track_not_found", "codec_unsupported"];

impl Driver {
    fn open(
        gateway: Arc<Gateway>,
        client: IpAddr,
        quality: Option<&'static str>,
        events: Arc<Streams>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (to_session, frames) = mpsc::channel::<ClientFrame>(64);
        let (replies, from_session) = mpsc::channel::<ServerFrame>(256);
        let stream = futures_util::stream::unfold(frames, |mut frames| async move {
            frames.recv().await.map(|frame| (frame, frames))
        });
        let sink = futures_util::sink::unfold(replies, |replies, frame: ServerFrame| async move {
            replies.send(frame).await.map(|_| replies)
        });
        let session = tracker.spawn(run_session(
            Box::pin(sink),
            Box::pin(stream),
            gateway,
            client,
        ));
        let driver = Self {
            to_session,
            from_session,
            quality,
            announced: Vec::new(),
            answered: false,
            on_air: OnAir::default(),
            events,
            video_sections: Vec::new(),
            initial_quality: quality,
            ended: false,
        };
        (driver, session)
    }

    async fn send(&self, mut message: Value) -> Result<(), Failure> {
        message["v"] = json!(1);
        self.to_session
            .send(ClientFrame::Text(message.to_string()))
            .await
            .map_err(|_| Failure::new(ErrorCode::Internal, "the session ended"))
    }

    /// The next message from the session, answering its keepalive pings; `None` when the
    /// session ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            match self.from_session.recv().await? {
                ServerFrame::Ping => {
                    let _ = self.to_session.send(ClientFrame::Pong).await;
                }
                ServerFrame::Text(text) => {
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if self.quality.is_some() {
                        self.note_announced(&value).await;
                    }
                    if let Some(on_air) = self.on_air.observe(&value) {
                        self.events.set_active(on_air);
                        let sections = &self.video_sections;
                        self.events.set_layers(
                            super::layers::layers_event(sections, &self.on_air.video_rids()),
                            || super::layers::cleared_event(sections),
                        );
                    }
                    return Some(value);
                }
            }
        }
    }

    /// Waits for a message of type `wanted` (the reply to what was sent); an `error`, the session leaving or the wait
    /// running out fail.
    async fn reply_of_type(&mut self, wanted: &str, wait: Duration) -> Result<Value, Failure> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| {
                    Failure::new(
                        ErrorCode::ShardUnavailable,
                        "the media server did not answer in time; try again",
                    )
                })?
                .ok_or_else(|| Failure::new(ErrorCode::Internal, "the session ended"))?;
            match message["type"].as_str() {
                Some(kind) if kind == wanted => return Ok(message),
                Some("error")
                    if message["code"]
                        .as_str()
                        .is_some_and(|code| UNRELATED_ERRORS.contains(&code)) =>
                {
                    tracing::debug!(error = %message, "an error about another message");
                }
                Some("error") => {
                    let code = serde_json::from_value(message["code"].clone())
                        .unwrap_or(ErrorCode::Internal);
                    let text = message["message"].as_str().unwrap_or_default();
                    return Err(Failure::new(code, text));
                }
                Some("left" | "reconnect") => {
                    // Over while waiting (a restart when the edge died): the session
                    // ends once the request is answered, and its streams hear why.
                    self.session_ended(&message);
                    return Err(Failure::new(
                        ErrorCode::ShardUnavailable,
                        "the room's media server went away; try again",
                    ));
                }
                _ => {}
            }
        }
    }

    /// The session left its room (`left` or `reconnect`): remembered, and a `reconnect`
    /// told to the event streams (its shard went away or its room moved; a new POST is
    /// seated on a shard that is up).
    fn session_ended(&mut self, message: &Value) {
        if self.ended {
            return;
        }
        self.ended = true;
        tracing::info!(kind = %message["type"], reason = %message["reason"], "HTTP session ended by its room");
        if message["type"] == "reconnect" {
            self.events.send(super::events::reconnect());
        }
    }

    /// The publisher or subscriber connection this session negotiates by offer.
    fn connection(kind: Kind) -> &'static str {
        match kind {
            Kind::Whip => "publisher",
            Kind::Whep => "subscriber",
        }
    }

    async fn negotiate(&mut self, kind: Kind, offer: &str) -> Result<String, Failure> {
        self.send(json!({"type": "offer", "pc": Self::connection(kind), "sdp": offer}))
            .await?;
        let answer = self.reply_of_type("answer", ANSWER_WAIT).await?;
        answer["sdp"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::new(ErrorCode::Internal, "the answer had no SDP"))
    }

    /// Keeps the video tracks a `joined` or `track_published` announces, and asks for the
    /// viewer's layer of each once the connection was answered.
    async fn note_announced(&mut self, message: &Value) {
        let tracks: Vec<&Value> = match message["type"].as_str() {
            Some("joined") => message["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["tracks"].as_array().into_iter().flatten())
                .collect(),
            Some("track_published") => vec![&message["track"]],
            _ => return,
        };
        for track in tracks {
            if let (Some("video"), Some(id)) = (track["kind"].as_str(), track["id"].as_str()) {
                if self.answered {
                    self.ask_quality(id).await;
                } else if self.announced.len() < 64 {
                    self.announced.push(id.to_owned());
                }
            }
        }
    }

    /// Asks for the viewer's layer of every track announced so far: the first answer came.
    async fn on_answered(&mut self) {
        self.answered = true;
        for id in std::mem::take(&mut self.announced) {
            self.ask_quality(&id).await;
        }
    }

    /// A player's layer choice: the quality it stands for, asked of every video track now
    /// and of those that come later.
    async fn select_layer(
        &mut self,
        request: Option<&super::layers::LayerRequest>,
    ) -> Result<(), Failure> {
        let chosen = match request {
            None => None,
            Some(request) => {
                super::layers::choose(request, &self.video_sections, &self.on_air.video_rids())
                    .map_err(|why| Failure::new(ErrorCode::BadMessage, why))?
            }
        };
        // No choice: the one the viewer came with, else the best its link carries.
        let quality = chosen.or(self.initial_quality).unwrap_or("high");
        self.quality = Some(quality);
        if self.answered {
            let tracks: Vec<String> = self.on_air.video_tracks().map(str::to_owned).collect();
            for id in tracks {
                self.ask_quality(&id).await;
            }
        }
        Ok(())
    }

    /// Asks for the viewer's layer of video track `id`.
    async fn ask_quality(&self, id: &str) {
        if let Some(quality) = self.quality {
            let _ = self
                .send(json!({"type": "set_quality", "track": id, "quality": quality}))
                .await;
        }
    }

    /// Hands the fragment's candidates to the shard. `a=end-of-candidates` is not passed
    /// on: the shard is an ICE-lite agent that never checks pairs itself, so a client's
    /// last candidate changes nothing there.
    async fn trickle(&self, kind: Kind, fragment: &IceFragment) -> Result<(), Failure> {
        for candidate in &fragment.candidates {
            self.send(json!({
                "type": "candidate",
                "pc": Self::connection(kind),
                "candidate": candidate.candidate,
                "sdpMid": candidate.mid,
                "sdpMLineIndex": candidate.m_line_index,
            }))
            .await?;
        }
        Ok(())
    }

    async fn run(
        mut self,
        id: String,
        start: Start,
        created: oneshot::Sender<Result<Created, Failure>>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        self.video_sections = super::layers::video_sections(&start.offer);
        let opened = async {
            self.send(start.join.clone()).await?;
            let joined = self.reply_of_type("joined", JOIN_WAIT).await?;
            let answer = self.negotiate(start.kind, &start.offer).await?;
            self.on_answered().await;
            let ice_servers =
                serde_json::from_value(joined["ice_servers"].clone()).unwrap_or_default();
            Ok::<_, Failure>((answer, ice_servers))
        }
        .await;
        let mut offer = start.offer;
        let mut etag = new_etag();
        match opened {
            Ok((answer, ice_servers)) => {
                let created_ok = Created {
                    id: id.clone(),
                    answer,
                    etag: etag.clone(),
                    ice_servers,
                };
                if created.send(Ok(created_ok)).is_err() {
                    // The client gave up waiting: nobody will use or delete it.
                    let _ = self.to_session.send(ClientFrame::Close).await;
                    return;
                }
            }
            Err(failure) => {
                let _ = created.send(Err(failure));
                let _ = self.to_session.send(ClientFrame::Close).await;
                return;
            }
        }
        tracing::info!(resource = %id, kind = ?start.kind, target = %start.target, "HTTP session started");
        loop {
            tokio::select! {
                message = self.next() => match message {
                    None => break,
                    Some(message) => match message["type"].as_str() {
                        Some("left" | "reconnect") => {
                            self.session_ended(&message);
                            break;
                        }
                        Some("error") => {
                            tracing::debug!(resource = %id, error = %message, "HTTP session error");
                        }
                        _ => {}
                    },
                },
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Delete { reply }) => {
                        // Answered once the shard let the participant go, so that the same
                        // name may come back at once.
                        if self.send(json!({"type": "leave"})).await.is_ok() {
                            let _ = self.reply_of_type("left", ANSWER_WAIT).await;
                        }
                        let _ = reply.send(());
                        break;
                    }
                    Some(Command::Layer { request, reply }) => {
                        let _ = reply.send(self.select_layer(request.as_ref()).await);
                        if self.ended {
                            break;
                        }
                    }
                    Some(Command::Patch { fragment, if_match, reply }) => {
                        let result = self
                            .patch(start.kind, &mut offer, &mut etag, fragment, if_match.as_deref())
                            .await;
                        let _ = reply.send(result);
                        if self.ended {
                            break;
                        }
                    }
                },
            }
        }
        let _ = self.to_session.send(ClientFrame::Close).await;
        tracing::info!(resource = %id, "HTTP session over");
    }

    /// Trickles the fragment's candidates, or restarts ICE when it carries credentials
    /// other than the current ones (RFC 9725 §4.3).
    async fn patch(
        &mut self,
        kind: Kind,
        offer: &mut String,
        etag: &mut String,
        fragment: IceFragment,
        if_match: Option<&str>,
    ) -> Result<Patched, Failure> {
        let current = ice_credentials(offer);
        let restart = match (&fragment.ufrag, &fragment.pwd, &current) {
            (Some(ufrag), Some(pwd), Some((old_ufrag, old_pwd))) => {
                ufrag != old_ufrag || pwd != old_pwd
            }
            _ => false,
        };
        if !restart {
            if if_match.is_some_and(|m| !if_match_allows(m, etag)) {
                return Err(precondition_failed());
            }
            self.trickle(kind, &fragment).await?;
            return Ok(Patched::Trickled);
        }
        // A restart asks with `If-Match: *` (RFC 9725 §4.3.2). Other credentials without it
        // are candidates of an ICE session that is over (a PATCH that came late).
        if if_match.map(str::trim) != Some("*") {
            return Err(precondition_failed());
        }
        let (Some(ufrag), Some(pwd)) = (&fragment.ufrag, &fragment.pwd) else {
            return Err(Failure::new(ErrorCode::BadMessage, "no ICE credentials"));
        };
        let restarted = with_ice_credentials(offer, ufrag, pwd);
        let answer = self.negotiate(kind, &restarted).await?;
        let answering = restart_fragment(&answer)
            .ok_or_else(|| Failure::new(ErrorCode::Internal, "the answer had no ICE section"))?;
        *offer = restarted;
        *etag = new_etag();
        self.trickle(kind, &fragment).await?;
        Ok(Patched::Restarted {
            fragment: answering,
            etag: etag.clone(),
        })
    }
}

/// `412 Precondition Failed`: the PATCH names an ICE session that is no longer current.
fn precondition_failed() -> Failure {
    Failure {
        status: StatusCode::PRECONDITION_FAILED,
        ..Failure::new(
            ErrorCode::OutOfOrder,
            "If-Match names an ICE session that is no longer current",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_4xx_or_5xx_status() {
        for code in ErrorCode::ALL {
            let status = status_of(code);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code:?}"
            );
        }
        assert_eq!(status_of(ErrorCode::Unauthorized), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(ErrorCode::Forbidden), StatusCode::FORBIDDEN);
        assert_eq!(status_of(ErrorCode::RoomNotFound), StatusCode::NOT_FOUND);
        assert_eq!(status_of(ErrorCode::NicknameTaken), StatusCode::CONFLICT);
        assert_eq!(
            status_of(ErrorCode::SdpRejected),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            precondition_failed().status,
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn if_match_takes_the_current_tag_a_list_or_a_star() {
        assert!(if_match_allows("\"abc\"", "\"abc\""));
        assert!(if_match_allows("\"x\", \"abc\"", "\"abc\""));
        assert!(if_match_allows("*", "\"abc\""));
        assert!(!if_match_allows("\"abd\"", "\"abc\""));
        assert!(!if_match_allows("abc", "\"abc\""));
    }

    #[test]
    fn each_address_opens_a_bounded_number_of_sessions() {
        let resources = Resources::default();
        let client: IpAddr = "203.0.113.5".parse().unwrap();
        let other: IpAddr = "203.0.113.6".parse().unwrap();
        let now = Instant::now();
        for _ in 0..SESSIONS_PER_CLIENT {
            assert!(resources.admit(client, now).is_ok());
        }
        assert!(resources.admit(client, now).is_err());
        assert!(resources.admit(other, now).is_ok());
    }
}
