//! The gateway's side of a client's session on its shard: one WebSocket per participant to
//! the shard's signaling endpoint, authenticated with the shard signaling token.
//!
//! A link is a pair of bounded channels; a task moves frames between them and the socket.
//! When the shard goes away the incoming channel closes, which is how a session learns
//! that it must send its client elsewhere.

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tutti_store::ShardRecord;

/// Frames queued each way on one link.
const LINK_QUEUE: usize = 256;
/// Deadline to open a link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted from a shard.
const MAX_SHARD_FRAME: usize = 1024 * 1024;

/// A participant's signaling channel to its shard.
pub struct ShardLink {
    /// Frames to the shard.
    pub tx: mpsc::Sender<String>,
    /// Frames from the shard; closes when the shard connection ends.
    pub rx: mpsc::Receiver<String>,
}

/// Opens links to shards.
#[async_trait]
pub trait ShardConnector: Send + Sync {
    /// Opens a link to `shard`'s signaling endpoint.
    async fn connect(&self, shard: &ShardRecord) -> Result<ShardLink, String>;

    /// A file of a broadcast's HLS on `shard`, which packages it (`/v1/hls/…`, with the
    /// signaling token).
    async fn hls_file(
        &self,
        shard: &ShardRecord,
        broadcast: &str,
        file: &str,
    ) -> Result<bytes::Bytes, String> {
        let _ = (shard, broadcast, file);
        Err("this connector reaches no HLS".into())
    }
}

/// The HTTP base of a shard's signaling URL (`ws://host:port/v1/signal` →
/// `http://host:port`).
pub fn http_base(signal_url: &str) -> Option<String> {
    let rest = signal_url.strip_suffix("/v1/signal")?;
    if let Some(host) = rest.strip_prefix("ws://") {
        Some(format!("http://{host}"))
    } else {
        rest.strip_prefix("wss://")
            .map(|host| format!("https://{host}"))
    }
}

/// Connects over WebSocket with the shards' signaling token.
pub struct WsConnector {
    token: String,
    networks: crate::shard_urls::ShardNetworks,
    /// Connections to shards' HTTP, shared by every HLS request.
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl WsConnector {
    /// A connector presenting `token` to shards whose signaling URL is in `networks`.
    pub fn new(token: String, networks: crate::shard_urls::ShardNetworks) -> Self {
        Self {
            token,
            networks,
            http: tutti_shard_api::client::http_client(),
        }
    }
}

#[async_trait]
impl ShardConnector for WsConnector {
    async fn hls_file(
        &self,
        shard: &ShardRecord,
        broadcast: &str,
        file: &str,
    ) -> Result<bytes::Bytes, String> {
        // The token goes only where signaling links may go.
        if let Some(why) = self.networks.refusal(&shard.signal_url) {
            return Err(format!("shard {}: {why}", shard.id));
        }
        let base = http_base(&shard.signal_url)
            .ok_or_else(|| format!("bad signal URL {}", shard.signal_url))?;
        tutti_shard_api::client::ShardAdmin::with_client(&base, &self.token, self.http.clone())
            .hls_file(broadcast, file)
            .await
            .map_err(|e| e.to_string())
    }

    async fn connect(&self, shard: &ShardRecord) -> Result<ShardLink, String> {
        if let Some(why) = self.networks.refusal(&shard.signal_url) {
            tracing::warn!(shard = %shard.id, "not sending the signaling token: {why}");
            return Err(format!("shard {}: {why}", shard.id));
        }
        let mut request = shard
            .signal_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad signal URL {}: {e}", shard.signal_url))?;
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| "the signaling token is not a valid header value".to_owned())?;
        request.headers_mut().insert("authorization", bearer);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_SHARD_FRAME))
            .max_frame_size(Some(MAX_SHARD_FRAME))
            // One link per session: a small read buffer (grown for a long message
            // only) and no write batching, which would only add latency.
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("shard {} did not answer in time", shard.id))?
            .map_err(|e| format!("shard {}: {e}", shard.id))?;
        let (mut sink, mut stream) = socket.split();
        let (to_shard, mut outgoing) = mpsc::channel::<String>(LINK_QUEUE);
        let (incoming, from_shard) = mpsc::channel::<String>(LINK_QUEUE);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = outgoing.recv() => match frame {
                        Some(text) => {
                            if sink.send(Message::Text(text.into())).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if incoming.send(text.to_string()).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Binary(_))) => {}
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    },
                }
            }
        });
        Ok(ShardLink {
            tx: to_shard,
            rx: from_shard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_http_base_is_its_signaling_url_without_the_path() {
        assert_eq!(
            http_base("ws://10.0.0.7:7880/v1/signal").as_deref(),
            Some("http://10.0.0.7:7880")
        );
        assert_eq!(
            http_base("wss://shard-1.example:443/v1/signal").as_deref(),
            Some("https://shard-1.example:443")
        );
        assert_eq!(http_base("http://10.0.0.7:7880/v1/signal"), None);
        assert_eq!(http_base("ws://10.0.0.7:7880/v1/other"), None);
    }
}
