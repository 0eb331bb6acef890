//! A client of a shard's admin API: what the operator and local mode's placer use to
//! create, list and release pipelines and to read a shard's load.
//!
//! Every call has a deadline and reads at most [`MAX_RESPONSE_BYTES`], so a shard that
//! hangs or answers with garbage costs its caller one error, never a stuck task.

use crate::admin::{PipelineInfo, PipelineSpec, ShardLoad, SubscriberReception};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Largest admin response read (a list of a thousand pipelines is about 400 KiB).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Deadline of one admin call.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a pooled connection to a shard stays idle before it is dropped. A shard closes
/// a connection whose next request has not arrived within 10 s (its HTTP server's
/// header-read timeout); a client that reuses it just then gets "connection closed before
/// message completed" (the operator, refreshing broadcasts every 10 s, did). Dropping
/// connections well before the shard does avoids that race.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

/// An HTTP/1 client whose pooled connections never outlive the shard's patience with them
/// ([`POOL_IDLE`]).
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build_http()
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// The shard could not be reached, or did not answer in time.
    #[error("shard unreachable: {0}")]
    Unreachable(String),
    /// The shard answered with an error status.
    #[error("shard answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The (truncated) body.
        body: String,
    },
    /// The shard's answer could not be decoded.
    #[error("unreadable shard answer: {0}")]
    Decode(String),
}

impl AdminCallError {
    /// Whether the shard said the pipeline does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// Talks to one shard's admin API.
#[derive(Clone)]
pub struct ShardAdmin {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl ShardAdmin {
    /// A client for the admin API at `base` (e.g. `http://10.0.0.7:7880`).
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: http_client(),
        }
    }

    /// A client for the API at `base` that shares `client`'s connections.
    pub fn with_client(
        base: &str,
        token: &str,
        client: Client<HttpConnector, Full<Bytes>>,
    ) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client,
        }
    }

    /// A file of a broadcast's HLS directory on the shard packaging it (for gateways:
    /// this client's token is then the signaling token).
    pub async fn hls_file(&self, broadcast: &str, file: &str) -> Result<Bytes, AdminCallError> {
        self.call(Method::GET, &format!("/v1/hls/{broadcast}/{file}"), None)
            .await
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, AdminCallError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AdminCallError::Unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| AdminCallError::Unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| AdminCallError::Decode(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                Ok(bytes)
            } else {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
                Err(AdminCallError::Status { status, body: text })
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| AdminCallError::Unreachable(format!("no answer within {TIMEOUT:?}")))?
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminCallError> {
        serde_json::from_slice(bytes).map_err(|e| AdminCallError::Decode(e.to_string()))
    }

    /// Creates a pipeline, or updates its spec.
    pub async fn put_pipeline(
        &self,
        name: &str,
        spec: &PipelineSpec,
    ) -> Result<PipelineInfo, AdminCallError> {
        let body =
            serde_json::to_string(spec).map_err(|e| AdminCallError::Decode(e.to_string()))?;
        let bytes = self
            .call(Method::PUT, &format!("/v1/pipelines/{name}"), Some(body))
            .await?;
        Self::decode(&bytes)
    }

    /// Every pipeline the shard hosts.
    pub async fn pipelines(&self) -> Result<Vec<PipelineInfo>, AdminCallError> {
        Self::decode(&self.call(Method::GET, "/v1/pipelines", None).await?)
    }

    /// How each subscriber of pipeline `name` receives.
    pub async fn subscribers(
        &self,
        name: &str,
    ) -> Result<Vec<SubscriberReception>, AdminCallError> {
        Self::decode(
            &self
                .call(
                    Method::GET,
                    &format!("/v1/pipelines/{name}/subscribers"),
                    None,
                )
                .await?,
        )
    }

    /// Releases a pipeline, ending its sessions.
    pub async fn release(&self, name: &str) -> Result<(), AdminCallError> {
        self.call(Method::DELETE, &format!("/v1/pipelines/{name}"), None)
            .await
            .map(|_| ())
    }

    /// The shard's load.
    pub async fn load(&self) -> Result<ShardLoad, AdminCallError> {
        Self::decode(&self.call(Method::GET, "/v1/load", None).await?)
    }

    /// Starts recording, or moves a recording to the room's new shard.
    pub async fn put_recording(
        &self,
        name: &str,
        spec: &crate::recording::RecordingSpec,
    ) -> Result<crate::recording::RecordingStatus, AdminCallError> {
        let body =
            serde_json::to_string(spec).map_err(|e| AdminCallError::Decode(e.to_string()))?;
        Self::decode(
            &self
                .call(Method::PUT, &format!("/v1/recordings/{name}"), Some(body))
                .await?,
        )
    }

    /// A recording's status.
    pub async fn recording(
        &self,
        name: &str,
    ) -> Result<crate::recording::RecordingStatus, AdminCallError> {
        Self::decode(
            &self
                .call(Method::GET, &format!("/v1/recordings/{name}"), None)
                .await?,
        )
    }

    /// Stops a recording; its status once its files are ended.
    pub async fn stop_recording(
        &self,
        name: &str,
    ) -> Result<crate::recording::RecordingStatus, AdminCallError> {
        Self::decode(
            &self
                .call(Method::DELETE, &format!("/v1/recordings/{name}"), None)
                .await?,
        )
    }

    /// Starts packaging a broadcast as HLS, or points its packager at the stage's new
    /// shard.
    pub async fn put_packaging(
        &self,
        broadcast: &str,
        spec: &crate::hls::PackagingSpec,
    ) -> Result<crate::hls::Packaging, AdminCallError> {
        let body =
            serde_json::to_string(spec).map_err(|e| AdminCallError::Decode(e.to_string()))?;
        Self::decode(
            &self
                .call(Method::PUT, &format!("/v1/hls/{broadcast}"), Some(body))
                .await?,
        )
    }

    /// The broadcasts the shard packages.
    pub async fn packagings(&self) -> Result<Vec<crate::hls::Packaging>, AdminCallError> {
        Self::decode(&self.call(Method::GET, "/v1/hls", None).await?)
    }

    /// Stops packaging a broadcast.
    pub async fn stop_packaging(&self, broadcast: &str) -> Result<(), AdminCallError> {
        self.call(Method::DELETE, &format!("/v1/hls/{broadcast}"), None)
            .await
            .map(|_| ())
    }

    /// Starts draining the shard.
    pub async fn drain(&self) -> Result<ShardLoad, AdminCallError> {
        Self::decode(&self.call(Method::POST, "/v1/drain", None).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A keep-alive HTTP server answering every request with an empty list; counts the
    /// connections it accepted.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await
                        && n > 0
                    {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (base, accepted)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_pool_idle_is_not_reused() {
        let (base, accepted) = counting_server().await;
        let admin = ShardAdmin::new(&base, "token");
        admin.pipelines().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        admin.pipelines().await.unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "a busy connection is reused"
        );
        // The virtual clock passes the pool's idle limit: the next call opens a new
        // connection instead of racing the shard's close of the old one.
        tokio::time::sleep(POOL_IDLE + Duration::from_secs(1)).await;
        admin.pipelines().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
