//! A client of a shard's admin API for tests: the production client for typed calls, and
//! raw requests (wrong tokens, bad bodies) and metric reads besides.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use tutti_sfu::admin_client::{AdminCallError, ShardAdmin};
use tutti_sfu::shard::api::{PipelineInfo, PipelineSpec, ShardLoad, SubscriberReception};

/// Talks to one shard's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    typed: ShardAdmin,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for the shard at `http` with its admin token.
    pub fn new(http: SocketAddr, token: &str) -> Self {
        let base = format!("http://{http}");
        Self {
            typed: ShardAdmin::new(&base, token),
            base,
            client: tutti_shard_api::client::http_client(),
        }
    }

    /// Sends a request; returns the status and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Result<(StatusCode, String)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self
            .client
            .request(request)
            .await
            .context("admin request")?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Creates or updates a pipeline.
    pub async fn put_pipeline(&self, name: &str, spec: &PipelineSpec) -> Result<PipelineInfo> {
        Ok(self.typed.put_pipeline(name, spec).await?)
    }

    /// Lists pipelines.
    pub async fn pipelines(&self) -> Result<Vec<PipelineInfo>> {
        Ok(self.typed.pipelines().await?)
    }

    /// How each subscriber of pipeline `name` receives.
    pub async fn subscribers(&self, name: &str) -> Result<Vec<SubscriberReception>> {
        Ok(self.typed.subscribers(name).await?)
    }

    /// Releases a pipeline; the status the shard answered.
    pub async fn release(&self, name: &str) -> Result<StatusCode> {
        match self.typed.release(name).await {
            Ok(()) => Ok(StatusCode::NO_CONTENT),
            Err(AdminCallError::Status { status, .. }) => Ok(status),
            Err(err) => Err(err.into()),
        }
    }

    /// The shard's load.
    pub async fn load(&self) -> Result<ShardLoad> {
        Ok(self.typed.load().await?)
    }

    /// The Prometheus text of the shard.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self.request(Method::GET, "/metrics", None, None).await?.1)
    }

    /// One counter or gauge value from the metrics text (`name{labels}` exactly as exposed).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics().await?;
        crate::metric_value(&text, series).with_context(|| format!("metric {series} not exposed"))
    }
}
