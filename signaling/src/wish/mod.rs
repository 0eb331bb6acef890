//! WHIP (RFC 9725) and WHEP over HTTP: standard clients (OBS, hardware encoders, players)
//! publish to a broadcast's stage and watch it without Tutti's WebSocket protocol.
//!
//! Routes (see `docs/whip-whep.md`):
//! * `POST /v1/whip/{broadcast}` — an SDP offer (`application/sdp`) with `Authorization:
//!   Bearer <join token>` (publish grant for the stage); `201 Created` with the answer,
//!   `Location`, `ETag`, `Accept-Patch` and ICE servers as `Link` headers.
//! * `PATCH /v1/whip/{broadcast}/{session}` — trickled candidates (`204`) or an ICE
//!   restart (`200` with the new credentials and candidates), as
//!   `application/trickle-ice-sdpfrag`.
//! * `DELETE /v1/whip/{broadcast}/{session}` — ends it (`200`).
//! * `POST /v1/whep/{broadcast}` — a viewer's offer (`recvonly` sections): seated on one
//!   of the broadcast's edges as `/watch` is (no token needed; one given must grant it),
//!   each audio and video section carrying one of the stage's tracks; `?quality=low`
//!   chooses the simulcast layer. `PATCH` and `DELETE` of its session as for WHIP.
//! * `POST /v1/whep/{broadcast}/{session}/sse` — an event stream of the WHEP session
//!   (the server-sent events extension; its `Link` comes with the `201`): `GET` of the
//!   stream URL it answers with gives `active`, `inactive`, `layers` and `reconnect`
//!   events as they happen, `DELETE` ends it.
//! * `POST /v1/whep/{broadcast}/{session}/layer` — the video layer a WHEP player wants
//!   (the layer selection extension: `{"rid": "q"}`, `{"spatialLayerId": 0}`); `DELETE`
//!   leaves the choice to the server again.
//! * `OPTIONS` on all, for CORS preflights; every answer carries CORS headers.
//!
//! The session URL is the capability: 22 random characters no one else learns.

pub mod events;
pub mod fragment;
pub mod layers;
pub mod resource;

use crate::protocol::{ErrorCode, IceServer};
use crate::server::{AppState, client_address};
use crate::sockets::SocketRefusal;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use resource::{Failure, Kind, Patched, Start};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Instant;

/// The largest SDP offer accepted; browsers' offers are 3-12 KiB.
pub const MAX_OFFER_BYTES: usize = 32 * 1024;

const SDP: &str = "application/sdp";
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";
const JSON: &str = "application/json";

/// Adds the CORS headers browser clients need to read the answer and its headers.
fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag, Accept-Patch, Accept-Post, Retry-After"),
    );
    response
}

/// The answer to a CORS preflight (or a plain `OPTIONS`).
fn preflight(methods: &'static str, accept: Option<(&'static str, &'static str)>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    headers.insert(header::ALLOW, HeaderValue::from_static(methods));
    if let Some((name, value)) = accept {
        headers.insert(name, HeaderValue::from_static(value));
    }
    cors(response)
}

/// `OPTIONS /v1/whip/{broadcast}`.
pub async fn endpoint_options() -> Response {
    preflight("POST, OPTIONS", Some(("accept-post", SDP)))
}

/// `OPTIONS /v1/whip/{broadcast}/{session}`.
pub async fn resource_options() -> Response {
    preflight(
        "PATCH, DELETE, OPTIONS",
        Some(("accept-patch", SDP_FRAGMENT)),
    )
}

/// `OPTIONS /v1/whep/{broadcast}/{session}/sse`.
pub async fn events_options() -> Response {
    preflight("POST, OPTIONS", Some(("accept-post", JSON)))
}

/// `OPTIONS /v1/whep/{broadcast}/{session}/layer`.
pub async fn layer_options() -> Response {
    preflight("POST, DELETE, OPTIONS", Some(("accept-post", JSON)))
}

/// `OPTIONS /v1/whep/{broadcast}/{session}/sse/{stream}`.
pub async fn event_stream_options() -> Response {
    preflight("GET, DELETE, OPTIONS", None)
}

/// An error answer: the status, and the client protocol's code and message as JSON.
fn refuse(failure: Failure) -> Response {
    let mut response = (
        failure.status,
        axum::Json(json!({ "error": failure.code.as_str(), "message": failure.message })),
    )
        .into_response();
    let headers = response.headers_mut();
    match failure.status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        _ => {}
    }
    cors(response)
}

