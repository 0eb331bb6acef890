//! Starting a shard: the media thread, and the HTTP server carrying the admin API, the
//! signaling WebSocket, metrics and health checks.
//!
//! [`start`] is what `main` and the tests (and later local mode) call; it binds what it
//! is told to (port 0 included) and reports the addresses it got.
//!
//! HTTP routes:
//! * `GET /healthz` — the media thread answers (liveness).
//! * `GET /readyz` — the media thread answers and the shard is not draining.
//! * `GET /metrics` — Prometheus text.
//! * Admin (bearer admin token): `PUT|GET|DELETE /v1/pipelines/{name}`,
//!   `GET /v1/pipelines`, `GET /v1/load`, `POST /v1/drain`.
//! * Signaling (bearer signaling token): `GET /v1/signal`, a WebSocket speaking
//!   [`crate::signal::protocol`].

use crate::metrics::ShardMetrics;
use crate::shard::api::{AdminError, CoreHandle, PipelineSpec};
use crate::shard::{CoreConfig, ShardCore};
use crate::signal::session::{Incoming, run_session};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::admin::RelaySpec;

/// The WebSocket library closes connections sending frames beyond this; frames between
/// the protocol limit and this get a `message_too_large` error instead.
/// How long liveness waits for the media thread: far beyond any step it takes under
/// load, short enough for three failed probes to restart a hung shard within a minute.
const LIVENESS_WAIT: Duration = Duration::from_secs(5);
const WS_HARD_LIMIT: usize = 1024 * 1024;
/// Largest admin request body.
const ADMIN_BODY_LIMIT: usize = 16 * 1024;

/// What a shard needs to start.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Media UDP address.
    pub udp: SocketAddr,
    /// Advertised IP; `None` derives it from the bound address.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Advertised port; `None` uses the bound port.
    pub advertise_port: Option<u16>,
    /// Whether to listen for ICE-TCP on the media port's number.
    pub ice_tcp: bool,
    /// Admin API bearer token.
    pub admin_token: String,
    /// Signaling bearer token.
    pub signal_token: String,
    /// Core settings (its `advertised` is filled in by [`start`]).
    pub core: CoreConfig,
    /// The shard's name, in the ids of its relays at parent shards.
    pub name: String,
    /// With a live state: ready only while registered there.
    pub registration: Option<crate::heartbeat::Registration>,
    /// Where recordings the control plane asks for are written; `None` records nothing.
    pub record_dir: Option<std::path::PathBuf>,
    /// Object storage recordings are also written to, as they go (`record_dir` is then
    /// their staging area).
    pub record_store: Option<crate::recorder::store::ObjectStoreConfig>,
    /// Recordings under `record_dir` that ended more than this many days ago are deleted
    /// (checked hourly); 0 keeps them.
    pub record_retention_days: u32,
    /// Where broadcasts the control plane asks this shard to package as HLS go (needs
    /// `ffmpeg`); `None` packages nothing.
    pub hls_dir: Option<std::path::PathBuf>,
}

/// A running shard.
pub struct RunningShard {
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// Where the media socket is bound.
    pub udp_addr: SocketAddr,
    /// The address clients are told to send media to.
    pub advertised: SocketAddr,
    /// The core's command handle.
    pub handle: CoreHandle,
    /// The shard's metrics.
    pub metrics: Arc<ShardMetrics>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    media: Option<std::thread::JoinHandle<()>>,
    /// Recordings, ended before the shard stops.
    recorders: Option<Arc<crate::recorder::registry::Recorders>>,
    /// HLS packagers, stopped (their ffmpeg killed) before the shard stops.
    packagers: Option<Arc<crate::hls::registry::Packagers>>,
    media_thread: Arc<std::sync::atomic::AtomicU32>,
}

impl RunningShard {
    /// Tells every session to reconnect elsewhere, then stops the server and media thread.
    pub async fn stop(mut self) {
        if let Some(recorders) = &self.recorders {
            recorders.stop_all().await;
        }
        if let Some(packagers) = &self.packagers {
            packagers.stop_all().await;
        }
        self.handle.shutdown().await;
        self.shutdown.cancel();
        let _ = (&mut self.server).await;
        if let Some(media) = self.media.take() {
            let _ = tokio::task::spawn_blocking(move || media.join()).await;
        }
    }

