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
}

/// Connects over WebSocket with the shards' signaling token.
pub struct WsConnector {
    token: String,
    networks: crate::shard_urls::ShardNetworks,
}

impl WsConnector {
    /// A connector presenting `token` to shards whose signaling URL is in `networks`.
    pub fn new(token: String, networks: crate::shard_urls::ShardNetworks) -> Self {
        Self { token, networks }
    }
}

#[async_trait]
impl ShardConnector for WsConnector {
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
