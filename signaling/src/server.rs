//! The gateway's HTTP server: the web client, the client WebSocket, the room list, ICE
//! servers for token holders, health and metrics.
//!
//! Routes:
//! * `GET /`, `/app.js`, `/sdp.js`, `/regions.js`, `/style.css` — the web client.
//! * `GET /v1/ws` — the client WebSocket ([`crate::protocol`]).
//! * `GET /v1/rooms?q=&limit=` — the room list (JSON); `GET /v1/rooms/{name}` — one room.
//! * `GET /v1/ice-servers` — STUN/TURN servers with fresh TURN credentials, for holders
//!   of a join token (`Authorization: Bearer <token>`); joined clients get them in `joined`.
//! * `GET /healthz` (alive), `GET /readyz` (a shard can take rooms and the gateway is not
//!   stopping), `GET /metrics` (Prometheus).

use crate::session::{ClientFrame, Gateway, ServerFrame, run_session};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;
use tutti_store::LiveView;

/// Frames beyond this close the socket at the WebSocket layer; frames between the
/// protocol's 64 KiB and this get a `bad_message` error instead.
const WS_HARD_LIMIT: usize = 1024 * 1024;
/// Client WebSockets one gateway holds at once.
const MAX_SOCKETS: usize = 20_000;
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
    /// Bounds open sockets.
    pub sockets: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// State for a gateway.
    pub fn new(gateway: Arc<Gateway>, view: Arc<dyn LiveView>) -> Self {
        Self {
            gateway,
            view,
            tracker: TaskTracker::new(),
            sockets: Arc::new(tokio::sync::Semaphore::new(MAX_SOCKETS)),
        }
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
    router
        .route("/", get(|| async { crate::web::asset("/") }))
        .route("/app.js", get(|| async { crate::web::asset("/app.js") }))
        .route("/watch", get(|| async { crate::web::asset("/watch") }))
        .route(
            "/watch.js",
            get(|| async { crate::web::asset("/watch.js") }),
        )
        .route("/sdp.js", get(|| async { crate::web::asset("/sdp.js") }))
        .route(
            "/regions.js",
            get(|| async { crate::web::asset("/regions.js") }),
        )
        .route(
            "/style.css",
            get(|| async { crate::web::asset("/style.css") }),
        )
        .route("/v1/ws", get(websocket))
        .route("/v1/rooms", get(list_rooms))
        .route("/v1/rooms/{name}", get(one_room))
        .route("/v1/broadcasts/{name}", get(one_broadcast))
        .route("/v1/ice-servers", get(ice_servers))
        .route("/v1/regions", get(regions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// A running HTTP server.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: AppState,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
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
        tokio::spawn(tutti_sfu::http_server::serve(
            listener,
            metrics_router,
            tutti_sfu::http_server::HttpLimits::default(),
            state.gateway.shutdown.clone(),
        ));
    }
    // Slow headers are cut after 10 s; past 4096 plain HTTP connections new ones are
    // closed (WebSockets are counted by `sockets`).
    let task = tokio::spawn(tutti_sfu::http_server::serve(
        listener,
        router,
        tutti_sfu::http_server::HttpLimits::default(),
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
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.gateway.shutdown.is_cancelled() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway_stopping",
            "this gateway is stopping; connect again",
        );
    }
    let Ok(permit) = state.sockets.clone().try_acquire_owned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sockets",
            "this gateway holds as many sockets as it may",
        );
    };
    let client = client_address(peer, &headers, state.gateway.trust_forwarded_for);
    let tracker = state.tracker.clone();
    let gateway = state.gateway.clone();
    upgrade
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                serve_socket(socket, gateway, client).await;
                drop(permit);
            })
        })
}

/// The client's address: the socket's peer, or behind a trusted proxy the last address
/// of `X-Forwarded-For` (the one the proxy appended; earlier ones the client may forge).
fn client_address(
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

async fn serve_socket(socket: WebSocket, gateway: Arc<Gateway>, client: std::net::IpAddr) {
    let (sink, stream) = socket.split();
    let sink = sink.with(|frame: ServerFrame| async move {
        Ok::<_, axum::Error>(match frame {
            ServerFrame::Text(text) => Message::Text(text.into()),
            ServerFrame::Ping => Message::Ping(Default::default()),
        })
    });
    let stream = stream.filter_map(|frame| async move {
        match frame {
            Ok(Message::Text(text)) => Some(ClientFrame::Text(text.to_string())),
            Ok(Message::Binary(_)) => Some(ClientFrame::Binary),
            Ok(Message::Pong(_)) => Some(ClientFrame::Pong),
            Ok(Message::Ping(_)) => None,
            Ok(Message::Close(_)) | Err(_) => Some(ClientFrame::Close),
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
        "edges": edges,
    }))
    .into_response()
}

async fn ice_servers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| t.len() <= crate::protocol::MAX_TOKEN_LEN);
    let claims = match (token, &state.gateway.tokens) {
        (Some(token), Some(keys)) => keys.verify(token).ok(),
        _ => None,
    };
    if claims.is_none() {
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
    let name = format!("t{}", tutti_sfu::peer::random_token(12));
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
