//! S3-compatible object storage for recordings: the few requests the uploader makes
//! (`upload.rs`), signed by `rusty-s3` (sans-IO) and sent with hyper over rustls.
//!
//! Requests are presigned URLs, so the same code talks to AWS S3, MinIO, Ceph RGW or any
//! server that speaks the S3 API; credentials come from where AWS's SDKs find them
//! (`credentials.rs`), temporary ones renewed before they expire.

use super::credentials::{
    CredentialSource, MAX_ANSWER, Temporary, container_endpoint_allowed, parse_container_answer,
    parse_sts_answer,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::actions::{
    CompleteMultipartUploadResponse, CreateMultipartUpload, DeleteObjectsResponse, ListObjectsV2,
    ObjectIdentifier, S3Action as _,
};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use url::Url;

/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// How long one request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest response body read (listings, errors, multipart answers).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Files up to this size go up in one request; larger ones as parts of this size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts one multipart upload has at most (S3's own limit).
const MAX_PARTS: u64 = 10_000;
/// Keys one delete request names at most (S3's own limit).
const DELETE_BATCH: usize = 1_000;
/// Attempts of one request before its error is returned.
const ATTEMPTS: u32 = 3;

/// Where recordings go in object storage, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    /// The S3 endpoint (`https://s3.eu-west-1.amazonaws.com`, `http://minio:9000`).
    pub endpoint: Url,
    /// The bucket.
    pub bucket: String,
    /// The region requests are signed for.
    pub region: String,
    /// Prepended to every key (`recordings/`); empty for none.
    pub prefix: String,
    /// Bucket in the path (MinIO and most self-hosted servers) or in the host name.
    pub virtual_host: bool,
    /// How often a recording's new bytes go up while it runs.
    pub upload_every: Duration,
    /// Keep the local files once they are stored whole.
    pub keep_local: bool,
    /// Keys given directly; `None` reads the `AWS_*` variables.
    pub keys: Option<AccessKeys>,
}

/// An access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeys {
    /// The access key's id.
    pub id: String,
    /// Its secret.
    pub secret: String,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeys")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Flags and variables that configure object storage for recordings (shared by the
