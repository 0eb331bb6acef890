//! A WebSocket client of the shard's signaling endpoint.

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tutti_sfu::signal::protocol::{ClientMessage, ServerMessage, decode_server, encode_client};

/// Frames to send: protocol messages, or raw text (to test bad input).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A well-formed message.
    Message(ClientMessage),
    /// Any text frame.
    Raw(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// One side of a signaling connection.
pub struct SignalClient {
    /// Frames to send.
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Messages received (undecodable frames are dropped).
    pub rx: mpsc::UnboundedReceiver<ServerMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl SignalClient {
    /// Connects to `url` with a bearer token.
    pub async fn connect(url: &str, token: &str) -> Result<Self> {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("signaling connect")?;
        let (mut sink, mut stream) = socket.split();
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (in_tx, rx) = mpsc::unbounded_channel::<ServerMessage>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let frame = match out {
                            Some(Outgoing::Message(m)) => Message::Text(encode_client(&m).into()),
                            Some(Outgoing::Raw(text)) => Message::Text(text.into()),
                            Some(Outgoing::Binary(bytes)) => Message::Binary(bytes.into()),
                            None => {
                                let _ = sink.send(Message::Close(None)).await;
                                break;
                            }
                        };
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(message) = decode_server(&text)
                                && in_tx.send(message).is_err()
                            {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
        });
        Ok(Self { tx, rx, task })
    }

    /// Connects and joins `room` as `id`, receiving only, and waits up to `timeout` for
    /// `joined`.
    pub async fn join_subscriber(
        url: &str,
        token: &str,
        room: &str,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Self> {
        let mut signal = Self::connect(url, token).await?;
        signal.send(ClientMessage::Join {
            room: room.into(),
            participant: id.into(),
            name: None,
            publish: Some(false),
            subscribe: Some(true),
            relay: None,
            pipe: None,
            recorder: None,
            offer_subscriber: None,
        });
        match tokio::time::timeout(timeout, signal.rx.recv()).await {
            Ok(Some(ServerMessage::Joined { .. })) => Ok(signal),
            other => anyhow::bail!("{id}: join failed: {other:?}"),
        }
    }

    /// Sends a message.
    pub fn send(&self, message: ClientMessage) {
        let _ = self.tx.send(Outgoing::Message(message));
    }

    /// Drops the connection without a close handshake, as a crashed client would.
    pub fn kill(self) {
        self.task.abort();
    }
}