fn refuse_with(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    refuse(Failure {
        status,
        ..Failure::new(code, message)
    })
}

/// Whether the request's body is of media type `wanted` (parameters aside).
fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

/// The bearer token of `Authorization`, if it has one of a size a join token can be.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= crate::protocol::MAX_TOKEN_LEN)
}

/// Reads a body of at most `limit` bytes as text; `413` or `400` otherwise.
async fn text_body(request: Request, limit: usize) -> Result<String, Box<Response>> {
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            Box::new(refuse_with(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadMessage,
                &format!("the body is at most {limit} bytes"),
            ))
        })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Box::new(refuse_with(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadMessage,
            "the body is not UTF-8 text",
        ))
    })
}

/// Quotes a `Link` parameter value (RFC 9110 §5.6.4).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `Link` header values that give a client its ICE servers (RFC 9725 §4.6).
pub fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            if url.contains(['<', '>', '\r', '\n']) {
                continue;
            }
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(username), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username={}; credential={}; credential-type=\"password\"",
                    quoted(username),
                    quoted(credential)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// The stage a WHIP client publishes to for `target`: a broadcast's stage, or a room of
/// that name.
fn stage_of(state: &AppState, target: &str) -> Option<String> {
    let gateway = &state.gateway;
    if let Some(broadcast) = gateway.view.broadcast(target) {
        return Some(broadcast.stage);
    }
    gateway
        .rooms
        .settings_for_join(target, None)
        .map(|room| room.name)
}

/// Opens a resource for `start` once the client's address may have another.
async fn open(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    start: Start,
    location: impl FnOnce(&str) -> String,
) -> Response {
    let gateway = &state.gateway;
    let client = client_address(peer, headers, gateway.trust_forwarded_for);
    if let Err(wait) = state.wish.admit(client, Instant::now()) {
        let mut response = refuse_with(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "your address opened as many sessions as it may for now",
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let slot = match gateway.sockets.open(crate::guesses::Guesser::of(client)) {
        Ok(slot) => slot,
        Err(SocketRefusal::GatewayFull) => {
            return refuse_with(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "this gateway holds as many sessions as it may",
            );
        }
        Err(SocketRefusal::AddressFull) => {
            return refuse_with(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "your address holds as many sessions as it may",
            );
        }
    };
    let kind = start.kind;
    let has_video = !layers::video_sections(&start.offer).is_empty();
    let created = state
        .wish
        .start(gateway.clone(), client, slot, start, &state.tracker)
        .await;
    let created = match created {
        Ok(created) => created,
        Err(failure) => return refuse(failure),
    };
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, SDP)],
        created.answer,
    )
        .into_response();
    let headers = response.headers_mut();
    let location = location(&created.id);
    if kind == Kind::Whep {
        let link = format!(
            "<{location}/sse>; rel=\"{}\"; events=\"{}\"",
            events::SSE_REL,
            events::announced()
        );
        // Layer selection is offered to a player that receives video.
        let layer = has_video.then(|| format!("<{location}/layer>; rel=\"{}\"", layers::LAYER_REL));
        for link in std::iter::once(link).chain(layer) {
            if let Ok(value) = HeaderValue::from_str(&link) {
                headers.append(header::LINK, value);
            }
        }
    }
    for (name, value) in [
        (header::LOCATION, location),
        (header::ETAG, created.etag),
        (
            header::HeaderName::from_static("accept-patch"),
            SDP_FRAGMENT.to_owned(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    for link in ice_server_links(&created.ice_servers) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.append(header::LINK, value);
        }
    }
    cors(response)
}

/// Whether a POST may go on: the gateway is not stopping, and the body is an SDP offer.
fn offer_acceptable(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if state.gateway.shutdown.is_cancelled() {
        return Err(Box::new(refuse(Failure::new(
            ErrorCode::Unavailable,
            "this gateway is stopping; try again",
        ))));
    }
    if !content_type_is(headers, SDP) {
        return Err(Box::new(refuse_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadMessage,
            "the offer must be application/sdp",
        )));
    }
    Ok(())
}

