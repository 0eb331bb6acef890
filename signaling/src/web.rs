//! The web client: static files compiled into the binary, so the gateway serves a working
//! client with no build step and nothing to install beside it. `/` is the call page,
//! `/watch` the receive-only page of a broadcast.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The client's files: path, content type, body.
const ASSETS: [(&str, &str, &str); 7] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/watch",
        "text/html; charset=utf-8",
        include_str!("../web/watch.html"),
    ),
    (
        "/watch.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/watch.js"),
    ),
    (
        "/sdp.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/sdp.js"),
    ),
    (
        "/regions.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/regions.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
];

/// Everything the page may load comes from the gateway itself; media arrives over
/// WebRTC, which the policy does not govern.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self' ws: wss:; \
frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Serves one of the client's files.
pub fn asset(path: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