    /// CPU seconds the media thread has used (forwarding, encryption, I/O): the shard's
    /// own share of a process that hosts several shards.
    pub fn media_cpu_seconds(&self) -> Option<f64> {
        match self.media_thread.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            id => crate::procstat::thread_cpu_seconds(id),
        }
    }

    /// A future that completes when the HTTP server stops.
    pub fn cancelled(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Relay clients running, per pipeline.
type Relays =
    Arc<std::sync::Mutex<std::collections::HashMap<String, (RelaySpec, CancellationToken)>>>;

#[derive(Clone)]
struct AppState {
    core: CoreHandle,
    metrics: Arc<ShardMetrics>,
    admin_token: Arc<str>,
    signal_token: Arc<str>,
    /// Edge relays, started and stopped with their pipelines' specs.
    relays: Relays,
    /// Where relay pipes from parents reach this shard (its advertised media address),
    /// and the name its relays go by.
    media_addr: std::net::SocketAddr,
    name: Arc<str>,
    /// Bounds concurrent signaling sockets, joined or not.
    sessions: Arc<tokio::sync::Semaphore>,
    registration: Option<crate::heartbeat::Registration>,
    /// Recordings of rooms this shard holds, with `--record-dir`.
    recorders: Option<Arc<crate::recorder::registry::Recorders>>,
    /// Broadcasts this shard packages as HLS, with `--hls-dir`.
    packagers: Option<Arc<crate::hls::registry::Packagers>>,
}

/// Ports the system picks are tried this many times for one that TCP can have too.
const MEDIA_PORT_ATTEMPTS: usize = 32;

/// Binds the media port: UDP, and TCP on the same port number for ICE-TCP when `ice_tcp`.
/// A port the system picks (port 0) for UDP may be some TCP connection's ephemeral port;
/// another is picked then, so that ICE-TCP is not lost to a collision (local mode and
/// tests pick their ports so). On a port given, or after the attempts, a TCP port that is
/// taken disables ICE-TCP and UDP still serves.
fn bind_media(
    addr: SocketAddr,
    ice_tcp: bool,
) -> io::Result<(std::net::UdpSocket, Option<std::net::TcpListener>)> {
    let attempts = if addr.port() == 0 && ice_tcp {
        MEDIA_PORT_ATTEMPTS
    } else {
        1
    };
    let mut attempt = 1;
    loop {
        let udp = std::net::UdpSocket::bind(addr)?;
        if !ice_tcp {
            return Ok((udp, None));
        }
        let udp_addr = udp.local_addr()?;
        match std::net::TcpListener::bind(udp_addr) {
            Ok(listener) => return Ok((udp, Some(listener))),
            Err(_) if attempt < attempts => attempt += 1,
            Err(err) => {
                tracing::warn!(%err, %udp_addr, "ICE-TCP disabled: cannot listen on the media port");
                return Ok((udp, None));
            }
        }
    }
}

/// Binds the sockets, starts the media thread and serves HTTP.
pub async fn start(options: ShardOptions) -> io::Result<RunningShard> {
    let (udp, tcp) = bind_media(options.udp, options.ice_tcp)?;
    let udp_addr = udp.local_addr()?;
    let advertised = SocketAddr::new(
        options
            .advertise_ip
            .unwrap_or_else(|| tutti_service::net::default_advertise_ip(udp_addr.ip())),
        options.advertise_port.unwrap_or(udp_addr.port()),
    );
    let metrics = Arc::new(ShardMetrics::new());
    let mut core_config = options.core.clone();
    core_config.advertised = advertised;
    core_config.advertised_tcp = tcp.as_ref().map(|_| advertised);
    let ice_tcp = tcp.is_some();
    let core = ShardCore::new(core_config, metrics.clone(), Instant::now())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (tx, rx) = mpsc::channel(1024);
    let max_sockets = options
        .core
        .max_participants
        .saturating_mul(2)
        .saturating_add(16);
    let media_thread = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let media = crate::runtime::spawn(udp, tcp, core, rx, media_thread.clone())?;
    let handle = CoreHandle::new(tx);
    let state = AppState {
        core: handle.clone(),
        metrics: metrics.clone(),
        admin_token: options.admin_token.into(),
        signal_token: options.signal_token.into(),
        relays: Relays::default(),
        media_addr: advertised,
        name: options.name.clone().into(),
        sessions: Arc::new(tokio::sync::Semaphore::new(max_sockets)),
        registration: options.registration.clone(),
        recorders: None,
        packagers: None,
    };
    let listener = tokio::net::TcpListener::bind(options.http).await?;
    let http_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    // A shard records only rooms it holds (the control plane asks the room's shard), so
    // its recorders receive from it on loopback unless the media socket has an address.
    let record_store = match (&options.record_dir, options.record_store.clone()) {
        (_, None) => None,
        (None, Some(_)) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "object storage for recordings needs a record dir to stage them in",
            ));
        }
        (Some(_), Some(config)) => Some(Arc::new(
            crate::recorder::store::ObjectStore::from_config(config)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
    };
    let recorders = options.record_dir.clone().map(|dir| {
        let bind = if udp_addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            udp_addr.ip()
        };
        Arc::new(crate::recorder::registry::Recorders::new(
            dir,
            record_store,
            state.signal_token.to_string(),
            bind,
            shutdown.child_token(),
        ))
    });
    if let (Some(dir), days @ 1..) = (&options.record_dir, options.record_retention_days) {
        tokio::spawn(crate::recorder::retention::sweep_old(
            dir.clone(),
            days,
            shutdown.child_token(),
        ));
    }
    let packagers = options.hls_dir.clone().map(|dir| {
        let bind = if udp_addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            udp_addr.ip()
        };
        Arc::new(crate::hls::registry::Packagers::new(
            dir,
            state.signal_token.to_string(),
            bind,
            std::path::PathBuf::from("ffmpeg"),
            shutdown.child_token(),
        ))
    });
    let state = AppState {
        recorders: recorders.clone(),
        packagers: packagers.clone(),
        ..state
    };
    let stop = shutdown.clone();
    let server = tokio::spawn(tutti_service::http::serve(
        listener,
        app(state),
        tutti_service::http::HttpLimits::default(),
        stop,
    ));
    tracing::info!(%http_addr, %udp_addr, %advertised, ice_tcp, "shard started");
    Ok(RunningShard {
        http_addr,
        udp_addr,
        advertised,
        handle,
        metrics,
        shutdown,
        server,
        media: Some(media),
        media_thread,
        recorders,
        packagers,
    })
}

fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/pipelines", get(list_pipelines))
        .route(
            "/v1/pipelines/{name}",
            get(get_pipeline).put(put_pipeline).delete(delete_pipeline),
        )
        .route("/v1/pipelines/{name}/subscribers", get(get_subscribers))
        .route("/v1/load", get(load))
        .route("/v1/recordings", get(list_recordings))
        .route(
            "/v1/recordings/{name}",
            put(put_recording)
                .get(get_recording)
                .delete(delete_recording),
        )
        .route("/v1/drain", post(drain))
        .merge(crate::hls::api::admin_routes(state.packagers.clone()))
        .merge(fault_routes())
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let signal = Router::new()
        .route("/v1/signal", get(signal))
        .merge(crate::hls::api::file_routes(state.packagers.clone()))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_signal,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(admin)
        .merge(signal)
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), &state.admin_token) {
        next.run(request).await
    } else {
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        )
    }
}

async fn require_signal(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), &state.signal_token) {
        next.run(request).await
    } else {
        state
            .metrics
            .error(crate::signal::protocol::ErrorCode::Unauthorized);
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid signaling bearer token is required",
        )
    }
}

fn admin_error(err: AdminError) -> Response {
    let (status, code) = match &err {
        AdminError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        AdminError::AtCapacity(_) => (StatusCode::TOO_MANY_REQUESTS, "at_capacity"),
        AdminError::Draining => (StatusCode::CONFLICT, "draining"),
        AdminError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    json_error(status, code, &err.to_string())
}

fn recording_error(err: crate::recorder::registry::RecordingError) -> Response {
    use crate::recorder::registry::RecordingError;
    let (status, code) = match &err {
        RecordingError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        RecordingError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        RecordingError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        RecordingError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "at_capacity"),
        RecordingError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    json_error(status, code, &err.to_string())
}

/// The shard's recordings, or the answer that it makes none.
fn recorders(state: &AppState) -> Result<Arc<crate::recorder::registry::Recorders>, Box<Response>> {
    state.recorders.clone().ok_or_else(|| {
        Box::new(json_error(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "this shard records nothing: start it with --record-dir",
        ))
    })
}

async fn put_recording(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let recorders = match recorders(&state) {
        Ok(recorders) => recorders,
        Err(response) => return *response,
    };
    let spec: tutti_shard_api::recording::RecordingSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(err) => return admin_error(AdminError::Invalid(err.to_string())),
    };
    match recorders.put(&name, &spec) {
        Ok((true, status)) => (StatusCode::CREATED, Json(status)).into_response(),
        Ok((false, status)) => Json(status).into_response(),
        Err(err) => recording_error(err),
    }
}

