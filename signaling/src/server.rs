//! The gateway's HTTP server: the web client, the client WebSocket, the room list, ICE
//! servers for token holders, health and metrics.
//!
//! Routes:
//! * `GET /`, `/app.js`, `/sdp.js`, `/regions.js`, `/style.css` — the web client.
//! * `GET /v1/ws` — the client WebSocket ([`crate::protocol`]).
//! * `/v1/whip/…`, `/v1/whep/…` — WHIP publishers and WHEP viewers ([`crate::wish`]).
//! * `GET /v1/rooms?q=&limit=` — the room list (JSON); `GET /v1/rooms/{name}` — one room.
//! * `GET /v1/ice-servers` — STUN/TURN servers with fresh TURN credentials, for holders
//!   of a join token (`Authorization: Bearer <token>`); joined clients get them in `joined`.
//! * `GET /healthz` (alive), `GET /readyz` (a shard can take rooms and the gateway is not
//!   stopping), `GET /metrics` (Prometheus).

use crate::read_budget::{Meter, Metered};
use crate::session::{ClientFrame, Gateway, ServerFrame, run_session};
use crate::sockets::SocketRefusal;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::task::TaskTracker;
use tutti_store::LiveView;

/// Frames beyond this close the socket at the WebSocket layer; frames between the
/// protocol's 64 KiB and this get a `bad_message` error instead. What one socket may
/// buffer, so it bounds the gateway's memory with the socket limits.
const WS_HARD_LIMIT: usize = 128 * 1024;
/// The WebSocket read buffer: most client messages fit, longer ones grow it for a while.
const WS_READ_BUFFER: usize = 8 * 1024;
/// Outgoing bytes a socket may have unsent before it counts as a slow consumer; the
/// session's own queue is bounded before this.
const WS_MAX_WRITE_BUFFER: usize = 512 * 1024;
/// How long stopping waits for sessions to tell their clients to reconnect.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The sessions' shared state.
    pub gateway: Arc<Gateway>,
    /// The live state (readiness).
    pub view: Arc<dyn LiveView>,
    /// Tracks upgraded sockets, so that stopping can wait for them.
    pub tracker: TaskTracker,
    /// Recordings, where this gateway can make them (local mode with `--record-dir`).
    pub recordings: Option<Arc<dyn crate::recordings::RecordingControl>>,
    /// HLS files fetched from shards, kept briefly.
    pub hls_cache: Arc<crate::hls::HlsCache>,
    /// WHIP and WHEP sessions.
    pub wish: Arc<crate::wish::resource::Resources>,
}

impl AppState {
    /// State for a gateway.
    pub fn new(gateway: Arc<Gateway>, view: Arc<dyn LiveView>) -> Self {
        Self {
            gateway,
            view,
            tracker: TaskTracker::new(),
            recordings: None,
            hls_cache: Arc::default(),
            wish: Arc::default(),
        }
    }

    /// The same, able to start and stop recordings.
    pub fn with_recordings(
        mut self,
        recordings: Arc<dyn crate::recordings::RecordingControl>,
    ) -> Self {
        self.recordings = Some(recordings);
        self
    }
}

