//! The shard's HLS routes: packaging asked for by the control plane (admin token), and a
//! packaged broadcast's files for gateways to serve (signaling token).

use super::registry::{Packagers, PackagingError};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tutti_shard_api::hls::PackagingSpec;

/// The largest file served (a one-second segment is far smaller).
const MAX_FILE: u64 = 4 * 1024 * 1024;

type Shared = Option<Arc<Packagers>>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

fn unavailable() -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "not_available",
        "this shard packages no HLS: start it with --hls-dir",
    )
}

fn packaging_error(err: PackagingError) -> Response {
    let (status, code) = match err {
        PackagingError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        PackagingError::Conflict => (StatusCode::CONFLICT, "conflict"),
        PackagingError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        PackagingError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
        PackagingError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    error(status, code, &err.to_string())
}

/// `GET /v1/hls`, `PUT`/`DELETE /v1/hls/{broadcast}`: for the admin router.
pub fn admin_routes<S: Clone + Send + Sync + 'static>(packagers: Shared) -> Router<S> {
    Router::new()
        .route("/v1/hls", get(list))
        .route(
            "/v1/hls/{broadcast}",
            axum::routing::put(put).delete(delete),
        )
        .with_state(packagers)
}

/// `GET /v1/hls/{broadcast}/{file}`: for the signaling router.
pub fn file_routes<S: Clone + Send + Sync + 'static>(packagers: Shared) -> Router<S> {
    Router::new()
        .route("/v1/hls/{broadcast}/{file}", get(file))
        .with_state(packagers)
}

async fn list(State(state): State<Shared>) -> Response {
    match &state {
        Some(packagers) => Json(packagers.list()).into_response(),
        None => unavailable(),
    }
}

async fn put(
    State(state): State<Shared>,
    Path(broadcast): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(packagers) = &state else {
        return unavailable();
    };
    let spec: PackagingSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(err) => return error(StatusCode::BAD_REQUEST, "invalid", &err.to_string()),
    };
    match packagers.put(&broadcast, &spec) {
        Ok((true, packaging)) => (StatusCode::CREATED, Json(packaging)).into_response(),
        Ok((false, packaging)) => Json(packaging).into_response(),
        Err(err) => packaging_error(err),
    }
}

async fn delete(State(state): State<Shared>, Path(broadcast): Path<String>) -> Response {
    match &state {
        Some(packagers) => match packagers.stop(&broadcast).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(err) => packaging_error(err),
        },
        None => unavailable(),
    }
}

async fn file(
    State(state): State<Shared>,
    Path((broadcast, name)): Path<(String, String)>,
) -> Response {
    let Some(packagers) = &state else {
        return unavailable();
    };
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such HLS file");
    let Some(path) = packagers.file(&broadcast, &name) else {
        return not_found();
    };
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_FILE => {}
        _ => return not_found(),
    }
    match tokio::fs::read(&path).await {
        Ok(body) => body.into_response(),
        Err(_) => not_found(),
    }
}