/// A POST's SDP offer, bounded.
async fn offer_body(request: Request) -> Result<String, Box<Response>> {
    let offer = text_body(request, MAX_OFFER_BYTES).await?;
    if !offer.starts_with("v=0") {
        return Err(Box::new(refuse(Failure::new(
            ErrorCode::BadMessage,
            "the body is not an SDP offer",
        ))));
    }
    Ok(offer)
}

/// `POST /v1/whip/{broadcast}`: a publisher joins the broadcast's stage.
pub async fn whip_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    if let Err(response) = offer_acceptable(&state, request.headers()) {
        return *response;
    }
    let headers = request.headers().clone();
    let Some(token) = bearer(&headers).map(str::to_owned) else {
        return refuse(Failure::new(
            ErrorCode::Unauthorized,
            "Authorization: Bearer <join token> is required",
        ));
    };
    let Some(keys) = state.gateway.tokens.as_ref() else {
        return refuse(Failure::new(
            ErrorCode::Unauthorized,
            "this gateway accepts no join tokens (it has no --jwt-secret)",
        ));
    };
    let Ok(claims) = keys.verify(&token) else {
        state.gateway.metrics.error(ErrorCode::Unauthorized);
        return refuse(Failure::new(
            ErrorCode::Unauthorized,
            "the join token is forged, expired or malformed",
        ));
    };
    let Some(stage) = stage_of(&state, &target) else {
        return refuse(Failure::new(
            ErrorCode::RoomNotFound,
            format!("there is no broadcast or room called {target}"),
        ));
    };
    if claims.room != stage || !claims.publish {
        return refuse(Failure::new(
            ErrorCode::Forbidden,
            format!("the token does not grant publishing to {stage}"),
        ));
    }
    let offer = match offer_body(request).await {
        Ok(offer) => offer,
        Err(response) => return *response,
    };
    let start = Start {
        kind: Kind::Whip,
        target: target.clone(),
        join: json!({
            "type": "join", "room": stage, "token": token, "publish": true, "subscribe": false,
        }),
        offer,
        quality: None,
    };
    open(&state, peer, &headers, start, |id| {
        format!("/v1/whip/{target}/{id}")
    })
    .await
}

/// `?quality=` of a WHEP request.
#[derive(serde::Deserialize)]
pub struct ViewerQuery {
    quality: Option<String>,
}

/// `POST /v1/whep/{broadcast}`: a viewer, seated on one of the broadcast's edges as
/// `/watch` is; or, with a join token granting it, a receive-only participant of a room.
pub async fn whep_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(target): Path<String>,
    query: Result<axum::extract::Query<ViewerQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    if let Err(response) = offer_acceptable(&state, request.headers()) {
        return *response;
    }
    let headers = request.headers().clone();
    let Ok(query) = query else {
        return refuse(Failure::new(ErrorCode::BadMessage, "a malformed query"));
    };
    let quality = match query.quality.as_deref() {
        None => None,
        Some("low") => Some("low"),
        Some("medium") => Some("medium"),
        Some("high") => Some("high"),
        Some(_) => {
            return refuse(Failure::new(
                ErrorCode::BadMessage,
                "quality is low, medium or high",
            ));
        }
    };
    // A token, when given, must be valid, whether or not the broadcast needs one.
    let token = bearer(&headers).map(str::to_owned);
    let claims = match (&token, state.gateway.tokens.as_ref()) {
        (None, _) => None,
        (Some(_), None) => {
            return refuse(Failure::new(
                ErrorCode::Unauthorized,
                "this gateway accepts no join tokens (it has no --jwt-secret)",
            ));
        }
        (Some(token), Some(keys)) => match keys.verify(token) {
            Ok(claims) => Some(claims),
            Err(_) => {
                state.gateway.metrics.error(ErrorCode::Unauthorized);
                return refuse(Failure::new(
                    ErrorCode::Unauthorized,
                    "the join token is forged, expired or malformed",
                ));
            }
        },
    };
    let broadcast = state.gateway.view.broadcast(&target);
    let join = match (&broadcast, &claims) {
        (Some(broadcast), claims) => {
            if let Some(claims) = claims
                && (claims.room != broadcast.stage || !claims.subscribe)
            {
                return refuse(Failure::new(
                    ErrorCode::Forbidden,
                    format!("the token does not grant watching {target}"),
                ));
            }
            json!({
                "type": "join", "room": target, "watch": true, "offer_subscriber": true,
                "name": claims.as_ref().map_or("whep", |c| c.name.as_str()),
            })
        }
        (None, _) if stage_of(&state, &target).is_none() => {
            return refuse(Failure::new(
                ErrorCode::RoomNotFound,
                format!("there is no broadcast or room called {target}"),
            ));
        }
        (None, None) => {
            return refuse(Failure::new(
                ErrorCode::Unauthorized,
                "watching a room takes Authorization: Bearer <join token>",
            ));
        }
        (None, Some(claims)) => {
            if claims.room != target || !claims.subscribe {
                return refuse(Failure::new(
                    ErrorCode::Forbidden,
                    format!("the token does not grant receiving {target}"),
                ));
            }
            json!({
                "type": "join", "room": target, "token": token, "publish": false,
                "subscribe": true, "offer_subscriber": true,
            })
        }
    };
    let offer = match offer_body(request).await {
        Ok(offer) => offer,
        Err(response) => return *response,
    };
    let start = Start {
        kind: Kind::Whep,
        target: target.clone(),
        join,
        offer,
        quality,
    };
    open(&state, peer, &headers, start, |id| {
        format!("/v1/whep/{target}/{id}")
    })
    .await
}

