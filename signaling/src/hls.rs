//! `/hls/{broadcast}/{file}`: the playlist and segments of a broadcast packaged as HLS,
//! fetched from the shard that packages it (the one holding its stage) and served to
//! players and CDNs that do not speak WebRTC.

use crate::server::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tutti_shard_api::hls::{PLAYLIST, served_file};

/// How long a fetched playlist is served again: under a segment's length, so players
/// see each new segment in time.
const PLAYLIST_FRESH: Duration = Duration::from_millis(500);
/// How long a fetched segment is served again (a segment never changes).
const SEGMENT_FRESH: Duration = Duration::from_secs(30);
/// Files kept at most (about two minutes of one broadcast's segments).
const MAX_CACHED: usize = 128;

/// Files fetched from shards, kept briefly: however many players (or CDN edges) ask a
/// gateway, the stage's shard is asked about once per file.
#[derive(Default)]
pub struct HlsCache {
    entries: Mutex<HashMap<(String, String), (Instant, Bytes)>>,
}

impl HlsCache {
    fn get(&self, broadcast: &str, file: &str, now: Instant) -> Option<Bytes> {
        let fresh = if file == PLAYLIST {
            PLAYLIST_FRESH
        } else {
            SEGMENT_FRESH
        };
        let entries = self.entries.lock().ok()?;
        entries
            .get(&(broadcast.to_owned(), file.to_owned()))
            .filter(|(at, _)| now.saturating_duration_since(*at) < fresh)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, broadcast: &str, file: &str, body: Bytes, now: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_CACHED {
            entries.retain(|(_, file), (at, _)| {
                let fresh = if file == PLAYLIST {
                    PLAYLIST_FRESH
                } else {
                    SEGMENT_FRESH
                };
                now.saturating_duration_since(*at) < fresh
            });
            if entries.len() >= MAX_CACHED
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(key, _)| key.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert((broadcast.to_owned(), file.to_owned()), (now, body));
    }
}

/// One file of a broadcast's HLS.
pub async fn file(
    State(state): State<AppState>,
    Path((broadcast, name)): Path<(String, String)>,
) -> Response {
    // Not cached anywhere: the file may exist a moment later.
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such HLS file\n",
        )
            .into_response()
    };
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
    let now = Instant::now();
    let body = match state.hls_cache.get(&broadcast, &name, now) {
        Some(body) => body,
        None => match gateway.connector.hls_file(&shard, &broadcast, &name).await {
            Ok(body) => {
                state.hls_cache.put(&broadcast, &name, body.clone(), now);
                body
            }
            Err(err) => {
                tracing::debug!(%broadcast, file = %name, %err, "HLS file not fetched");
                return not_found();
            }
        },
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
    // The playlist changes every segment (a CDN may hold it a second, so that it asks
    // once for all its players); a segment never changes once listed.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if playlist {
            "public, max-age=1"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_are_kept_half_a_second_segments_longer_and_the_cache_is_bounded() {
        let cache = HlsCache::default();
        let start = Instant::now();
        cache.put("gala", PLAYLIST, Bytes::from_static(b"#EXTM3U"), start);
        cache.put("gala", "seg-1.ts", Bytes::from_static(b"ts"), start);
        let later = start + Duration::from_secs(1);
        assert!(cache.get("gala", PLAYLIST, start).is_some());
        assert!(
            cache.get("gala", PLAYLIST, later).is_none(),
            "a second-old playlist"
        );
        assert!(cache.get("gala", "seg-1.ts", later).is_some());
        assert!(cache.get("other", "seg-1.ts", later).is_none());
        for i in 0..1_000 {
            cache.put(
                "gala",
                &format!("seg-{i}.ts"),
                Bytes::from_static(b"ts"),
                later,
            );
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_CACHED);
    }
}