/// The gateway's routes; what `main` and the tests serve. `/metrics` is among them
/// unless the gateway serves it on a port of its own (`--metrics-listen`), out of reach of
/// whatever exposes the main port.
pub fn app(state: AppState) -> Router {
    let router = if state.gateway.metrics_listen.is_none() {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new()
    };
    crate::web::paths()
        .fold(router, |router, path| router.route(path, get(web_asset)))
        .route("/v1/ws", get(websocket))
        .route("/v1/rooms", get(list_rooms))
        .route("/v1/rooms/{name}", get(one_room))
        .route(
            "/v1/rooms/{name}/recording",
            get(recording_status)
                .post(start_recording)
                .delete(stop_recording),
        )
        .route("/v1/broadcasts/{name}", get(one_broadcast))
        .route("/hls/{broadcast}/{file}", get(crate::hls::file))
        .route(
            "/v1/whip/{broadcast}",
            post(crate::wish::whip_post).options(crate::wish::endpoint_options),
        )
        .route(
            "/v1/whip/{broadcast}/{session}",
            patch(crate::wish::whip_patch)
                .delete(crate::wish::whip_delete)
                .options(crate::wish::resource_options),
        )
        .route(
            "/v1/whep/{broadcast}",
            post(crate::wish::whep_post).options(crate::wish::endpoint_options),
        )
        .route(
            "/v1/whep/{broadcast}/{session}",
            patch(crate::wish::whep_patch)
                .delete(crate::wish::whep_delete)
                .options(crate::wish::resource_options),
        )
        .route(
            "/v1/whep/{broadcast}/{session}/layer",
            post(crate::wish::whep_layer_select)
                .delete(crate::wish::whep_layer_reset)
                .options(crate::wish::layer_options),
        )
        .route(
            "/v1/whep/{broadcast}/{session}/sse",
            post(crate::wish::whep_events_create).options(crate::wish::events_options),
        )
        .route(
            "/v1/whep/{broadcast}/{session}/sse/{stream}",
            get(crate::wish::whep_events_pull)
                .delete(crate::wish::whep_events_delete)
                .options(crate::wish::event_stream_options),
        )
        .route("/v1/ice-servers", get(ice_servers))
        .route("/v1/regions", get(regions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// One of the web client's files, by the path it was asked for.
async fn web_asset(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    crate::web::asset(uri.path(), &headers)
}

/// A running HTTP server.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: AppState,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// What its handlers share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Tells every client to reconnect, waits (briefly) for their sessions, then stops.
    pub async fn stop(self) {
        self.state.gateway.shutdown.cancel();
        self.state.tracker.close();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.state.tracker.wait()).await;
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves the gateway until its shutdown token is cancelled.
pub async fn serve(addr: SocketAddr, state: AppState) -> std::io::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stop = state.gateway.shutdown.clone();
    let router = app(state.clone());
    if let Some(metrics_addr) = state.gateway.metrics_listen {
        let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
        let metrics_router = Router::new()
            .route("/metrics", get(metrics))
            .with_state(state.clone());
        tokio::spawn(tutti_service::http::serve(
            listener,
            metrics_router,
            tutti_service::http::HttpLimits::default(),
            state.gateway.shutdown.clone(),
        ));
    }
    // Slow headers are cut after 10 s; past 4096 plain HTTP connections new ones are
    // closed (WebSockets are counted by `sockets`).
    let task = tokio::spawn(tutti_service::http::serve(
        listener,
        router,
        tutti_service::http::HttpLimits::default(),
        stop,
    ));
    Ok(RunningServer { addr, state, task })
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if state.gateway.shutdown.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway_stopping",
            "this gateway is stopping; connect again",
        );
    }
    let Some(accept) = websocket_accept(request.method(), request.headers()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a WebSocket upgrade (version 13) is expected",
        );
    };
    let client = client_address(peer, request.headers(), state.gateway.trust_forwarded_for);
    let permit = match state
        .gateway
        .sockets
        .open(crate::guesses::Guesser::of(client))
    {
        Ok(permit) => permit,
        Err(SocketRefusal::GatewayFull) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sockets",
                "this gateway holds as many sockets as it may",
            );
        }
        Err(SocketRefusal::AddressFull) => {
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets_from_address",
                "your address holds as many sockets as it may",
            );
        }
    };
    // The upgrade is done by hand rather than by axum's extractor so that the socket's
    // reads can be metered (see `read_budget`).
    let upgrading = hyper::upgrade::on(request);
    let gateway = state.gateway.clone();
    tokio::spawn(state.tracker.track_future(async move {
        let Ok(upgraded) = upgrading.await else {
            return;
        };
        let meter = Meter::new(gateway.read_budget.clone());
        let io = Metered::new(hyper_util::rt::TokioIo::new(upgraded), meter.clone());
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
        serve_socket(socket, gateway, client, meter).await;
        drop(permit);
    }));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Limits of a client WebSocket.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(WS_HARD_LIMIT))
        .max_frame_size(Some(WS_HARD_LIMIT))
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
}