/// `PATCH /v1/whep/{broadcast}/{session}`: trickle ICE or an ICE restart.
pub async fn whep_patch(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    patch(state, Kind::Whep, target, id, request).await
}

/// `DELETE /v1/whep/{broadcast}/{session}`: the viewer leaves.
pub async fn whep_delete(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
) -> Response {
    delete(state, Kind::Whep, target, id).await
}

/// `PATCH /v1/whip/{broadcast}/{session}`: trickle ICE or an ICE restart.
pub async fn whip_patch(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    patch(state, Kind::Whip, target, id, request).await
}

/// `DELETE /v1/whip/{broadcast}/{session}`: the publisher leaves.
pub async fn whip_delete(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
) -> Response {
    delete(state, Kind::Whip, target, id).await
}

/// `POST /v1/whep/{broadcast}/{session}/sse`: a new event stream of the session, for the
/// events its JSON array names (all, without a body).
pub async fn whep_events_create(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(streams) = state.wish.events(Kind::Whep, &target, &id) else {
        return no_such_session();
    };
    let headers = request.headers().clone();
    let body = match text_body(request, events::MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    if !body.trim().is_empty() && !content_type_is(&headers, JSON) {
        return refuse_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadMessage,
            "the events asked for are application/json",
        );
    }
    let wanted = match events::requested(&body) {
        Ok(wanted) => wanted,
        Err(why) => return refuse(Failure::new(ErrorCode::BadMessage, why)),
    };
    match streams.create(wanted) {
        Ok(stream) => {
            let mut response = StatusCode::CREATED.into_response();
            let location = format!("/v1/whep/{target}/{id}/sse/{stream}");
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            cors(response)
        }
        Err(events::Refused::Over) => no_such_session(),
        Err(events::Refused::TooMany) => refuse_with(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            &format!(
                "a session has at most {} event streams",
                events::MAX_STREAMS
            ),
        ),
    }
}

/// `GET /v1/whep/{broadcast}/{session}/sse/{stream}`: the stream's events as they come
/// (`text/event-stream`), until the session ends or the stream is deleted.
pub async fn whep_events_pull(
    State(state): State<AppState>,
    Path((target, id, stream)): Path<(String, String, String)>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    let Some(events) = state
        .wish
        .events(Kind::Whep, &target, &id)
        .and_then(|streams| streams.pull(&stream))
    else {
        return no_such_stream();
    };
    let events = events.map(|event| {
        Ok::<_, std::convert::Infallible>(
            Event::default().event(event.kind.name()).data(event.data),
        )
    });
    // A comment now and then keeps proxies from closing a quiet stream.
    let keep_alive = KeepAlive::new().interval(std::time::Duration::from_secs(15));
    cors(Sse::new(events).keep_alive(keep_alive).into_response())
}

/// `DELETE /v1/whep/{broadcast}/{session}/sse/{stream}`.
pub async fn whep_events_delete(
    State(state): State<AppState>,
    Path((target, id, stream)): Path<(String, String, String)>,
) -> Response {
    match state.wish.events(Kind::Whep, &target, &id) {
        Some(streams) if streams.delete(&stream) => cors(StatusCode::OK.into_response()),
        _ => no_such_stream(),
    }
}