async fn get_recording(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match recorders(&state) {
        Ok(recorders) => match recorders.status(&name) {
            Ok(status) => Json(status).into_response(),
            Err(err) => recording_error(err),
        },
        Err(response) => *response,
    }
}

async fn delete_recording(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match recorders(&state) {
        Ok(recorders) => match recorders.stop(&name).await {
            Ok(status) => Json(status).into_response(),
            Err(err) => recording_error(err),
        },
        Err(response) => *response,
    }
}

async fn list_recordings(State(state): State<AppState>) -> Response {
    match recorders(&state) {
        Ok(recorders) => {
            Json(serde_json::json!({ "running": recorders.running() })).into_response()
        }
        Err(response) => *response,
    }
}

/// Liveness: the media thread answers. A shard whose media thread died (or hangs)
/// still serves HTTP, so "the process is up" would keep a dead shard running forever;
/// failing here lets the kubelet restart it.
async fn healthz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(LIVENESS_WAIT, state.core.load()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "media thread stopped").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "media thread not answering",
        )
            .into_response(),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state
        .registration
        .as_ref()
        .is_some_and(|registration| !registration.is_current())
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered in the live state",
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.core.load()).await {
        Ok(Ok(load)) if !load.draining => (StatusCode::OK, "ready").into_response(),
        Ok(Ok(_)) => (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "media thread not answering",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn list_pipelines(State(state): State<AppState>) -> Response {
    match state.core.list_pipelines().await {
        Ok(list) => Json(list).into_response(),
        Err(err) => admin_error(err),
    }
}

async fn get_pipeline(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.core.list_pipelines().await {
        Ok(list) => match list.into_iter().find(|p| p.name == name) {
            Some(info) => Json(info).into_response(),
            None => admin_error(AdminError::NotFound(name)),
        },
        Err(err) => admin_error(err),
    }
}

async fn get_subscribers(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.core.subscribers(name).await {
        Ok(list) => Json(list).into_response(),
        Err(err) => admin_error(err),
    }
}

async fn put_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let spec: PipelineSpec = if body.is_empty() {
        PipelineSpec::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(spec) => spec,
            Err(err) => return admin_error(AdminError::Invalid(err.to_string())),
        }
    };
    let relay = spec.relay.clone();
    match state.core.put_pipeline(name.clone(), spec).await {
        Ok((created, info)) => {
            follow_relay(&state, &name, relay);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(info)).into_response()
        }
        Err(err) => admin_error(err),
    }
}