/// The `Sec-WebSocket-Accept` for a valid WebSocket upgrade request (RFC 6455 §4.2.1),
/// or nothing.
fn websocket_accept(method: &Method, headers: &HeaderMap) -> Option<String> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    (method == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && version_13
        && key.len() <= 64)
        .then(|| derive_accept_key(key.as_bytes()))
}

/// The client's address: the socket's peer, or behind a trusted proxy the last address
/// of `X-Forwarded-For` (the one the proxy appended; earlier ones the client may forge).
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trust_forwarded_for: bool,
) -> std::net::IpAddr {
    if trust_forwarded_for
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return last;
    }
    peer.ip()
}

async fn serve_socket<IO>(
    socket: WebSocketStream<IO>,
    gateway: Arc<Gateway>,
    client: std::net::IpAddr,
    meter: Arc<Meter>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (sink, stream) = socket.split();
    let sink = sink.with(|frame: ServerFrame| async move {
        Ok::<_, WsError>(match frame {
            ServerFrame::Text(text) => Message::Text(text.into()),
            ServerFrame::Ping => Message::Ping(Default::default()),
        })
    });
    let stream = stream.filter_map(move |frame| {
        // A whole frame is out: the socket holds nothing unfinished any more.
        meter.settle();
        async move {
            match frame {
                Ok(Message::Text(text)) => Some(ClientFrame::Text(text.to_string())),
                Ok(Message::Binary(_)) => Some(ClientFrame::Binary),
                Ok(Message::Pong(_)) => Some(ClientFrame::Pong),
                Ok(Message::Ping(_) | Message::Frame(_)) => None,
                Ok(Message::Close(_)) | Err(_) => Some(ClientFrame::Close),
            }
        }
    });
    run_session(Box::pin(sink), Box::pin(stream), gateway, client).await;
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    limit: Option<usize>,
}

async fn list_rooms(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "bad query string");
    };
    if query
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > crate::rooms::MAX_QUERY_CHARS)
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "q is at most 64 characters",
        );
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=crate::rooms::MAX_LIST_LIMIT).contains(&limit) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be 1..=200",
        );
    }
    let rooms = state.gateway.rooms.list(query.q.as_deref(), limit);
    Json(serde_json::json!({
        "rooms": rooms,
        "autoCreate": state.gateway.rooms.auto_creates(),
    }))
    .into_response()
}

async fn one_room(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.gateway.rooms.summary(&name) {
        Some(summary) => Json(summary).into_response(),
        None => json_error(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "no such room is declared or hosted",
        ),
    }
}

/// The regions rooms can be placed in, each with one shard's probe address: clients
/// time STUN Binding requests to them and report the round trips in `join`.
async fn regions(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({ "regions": crate::seating::region_probes(&state.view.shards()) }))
        .into_response()
}

/// A broadcast's cascade as the operator last applied it: where viewers are seated.
async fn one_broadcast(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let view = &state.gateway.view;
    let Some(broadcast) = view.broadcast(&name) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "no such broadcast is declared",
        );
    };
    let cascade = view.cascade(&name);
    let edges = cascade
        .as_ref()
        .map(|c| c.edges.clone())
        .unwrap_or_default();
    Json(serde_json::json!({
        "name": broadcast.name,
        "stage": broadcast.stage,
        "origin": cascade.as_ref().map(|c| c.origin.clone()),
        "viewers": edges.iter().map(|e| e.viewers).sum::<u32>(),
        "maxViewersPerShard": broadcast.max_viewers_per_shard,
        "hls": broadcast.hls.then(|| format!("/hls/{}/index.m3u8", broadcast.name)),
        "edges": edges,
    }))
    .into_response()
}

