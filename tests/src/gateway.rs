//! The gateway for tests: local mode in this process on free ports, and a raw client of
//! its WebSocket protocol that sees every frame as JSON.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tutti_signaling::config::LocalRooms;
use tutti_signaling::local::{LocalOptions, LocalSystem};
use tutti_signaling::session::GatewayOptions;
use tutti_signaling::turn::IceConfig;

/// The join token secret of test gateways.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";

/// Options for a local system on loopback with free ports.
pub fn local_options(rooms: LocalRooms) -> LocalOptions {
    LocalOptions {
        common: GatewayOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            rooms,
            jwt_secret: Some(JWT_SECRET.into()),
            session_secret: None,
            ice: IceConfig {
                ttl: Duration::from_secs(600),
                ..IceConfig::default()
            },
            region: None,
            trust_forwarded_for: false,
            rooms_per_client: tutti_signaling::guesses::DEFAULT_ROOMS_PER_CLIENT,
            metrics_listen: None,
            sockets: Default::default(),
            turn_grants_per_client: tutti_signaling::guesses::DEFAULT_TURN_GRANTS_PER_CLIENT,
        },
        shards: 2,
        media_bind: std::net::IpAddr::from([127, 0, 0, 1]),
        media_port: 0,
        advertise_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        shard_max_participants: 100,
        record_dir: None,
        record_retention_days: 0,
        record_compose: false,
        record_store: None,
        hls_dir: None,
    }
}

/// Starts a local system.
pub async fn start(options: LocalOptions) -> Result<LocalSystem> {
    LocalSystem::start(options)
        .await
        .map_err(|e| anyhow::anyhow!("local system: {e}"))
}

/// The gateway's WebSocket URL.
pub fn ws_url(system: &LocalSystem) -> String {
    format!("ws://{}/v1/ws", system.server.addr)
}

/// A client WebSocket to `url` (`ws://host:port/…`) from the local address `source`;
/// the HTTP status when the upgrade is refused is in the error.
pub async fn connect_raw_from(
    url: &str,
    source: std::net::IpAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let target: std::net::SocketAddr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .context("a ws://host:port/ URL")?
        .parse()?;
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    let (socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("gateway upgrade")?;
    Ok(socket)
}

/// One end of a client WebSocket, frames as JSON.
pub struct GatewayClient {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Value>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl GatewayClient {
    /// Connects.
    pub async fn connect(url: &str) -> Result<Self> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("gateway connect")?;
        Ok(Self::over(socket))
    }

    /// Connects from `source` (one of 127.0.0.0/8, to play many client addresses).
    pub async fn connect_from(url: &str, source: std::net::IpAddr) -> Result<Self> {
        let socket = connect_raw_from(url, source).await?;
        Ok(Self::over(socket))
    }

    fn over<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (incoming, rx) = mpsc::unbounded_channel::<Value>();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = outgoing.recv() => match out {
                        Some(frame) => if sink.send(frame).await.is_err() { break },
                        None => break,
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(value) = serde_json::from_str(&text) {
                                let _ = incoming.send(value);
                            }
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
            let _ = closed_tx.send(true);
        });
        Self { tx, rx, closed }
    }

    /// Sends a JSON message (`v: 1` is added when missing).
    pub fn send(&self, mut message: Value) {
        if let Some(object) = message.as_object_mut() {
            object.entry("v").or_insert(Value::from(1));
        }
        let _ = self.tx.send(Message::Text(message.to_string().into()));
    }

    /// Sends any text frame.
    pub fn send_raw(&self, text: String) {
        let _ = self.tx.send(Message::Text(text.into()));
    }

    /// The next frame within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .context("no frame in time")?
            .context("socket closed")
    }

    /// Frames until one of `kind`, which is returned.
    pub async fn until(&mut self, kind: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .next(left)
                .await
                .with_context(|| format!("waiting for {kind}"))?;
            if frame["type"] == kind {
                return Ok(frame);
            }
        }
    }

    /// Joins and returns the `joined` frame, or fails with the error code.
    pub async fn join(&mut self, join: Value) -> Result<Value> {
        let mut join = join;
        join["type"] = Value::from("join");
        self.send(join);
        let reply = self.next(Duration::from_secs(15)).await?;
        match reply["type"].as_str() {
            Some("joined") => Ok(reply),
            Some("error") => bail!("{}", reply["code"].as_str().unwrap_or("?")),
            _ => bail!("unexpected reply {reply}"),
        }
    }

    /// Whether the gateway has closed the socket.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the socket closes.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.closed.wait_for(|closed| *closed))
            .await
            .context("socket still open")?
            .context("watch gone")?;
        Ok(())
    }
}

/// A GET request; the status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_with(addr, path, None).await
}

/// A GET request with an optional bearer token; the status and body.
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    http_request(hyper::Method::GET, addr, path, bearer).await
}

/// A POST request with an empty body and an optional bearer token; the status and body.
pub async fn http_post_with(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    http_request(hyper::Method::POST, addr, path, bearer).await
}

/// A DELETE request with an optional bearer token; the status and body.
pub async fn http_delete_with(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    http_request(hyper::Method::DELETE, addr, path, bearer).await
}

async fn http_request(
    method: hyper::Method,
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| vec![("authorization", value)])
        .unwrap_or_default();
    let reply = http_send(addr, method, path, &headers, Vec::new()).await?;
    Ok((reply.status, reply.body))
}

/// What an HTTP request got back.
#[derive(Debug)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request with any method, headers and body.
pub async fn http_send(
    addr: std::net::SocketAddr,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpReply> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
