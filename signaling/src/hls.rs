//! `/hls/{broadcast}/{file}`: the playlist and segments of a broadcast packaged as HLS,
//! fetched from the shard that packages it (the one holding its stage) and served to
//! players and CDNs that do not speak WebRTC.

use crate::server::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tutti_shard_api::hls::{PLAYLIST, served_file};

/// One file of a broadcast's HLS.
pub async fn file(
    State(state): State<AppState>,
    Path((broadcast, name)): Path<(String, String)>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such HLS file\n").into_response();
    let gateway = &state.gateway;
    if !tutti_shard_api::protocol::valid_id(&broadcast) || !served_file(&name) {
        return not_found();
    }
    let Some(record) = gateway.view.broadcast(&broadcast).filter(|b| b.hls) else {
        return not_found();
    };
    let Some(shard) = gateway
        .view
        .route(&record.stage)
        .and_then(|route| gateway.view.shard(&route.shard))
    else {
        return not_found();
    };
    let body = match gateway.connector.hls_file(&shard, &broadcast, &name).await {
        Ok(body) => body,
        Err(err) => {
            tracing::debug!(%broadcast, file = %name, %err, "HLS file not fetched");
            return not_found();
        }
    };
    let playlist = name == PLAYLIST;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if playlist {
            "application/vnd.apple.mpegurl"
        } else {
            "video/mp2t"
        }),
    );
    // The playlist changes every segment; a segment never changes once listed.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if playlist {
            "no-cache"
        } else {
            "public, max-age=60"
        }),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}
