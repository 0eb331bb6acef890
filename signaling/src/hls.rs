//! `/hls/{broadcast}/{file}`: the playlist and segments of broadcasts packaged as HLS
//! (local mode: the packagers write them under `--hls-dir`), for players and CDNs that
//! do not speak WebRTC.

use crate::server::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tutti_shard_api::hls::{PLAYLIST, served_file};

/// The largest file served (a segment of a second is far smaller).
const MAX_FILE: u64 = 32 * 1024 * 1024;

/// One file of a broadcast's HLS directory.
pub async fn file(
    State(state): State<AppState>,
    Path((broadcast, name)): Path<(String, String)>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such HLS file\n").into_response();
    let Some(dir) = state.hls_dir.as_ref() else {
        return not_found();
    };
    if !tutti_shard_api::protocol::valid_id(&broadcast)
        || broadcast.starts_with('.')
        || !served_file(&name)
        || !state
            .gateway
            .view
            .broadcast(&broadcast)
            .is_some_and(|b| b.hls)
    {
        return not_found();
    }
    let path = dir.join(&broadcast).join(&name);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return not_found();
    };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return not_found();
    }
    let Ok(body) = tokio::fs::read(&path).await else {
        return not_found();
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