/// shard and the gateway's local mode).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObjectStoreArgs {
    /// S3-compatible endpoint recordings are also written to, as they go (e.g.
    /// `https://s3.eu-west-1.amazonaws.com`). Credentials come from `AWS_ACCESS_KEY_ID`
    /// and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), or EKS Pod Identity / ECS
    /// (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), or IRSA (`AWS_ROLE_ARN` and
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`). The record dir stays the staging area.
    #[arg(
        id = "record-s3-endpoint",
        long = "record-s3-endpoint",
        env = "TUTTI_RECORD_S3_ENDPOINT"
    )]
    pub endpoint: Option<Url>,
    /// The bucket recordings go to.
    #[arg(
        id = "record-s3-bucket",
        long = "record-s3-bucket",
        env = "TUTTI_RECORD_S3_BUCKET"
    )]
    pub bucket: Option<String>,
    /// The region requests are signed for.
    #[arg(
        id = "record-s3-region",
        long = "record-s3-region",
        env = "TUTTI_RECORD_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    /// A prefix for every key (`recordings/`).
    #[arg(
        id = "record-s3-prefix",
        long = "record-s3-prefix",
        env = "TUTTI_RECORD_S3_PREFIX",
        default_value = ""
    )]
    pub prefix: String,
    /// Address the bucket by host name (AWS's default) instead of by path (MinIO's).
    #[arg(
        id = "record-s3-virtual-host",
        long = "record-s3-virtual-host",
        env = "TUTTI_RECORD_S3_VIRTUAL_HOST"
    )]
    pub virtual_host: bool,
    /// Seconds between uploads of a running recording's new bytes: what a crash can lose.
    #[arg(
        id = "record-upload-every",
        long = "record-upload-every",
        env = "TUTTI_RECORD_UPLOAD_EVERY",
        default_value_t = 10
    )]
    pub upload_every_seconds: u64,
    /// Keep the local copy of a recording once it is stored whole (it is deleted by
    /// default: the record dir is then only a staging area).
    #[arg(
        id = "record-keep-local",
        long = "record-keep-local",
        env = "TUTTI_RECORD_KEEP_LOCAL"
    )]
    pub keep_local: bool,
}

impl ObjectStoreArgs {
    /// The configuration these flags give, if any; why not, when they are inconsistent.
    pub fn config(&self) -> Result<Option<ObjectStoreConfig>, String> {
        let (endpoint, bucket) = match (&self.endpoint, &self.bucket) {
            (None, None) => return Ok(None),
            (Some(endpoint), Some(bucket)) => (endpoint.clone(), bucket.clone()),
            _ => return Err("--record-s3-endpoint and --record-s3-bucket go together".into()),
        };
        if !(1..=3_600).contains(&self.upload_every_seconds) {
            return Err("--record-upload-every is 1 to 3600 seconds".into());
        }
        if self.prefix.len() > 256 || self.prefix.starts_with('/') {
            return Err("--record-s3-prefix is at most 256 bytes, not starting with /".into());
        }
        let config = ObjectStoreConfig {
            endpoint,
            bucket,
            region: self.region.clone(),
            prefix: self.prefix.clone(),
            virtual_host: self.virtual_host,
            upload_every: Duration::from_secs(self.upload_every_seconds),
            keep_local: self.keep_local,
            keys: None,
        };
        config.bucket().map_err(|e| e.to_string())?;
        Ok(Some(config))
    }
}

impl ObjectStoreConfig {
    fn bucket(&self) -> Result<Bucket, StoreError> {
        let style = if self.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        Bucket::new(
            self.endpoint.clone(),
            style,
            self.bucket.clone(),
            self.region.clone(),
        )
        .map_err(|e| StoreError::Config(format!("bucket: {e}")))
    }
}

/// Why a request to object storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot make requests.
    #[error("object storage: {0}")]
    Config(String),
    /// The request did not get an answer.
    #[error("object storage unreachable: {0}")]
    Transport(String),
    /// The server refused it.
    #[error("object storage answered {status}: {body}")]
    Status {
        /// Its status.
        status: StatusCode,
        /// The start of its body (S3's error XML).
        body: String,
    },
    /// A local file could not be read.
    #[error("reading {0}")]
    Io(#[from] std::io::Error),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A bucket recordings are written to.
pub struct ObjectStore {
    config: ObjectStoreConfig,
    bucket: Bucket,
    source: CredentialSource,
    /// Temporary keys from `source`, until shortly before they expire.
    temporary: tokio::sync::Mutex<Option<Temporary>>,
    client: HttpClient,
}

/// Temporary keys are fetched again this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

impl ObjectStore {
    /// A store from `config`, with its keys or else those the environment names (keys,
    /// EKS Pod Identity or ECS, IAM roles for service accounts).
    pub fn from_config(config: ObjectStoreConfig) -> Result<Self, StoreError> {
        let source = match &config.keys {
            Some(keys) => CredentialSource::Keys {
                id: keys.id.clone(),
                secret: keys.secret.clone(),
                token: None,
            },
            None => CredentialSource::from_env().ok_or_else(|| {
                StoreError::Config(
                    "no credentials for object storage: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or run with EKS Pod Identity or IRSA"
                        .into(),
                )
            })?,
        };
        Self::new(config, source)
    }

    /// A store from `config` with credentials from `source`.
    pub fn new(config: ObjectStoreConfig, source: CredentialSource) -> Result<Self, StoreError> {
        let bucket = config.bucket()?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| StoreError::Config(format!("TLS roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            config,
            bucket,
            source,
            temporary: tokio::sync::Mutex::new(None),
            client,
        })
    }

    /// The keys to sign with now: fixed ones, or temporary ones fetched again when they
    /// are about to expire.
    async fn credentials(&self) -> Result<Credentials, StoreError> {
        if let CredentialSource::Keys { id, secret, token } = &self.source {
            return Ok(match token {
                Some(token) => Credentials::new_with_token(id, secret, token),
                None => Credentials::new(id, secret),
            });
        }
        let mut temporary = self.temporary.lock().await;
        let fresh = temporary.as_ref().is_some_and(|t| {
            t.expires.is_none_or(|expires| {
                jiff::Timestamp::now()
                    .checked_add(REFRESH_BEFORE)
                    .is_ok_and(|soon| soon < expires)
            })
        });
        if !fresh {
            match self.fetch_temporary().await {
                Ok(keys) => *temporary = Some(keys),
                // Keys that still work are used until they expire.
                Err(err)
                    if temporary
                        .as_ref()
                        .is_some_and(|t| t.expires.is_some_and(|e| jiff::Timestamp::now() < e)) =>
                {
                    tracing::warn!(%err, "object storage credentials not renewed yet");
                }
                Err(err) => return Err(err),
            }
        }
        let keys = temporary
            .as_ref()
            .ok_or_else(|| StoreError::Config("no credentials".into()))?;
        Ok(match &keys.token {
            Some(token) => Credentials::new_with_token(&keys.id, &keys.secret, token),
            None => Credentials::new(&keys.id, &keys.secret),
        })
    }

    async fn fetch_temporary(&self) -> Result<Temporary, StoreError> {
        let read_token =
            |path: &std::path::Path| std::fs::read_to_string(path).map(|t| t.trim().to_owned());
        match &self.source {
            CredentialSource::Keys { .. } => Err(StoreError::Config("fixed keys".into())),
            CredentialSource::Container {
                uri,
                token_file,
                token,
            } => {
                let url = Url::parse(uri)
                    .map_err(|e| StoreError::Config(format!("credentials endpoint: {e}")))?;
                if !container_endpoint_allowed(&url) {
                    return Err(StoreError::Config(format!(
                        "the credentials endpoint {uri} is neither HTTPS nor on this host or its link"
                    )));
                }
                let authorization = match (token_file, token) {
                    (Some(file), _) => Some(read_token(file)?),
                    (None, token) => token.clone(),
                };
                let headers: Vec<(&str, &str)> = authorization
                    .as_deref()
                    .map(|value| ("authorization", value))
                    .into_iter()
                    .collect();
                let (_, body) = self.send(Method::GET, &url, &headers, Bytes::new()).await?;
                parse_container_answer(&body[..body.len().min(MAX_ANSWER)])
                    .map_err(StoreError::Config)
            }
            CredentialSource::WebIdentity {
                role_arn,
                token_file,
                sts,
            } => {
                let token = read_token(token_file)?;
                let url = CredentialSource::web_identity_url(sts, role_arn, &token)
                    .map_err(StoreError::Config)?;
                let (_, body) = self.send(Method::GET, &url, &[], Bytes::new()).await?;
                parse_sts_answer(&String::from_utf8_lossy(
                    &body[..body.len().min(MAX_ANSWER)],
                ))
                .map_err(StoreError::Config)
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ObjectStoreConfig {
        &self.config
    }

    /// The key of `path` (relative to the recordings) under the configured prefix.
    pub fn key(&self, path: &str) -> String {
        format!("{}{path}", self.config.prefix)
    }

    /// `s3://bucket/key`, how a location is shown.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(hyper::HeaderMap, Bytes), StoreError> {
        self.send_bounded(method, url, headers, body, MAX_RESPONSE)
            .await
    }

    async fn send_bounded(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Bytes,
        limit: usize,
    ) -> Result<(hyper::HeaderMap, Bytes), StoreError> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let mut request = Request::builder().method(method.clone()).uri(url.as_str());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            // S3 wants a length on every request with a body, empty ones included (hyper
            // sends none for an empty body).
            if matches!(method, Method::PUT | Method::POST) {
                request = request.header(hyper::header::CONTENT_LENGTH, body.len());
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|e| StoreError::Config(e.to_string()))?;
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| StoreError::Transport(e.to_string()))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(|e| StoreError::Transport(e.to_string()))?
                    .to_bytes();
                Ok::<_, StoreError>((parts.status, parts.headers, body))
            })
            .await
            .unwrap_or_else(|_| Err(StoreError::Transport("timed out".into())));
            match answer {
                Ok((status, headers, body)) if status.is_success() => return Ok((headers, body)),
                Ok((status, _, body)) => {
                    let error = StoreError::Status {
                        status,
                        body: error_summary(&body),
                    };
                    // A refusal is not retried: only the server's own trouble is.
                    if !status.is_server_error() {
                        return Err(error);
                    }
                    last = Some(error);
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Transport("no attempt".into())))
    }

    /// Writes `body` as the object `key`.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let credentials = self.credentials().await?;
        let url = self
            .bucket
            .put_object(Some(&credentials), key)
            .sign(SIGNED_FOR);
        self.send(Method::PUT, &url, &[], body).await.map(|_| ())
    }

    /// The object `key`, if at most `limit` bytes.
    pub async fn get(&self, key: &str, limit: usize) -> Result<Bytes, StoreError> {
        let credentials = self.credentials().await?;
        let url = self
            .bucket
            .get_object(Some(&credentials), key)
            .sign(SIGNED_FOR);
        self.send_bounded(Method::GET, &url, &[], Bytes::new(), limit)
            .await
            .map(|(_, body)| body)
    }

    /// The size of the object `key`, if it exists.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let credentials = self.credentials().await?;
        let url = self
            .bucket
            .head_object(Some(&credentials), key)
            .sign(SIGNED_FOR);
        match self.send(Method::HEAD, &url, &[], Bytes::new()).await {
            Ok((headers, _)) => Ok(headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            Err(StoreError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the file at `path` as the object `key`: in one request up to
    /// [`PART_SIZE`], as a multipart upload of such parts past it (read one at a time).
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let mut file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        if size <= PART_SIZE as u64 {
            let mut body = Vec::with_capacity(size as usize);
            file.read_to_end(&mut body).await?;
            self.put(key, Bytes::from(body)).await?;
            return Ok(size);
        }
        // S3 takes 10,000 parts at most: a file past 78 GiB goes in larger ones.
        let part_size = (PART_SIZE as u64).max(size.div_ceil(MAX_PARTS)) as usize;
        let credentials = self.credentials().await?;
        let url = self
            .bucket
            .create_multipart_upload(Some(&credentials), key)
            .sign(SIGNED_FOR);
        let (_, body) = self.send(Method::POST, &url, &[], Bytes::new()).await?;
        let created = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&body))
            .map_err(|e| StoreError::Transport(format!("multipart answer: {e}")))?;
        let upload_id = created.upload_id().to_owned();
        let completed = async {
            let etags = self
                .upload_parts(key, &upload_id, &mut file, part_size)
                .await?;
            let credentials = self.credentials().await?;
            let action = self.bucket.complete_multipart_upload(
                Some(&credentials),
                key,
                &upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            let body = action.body();
            let (_, answer) = self
                .send(Method::POST, &url, &[], Bytes::from(body))
                .await?;
            // S3 may answer 200 with an error in the body.
            CompleteMultipartUploadResponse::parse(&String::from_utf8_lossy(&answer)).map_err(
                |_| StoreError::Transport(format!("completing: {}", error_summary(&answer))),
            )?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(error) = completed {
            // Parts of an upload never completed are billed until aborted.
            if let Ok(credentials) = self.credentials().await {
                let url = self
                    .bucket
                    .abort_multipart_upload(Some(&credentials), key, &upload_id)
                    .sign(SIGNED_FOR);
                let _ = self.send(Method::DELETE, &url, &[], Bytes::new()).await;
            }
            return Err(error);
        }
        Ok(size)
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: &mut tokio::fs::File,
        part_size: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut etags = Vec::new();
        let mut part = vec![0u8; part_size];
        loop {
            let mut filled = 0;
            while filled < part_size {
                let read = file.read(&mut part[filled..]).await?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                return Ok(etags);
            }
            let number = u16::try_from(etags.len() + 1)
                .ok()
                .filter(|n| u64::from(*n) <= MAX_PARTS)
                .ok_or_else(|| StoreError::Config("a file that grew past 10,000 parts".into()))?;
            // Keys are fetched for each part: temporary ones may expire during a long upload.
            let credentials = self.credentials().await?;
            let url = self
                .bucket
                .upload_part(Some(&credentials), key, number, upload_id)
                .sign(SIGNED_FOR);
            let (headers, _) = self
                .send(
                    Method::PUT,
                    &url,
                    &[],
                    Bytes::copy_from_slice(&part[..filled]),
                )
                .await?;
            let etag = headers
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| StoreError::Transport("a part's answer has no ETag".into()))?;
            etags.push(etag.to_owned());
            if filled < part_size {
                return Ok(etags);
            }
        }
    }

    /// Deletes the objects `keys` (a missing one is no error).
    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let credentials = self.credentials().await?;
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|key| ObjectIdentifier::new(key.clone()))
                .collect();
            let mut action = self
                .bucket
                .delete_objects(Some(&credentials), objects.iter());
            // Quiet: only the keys that failed are listed.
            action.set_quiet(true);
            let url = action.sign(SIGNED_FOR);
            let (body, md5) = action.body_with_md5();
            let (_, answer) = self
                .send(
                    Method::POST,
                    &url,
                    &[("content-md5", md5.as_str())],
                    Bytes::from(body),
                )
                .await?;
            // Keys that could not be deleted come back inside a 200.
            let answer = String::from_utf8_lossy(&answer);
            match DeleteObjectsResponse::parse(&answer) {
                Ok(result) if result.errors.is_empty() => {}
                Ok(result) => {
                    let first = &result.errors[0];
                    return Err(StoreError::Transport(format!(
                        "{} keys not deleted, the first for {}: {}",
                        result.errors.len(),
                        first.code,
                        first.message
                    )));
                }
                Err(_) if answer.trim().is_empty() => {}
                Err(_) => {
                    return Err(StoreError::Transport(format!(
                        "deleting: {}",
                        error_summary(answer.as_bytes())
                    )));
                }
            }
        }
        Ok(())
    }

    /// The keys under `prefix` with their sizes, at most `limit` of them.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let credentials = self.credentials().await?;
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action: ListObjectsV2<'_> = self.bucket.list_objects_v2(Some(&credentials));
            action.with_prefix(prefix.to_owned());
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let (_, body) = self.send(Method::GET, &url, &[], Bytes::new()).await?;
            let listed = ListObjectsV2::parse_response(&String::from_utf8_lossy(&body))
                .map_err(|e| StoreError::Transport(format!("listing: {e}")))?;
            keys.extend(
                listed
                    .contents
                    .into_iter()
                    .map(|c| (c.key, c.size.unwrap_or(0))),
            );
            token = listed.next_continuation_token;
            if token.is_none() || keys.len() >= limit {
                keys.truncate(limit);
                return Ok(keys);
            }
        }
    }

    /// Makes the bucket (for tests and first installs; an existing one is an error).
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        let credentials = self.credentials().await?;
        let url = self.bucket.create_bucket(&credentials).sign(SIGNED_FOR);
        self.send(Method::PUT, &url, &[], Bytes::new())
            .await
            .map(|_| ())
    }
}

/// What an S3 error body says, without the rest: `SignatureDoesNotMatch` answers echo the
/// signed request, credentials' ids and session tokens included, which must not reach
/// statuses and logs.
fn error_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find('<')?;
        Some(text[start..end].chars().take(200).collect::<String>())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ if text.trim().is_empty() => "no body".into(),
        _ => "an answer that is not S3's".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_keep_only_their_code_and_message() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><CanonicalRequest>GET /x X-Amz-Security-Token=SECRET</CanonicalRequest></Error>";
        let summary = error_summary(body);
        assert_eq!(
            summary,
            "SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        assert!(!summary.contains("SECRET"));
        assert_eq!(error_summary(b""), "no body");
        assert_eq!(
            error_summary(b"<html>proxy</html>"),
            "an answer that is not S3's"
        );
    }
}
