//! A client of a shard's admin API, as the operator uses it.

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use tutti_sfu::shard::api::{PipelineInfo, PipelineSpec, ShardLoad};

/// Talks to one shard's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for the shard at `http` with its admin token.
    pub fn new(http: SocketAddr, token: &str) -> Self {
        Self {
            base: format!("http://{http}"),
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
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

    async fn authed(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String)> {
        let token = self.token.clone();
        self.request(method, path, Some(&token), body).await
    }

    /// Creates or updates a pipeline.
    pub async fn put_pipeline(&self, name: &str, spec: &PipelineSpec) -> Result<PipelineInfo> {
        let (status, body) = self
            .authed(
                Method::PUT,
                &format!("/v1/pipelines/{name}"),
                Some(serde_json::to_string(spec)?),
            )
            .await?;
        if !status.is_success() {
            bail!("PUT pipeline {name}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Lists pipelines.
    pub async fn pipelines(&self) -> Result<Vec<PipelineInfo>> {
        let (status, body) = self.authed(Method::GET, "/v1/pipelines", None).await?;
        if !status.is_success() {
            bail!("GET pipelines: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Releases a pipeline.
    pub async fn release(&self, name: &str) -> Result<StatusCode> {
        Ok(self
            .authed(Method::DELETE, &format!("/v1/pipelines/{name}"), None)
            .await?
            .0)
    }

    /// The shard's load.
    pub async fn load(&self) -> Result<ShardLoad> {
        let (status, body) = self.authed(Method::GET, "/v1/load", None).await?;
        if !status.is_success() {
            bail!("GET load: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The Prometheus text of the shard.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self.request(Method::GET, "/metrics", None, None).await?.1)
    }

    /// One counter or gauge value from the metrics text (`name{labels}` exactly as exposed).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .with_context(|| format!("metric {series} not exposed"))
    }
}