/// Starts, restarts or stops the relay client of a pipeline to match its spec.
fn follow_relay(state: &AppState, room: &str, relay: Option<RelaySpec>) {
    let Ok(mut relays) = state.relays.lock() else {
        return;
    };
    relays.retain(|_, (_, stop)| !stop.is_cancelled());
    match relay {
        Some(spec)
            if relays
                .get(room)
                .is_some_and(|(current, _)| *current == spec) => {}
        Some(spec) => {
            if let Some((_, stop)) = relays.remove(room) {
                stop.cancel();
            }
            let stop = CancellationToken::new();
            let options = crate::relay::RelayOptions {
                room: room.to_owned(),
                spec: spec.clone(),
                signal_token: state.signal_token.to_string(),
                media: state.media_addr,
                edge: state.name.to_string(),
            };
            tracing::info!(%room, from = %spec.from, "relaying from the parent shard");
            let guard = stop.clone();
            let task = crate::relay::spawn(state.core.clone(), options, stop.clone());
            // The entry goes when the relay ends by itself (its pipeline released).
            tokio::spawn(async move {
                let _ = task.await;
                guard.cancel();
            });
            relays.insert(room.to_owned(), (spec, stop));
        }
        None => {
            if let Some((_, stop)) = relays.remove(room) {
                stop.cancel();
            }
        }
    }
}

async fn delete_pipeline(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    follow_relay(&state, &name, None);
    match state.core.release_pipeline(name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => admin_error(err),
    }
}

async fn load(State(state): State<AppState>) -> Response {
    match state.core.load().await {
        Ok(load) => Json(load).into_response(),
        Err(err) => admin_error(err),
    }
}

#[cfg(feature = "fault-injection")]
fn fault_routes() -> Router<AppState> {
    Router::new().route(
        "/v1/fault/stall-media",
        post(|State(state): State<AppState>| async move {
            state
                .core
                .send(crate::shard::api::Command::StallForever)
                .await;
            StatusCode::ACCEPTED
        }),
    )
}

#[cfg(not(feature = "fault-injection"))]
fn fault_routes() -> Router<AppState> {
    Router::new()
}

async fn drain(State(state): State<AppState>) -> Response {
    match state.core.drain().await {
        Ok(load) => Json(load).into_response(),
        Err(err) => admin_error(err),
    }
}

async fn signal(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "this shard serves as many signaling sockets as it may",
        );
    };
    upgrade
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        // One socket per session: a small read buffer, grown for a long message only.
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            serve_socket(socket, state.core, state.metrics).await;
            drop(permit);
        })
}

async fn serve_socket(socket: WebSocket, core: CoreHandle, metrics: Arc<ShardMetrics>) {
    let (sink, stream) = socket.split();
    let sink =
        sink.with(|frame: String| async move { Ok::<_, axum::Error>(Message::Text(frame.into())) });
    let stream = stream.filter_map(|frame| async move {
        match frame {
            Ok(Message::Text(text)) => Some(Incoming::Text(text.to_string())),
            Ok(Message::Binary(_)) => Some(Incoming::Binary),
            Ok(Message::Close(_)) | Err(_) => Some(Incoming::Close),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
        }
    });
    run_session(Box::pin(sink), Box::pin(stream), core, metrics).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_media_port_comes_with_tcp_on_the_same_number() {
        for _ in 0..20 {
            let (udp, tcp) = bind_media("127.0.0.1:0".parse().unwrap(), true).unwrap();
            let tcp = tcp.expect("ICE-TCP on a picked port");
            assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        }
    }

    #[test]
    fn a_given_port_whose_tcp_is_taken_still_serves_udp() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        // The UDP port of that number is free (another protocol).
        let (udp, tcp) = bind_media(addr, true).unwrap();
        assert_eq!(udp.local_addr().unwrap(), addr);
        assert!(tcp.is_none());
        let (_, none) = bind_media("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn admin_clients_drop_idle_connections_well_before_the_shard_closes_them() {
        // Otherwise a call made as the shard closes an idle connection fails.
        let server = tutti_service::http::HttpLimits::default().header_read_timeout;
        assert!(crate::admin_client::POOL_IDLE * 2 <= server);
    }
}