/// The join token of a request's `Authorization: Bearer` header, if it is valid.
fn bearer_claims(state: &AppState, headers: &HeaderMap) -> Option<crate::admission::JoinClaims> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| t.len() <= crate::protocol::MAX_TOKEN_LEN)?;
    state.gateway.tokens.as_ref()?.verify(token).ok()
}

/// The recording control, if the request may use it for `room`: a valid join token for
/// the room with the `record` grant.
fn recording_control(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
) -> Result<Arc<dyn crate::recordings::RecordingControl>, Box<Response>> {
    let Some(claims) = bearer_claims(state, headers) else {
        state
            .gateway
            .metrics
            .error(crate::protocol::ErrorCode::Unauthorized);
        return Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid join token with the record grant is required",
        )));
    };
    if claims.room != room || !claims.record {
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not grant recording this room",
        )));
    }
    state.recordings.clone().ok_or_else(|| {
        Box::new(json_error(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "this gateway makes no recordings: run it in local mode with --record-dir",
        ))
    })
}

fn recording_error(err: crate::recordings::RecordingError) -> Response {
    use crate::recordings::RecordingError;
    let (status, code) = match &err {
        RecordingError::NoRoom => (StatusCode::NOT_FOUND, "room_not_found"),
        RecordingError::NotRecording => (StatusCode::NOT_FOUND, "not_recording"),
        RecordingError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        RecordingError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_recordings"),
        RecordingError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    json_error(status, code, &err.to_string())
}

async fn start_recording(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let control = match recording_control(&state, &headers, &name) {
        Ok(control) => control,
        Err(response) => return *response,
    };
    match control.start(&name).await {
        Ok(status) => (StatusCode::CREATED, Json(status)).into_response(),
        Err(err) => recording_error(err),
    }
}

async fn stop_recording(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let control = match recording_control(&state, &headers, &name) {
        Ok(control) => control,
        Err(response) => return *response,
    };
    match control.stop(&name).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => recording_error(err),
    }
}

async fn recording_status(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let control = match recording_control(&state, &headers, &name) {
        Ok(control) => control,
        Err(response) => return *response,
    };
    match control.status(&name) {
        Ok(status) => Json(status).into_response(),
        Err(err) => recording_error(err),
    }
}

async fn ice_servers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if bearer_claims(&state, &headers).is_none() {
        state
            .gateway
            .metrics
            .error(crate::protocol::ErrorCode::Unauthorized);
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid join token is required",
        );
    }
    let ice = &state.gateway.ice;
    let name = format!("t{}", tutti_service::token::random_token(12));
    Json(serde_json::json!({
        "iceServers": ice.servers_for(&name, SystemTime::now()),
        "ttlSeconds": ice.ttl.as_secs(),
    }))
    .into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.gateway.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response();
    }
    if !state.view.synced() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the live state is unreachable",
        )
            .into_response();
    }
    if state.view.shards().iter().any(|s| !s.draining) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no shard can take rooms").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.gateway.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, header::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_a_valid_version_13_upgrade_is_accepted() {
        let valid = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // RFC 6455's own example.
        assert_eq!(
            websocket_accept(&Method::GET, &upgrade_headers(&valid)).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(
            websocket_accept(&Method::POST, &upgrade_headers(&valid)),
            None
        );
        for missing in 0..valid.len() {
            let mut partial = valid.to_vec();
            partial.remove(missing);
            assert_eq!(
                websocket_accept(&Method::GET, &upgrade_headers(&partial)),
                None,
                "without {}",
                valid[missing].0
            );
        }
        let mut old = valid.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert_eq!(websocket_accept(&Method::GET, &upgrade_headers(&old)), None);
    }
}