/// `POST /v1/whep/{broadcast}/{session}/layer`: the video layer the player wants (the
/// layer selection extension), for every video section.
pub async fn whep_layer_select(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if !content_type_is(&headers, JSON) {
        return refuse_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadMessage,
            "a layer request is application/json",
        );
    }
    let body = match text_body(request, layers::MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let chosen = match layers::parse(&body) {
        Ok(chosen) => chosen,
        Err(why) => return refuse(Failure::new(ErrorCode::BadMessage, why)),
    };
    layer_answer(state.wish.select_layer(&target, &id, Some(chosen)).await)
}

/// `DELETE /v1/whep/{broadcast}/{session}/layer`: the server chooses the layer again.
pub async fn whep_layer_reset(
    State(state): State<AppState>,
    Path((target, id)): Path<(String, String)>,
) -> Response {
    layer_answer(state.wish.select_layer(&target, &id, None).await)
}

fn layer_answer(result: Option<Result<(), Failure>>) -> Response {
    match result {
        None => no_such_session(),
        Some(Err(failure)) => refuse(failure),
        Some(Ok(())) => cors(StatusCode::OK.into_response()),
    }
}

fn no_such_stream() -> Response {
    refuse(Failure::new(
        ErrorCode::RoomNotFound,
        "no such event stream (it was deleted, or its session ended)",
    ))
}

fn no_such_session() -> Response {
    refuse(Failure::new(
        ErrorCode::RoomNotFound,
        "no such session (it ended, or never was)",
    ))
}

async fn patch(
    state: AppState,
    kind: Kind,
    target: String,
    id: String,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if !content_type_is(&headers, SDP_FRAGMENT) {
        return refuse_with(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadMessage,
            "a PATCH must be application/trickle-ice-sdpfrag",
        );
    }
    let body = match text_body(request, fragment::MAX_FRAGMENT_BYTES).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let parsed = match fragment::parse_fragment(&body) {
        Ok(parsed) => parsed,
        Err(why) => return refuse(Failure::new(ErrorCode::BadMessage, why)),
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match state.wish.patch(kind, &target, &id, parsed, if_match).await {
        None => no_such_session(),
        Some(Err(failure)) => refuse(failure),
        Some(Ok(Patched::Trickled)) => cors(StatusCode::NO_CONTENT.into_response()),
        Some(Ok(Patched::Restarted { fragment, etag })) => {
            let mut response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, SDP_FRAGMENT)],
                fragment,
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&etag) {
                response.headers_mut().insert(header::ETAG, value);
            }
            cors(response)
        }
    }
}

async fn delete(state: AppState, kind: Kind, target: String, id: String) -> Response {
    if state.wish.delete(kind, &target, &id).await {
        cors(StatusCode::OK.into_response())
    } else {
        no_such_session()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_become_link_headers_with_quoted_credentials() {
        let links = ice_server_links(&[
            IceServer {
                urls: vec!["stun:turn.example:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec![
                    "turn:turn.example:3478?transport=udp".into(),
                    "turns:turn.example:5349".into(),
                    "turn:bad>url".into(),
                ],
                username: Some("1700000000:concert/p\"1".into()),
                credential: Some("Cd/49soE35ICqcJF/bCTn8Z4OyE=".into()),
            },
        ]);
        assert_eq!(
            links,
            vec![
                "<stun:turn.example:3478>; rel=\"ice-server\"".to_owned(),
                "<turn:turn.example:3478?transport=udp>; rel=\"ice-server\"; \
                 username=\"1700000000:concert/p\\\"1\"; \
                 credential=\"Cd/49soE35ICqcJF/bCTn8Z4OyE=\"; credential-type=\"password\""
                    .to_owned(),
                "<turns:turn.example:5349>; rel=\"ice-server\"; \
                 username=\"1700000000:concert/p\\\"1\"; \
                 credential=\"Cd/49soE35ICqcJF/bCTn8Z4OyE=\"; credential-type=\"password\""
                    .to_owned(),
            ]
        );
        for link in links {
            assert!(HeaderValue::from_str(&link).is_ok());
        }
    }

    #[test]
    fn media_types_and_bearer_tokens_are_read_leniently_but_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert!(content_type_is(&headers, SDP));
        assert!(!content_type_is(&headers, SDP_FRAGMENT));
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        let long = format!("Bearer {}", "a".repeat(crate::protocol::MAX_TOKEN_LEN + 1));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&long).unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
