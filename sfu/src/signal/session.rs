//! One signaling session: the loop between a WebSocket and the shard core.
//!
//! It is generic over the frame stream and sink so that the protocol rules are tested
//! without a socket. Every frame is bounded and validated here; a bad one gets an
//! `error` frame and the session continues, so a confused client never takes anything
//! down with it. A session that floods is rate-limited, and one that keeps flooding is
//! closed.

use super::protocol::{
    ClientMessage, ErrorCode, MAX_MESSAGE_BYTES, ServerMessage, decode_client, encode_server,
};
use crate::metrics::ShardMetrics;
use crate::shard::api::{CoreHandle, JoinRequest, SessionId};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tutti_service::ratelimit::TokenBucket;

/// One frame from the client side.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// The client closed the socket.
    Close,
}

/// Messages per second a session may send on average, and its burst.
const RATE: (u32, u32) = (50, 200);
/// Descriptions (offers and answers) per second on average, and their burst: each is
/// parsed and negotiated on the media thread, the costliest thing a client can ask for.
/// A client renegotiates when it starts or stops sharing a screen, not many times a second.
const SDP_RATE: (u32, u32) = (2, 10);
/// Simulcast layer changes per second on average, and their burst (a viewer switching
/// the quality of every track at once stays well within it).
const QUALITY_RATE: (u32, u32) = (10, 50);
/// Rate-limited frames after which the session is closed.
const MAX_STRIKES: u32 = 500;
/// Capacity of the queue from the core to this session.
pub const SESSION_QUEUE: usize = 256;
/// How long a socket may stay open without joining a room.
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a session until either side closes it.
pub async fn run_session<S, R>(
    mut sink: S,
    mut stream: R,
    core: CoreHandle,
    metrics: Arc<ShardMetrics>,
) where
    S: Sink<String> + Unpin,
    R: Stream<Item = Incoming> + Unpin,
{
    let (events_tx, mut events_rx) = mpsc::channel::<ServerMessage>(SESSION_QUEUE);
    let mut session: Option<SessionId> = None;
    let mut budget = TokenBucket::new(RATE.0, RATE.1);
    let mut sdp_budget = TokenBucket::new(SDP_RATE.0, SDP_RATE.1);
    let mut quality_budget = TokenBucket::new(QUALITY_RATE.0, QUALITY_RATE.1);
    let mut strikes = 0u32;
    let join_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(join_deadline), if session.is_none() => {
                let _ = sink.send(error(&metrics, ErrorCode::NotJoined, "no join within 30 s; closing")).await;
                break;
            }
            frame = stream.next() => {
                let text = match frame {
                    None | Some(Incoming::Close) => break,
                    Some(Incoming::Binary) => {
                        let reply = error(&metrics, ErrorCode::BadMessage, "binary frames are not part of the protocol");
                        if sink.send(reply).await.is_err() { break; }
                        continue;
                    }
                    Some(Incoming::Text(text)) => text,
                };
                if !budget.take(Instant::now()) {
                    strikes += 1;
                    if strikes > MAX_STRIKES {
                        let _ = sink.send(error(&metrics, ErrorCode::RateLimited, "too many messages; closing")).await;
                        break;
                    }
                    if sink.send(error(&metrics, ErrorCode::RateLimited, "too many messages; slow down")).await.is_err() {
                        break;
                    }
                    continue;
                }
                let reply = match decode_client(&text) {
                    Err(err) => Some(error(&metrics, err.code, &err.message)),
                    Ok(ClientMessage::Offer { .. } | ClientMessage::Answer { .. })
                        if !sdp_budget.take(Instant::now()) =>
                    {
                        strikes += 1;
                        Some(error(&metrics, ErrorCode::RateLimited, "too many offers and answers; slow down"))
                    }
                    Ok(ClientMessage::SetQuality { .. }) if !quality_budget.take(Instant::now()) => {
                        strikes += 1;
                        Some(error(&metrics, ErrorCode::RateLimited, "too many quality changes; slow down"))
                    }
                    Ok(message) => handle(message, &mut session, &core, &events_tx, &metrics).await,
                };
                if let Some(reply) = reply
                    && sink.send(reply).await.is_err()
                {
                    break;
                }
            }
            event = events_rx.recv(), if session.is_some() => {
                let Some(event) = event else { break };
                let ended = matches!(event, ServerMessage::Left { .. });
                if sink.send(encode_server(&event)).await.is_err() {
                    break;
                }
                if ended {
                    session = None;
                    break;
                }
            }
        }
    }
    if let Some(id) = session {
        core.leave(id).await;
    }
}

/// An error frame, counted in the shard's metrics.
fn error(metrics: &ShardMetrics, code: ErrorCode, message: &str) -> String {
    metrics.error(code);
    encode_server(&ServerMessage::Error {
        code,
        message: message.to_owned(),
    })
}

async fn handle(
    message: ClientMessage,
    session: &mut Option<SessionId>,
    core: &CoreHandle,
    events: &mpsc::Sender<ServerMessage>,
    metrics: &ShardMetrics,
) -> Option<String> {
    match (*session, message) {
        (_, ClientMessage::Ping) => Some(encode_server(&ServerMessage::Pong)),
        (
            None,
            ClientMessage::Join {
                room,
                participant,
                name,
                publish,
                subscribe,
                relay,
                pipe,
                recorder,
                offer_subscriber,
            },
        ) => {
            let request = JoinRequest {
                name: name.unwrap_or_else(|| participant.clone()),
                room,
                participant,
                publish: publish.unwrap_or(true),
                subscribe: subscribe.unwrap_or(true),
                relay: relay.unwrap_or(false),
                pipe: pipe.filter(|_| relay == Some(true)),
                recorder: relay == Some(true) && recorder == Some(true),
                offer_subscriber: relay != Some(true) && offer_subscriber == Some(true),
            };
            match core.join(request, events.clone()).await {
                Ok(id) => {
                    *session = Some(id);
                    None
                }
                Err(err) => Some(encode_server(&ServerMessage::Error {
                    code: err.code,
                    message: err.message,
                })),
            }
        }
        (Some(_), ClientMessage::Join { .. }) => Some(error(
            metrics,
            ErrorCode::AlreadyJoined,
            "this session already joined a room",
        )),
        (None, _) => Some(error(metrics, ErrorCode::NotJoined, "send join first")),
        (Some(id), message) => {
            if core.signal(id, message).await {
                None
            } else {
                Some(error(
                    metrics,
                    ErrorCode::Internal,
                    "the shard is shutting down",
                ))
            }
        }
    }
}

/// Whether a frame of this size is accepted at all (larger ones get
/// `message_too_large` from [`decode_client`]).
pub fn frame_within_limit(len: usize) -> bool {
    len <= MAX_MESSAGE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::api::Command;
    use crate::signal::protocol::decode_server;
    use futures_util::stream;

    /// Runs a session against scripted frames and a fake core that accepts joins.
    async fn script(frames: Vec<Incoming>) -> (Vec<ServerMessage>, Vec<String>) {
        let (tx, mut rx) = mpsc::channel::<Command>(16);
        let core = CoreHandle::new(tx);
        let fake_core = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(command) = rx.recv().await {
                match command {
                    Command::Join { reply, request, .. } => {
                        seen.push(format!("join:{}", request.room));
                        let _ = reply.send(Ok(crate::shard::api::SessionId::for_test(7)));
                    }
                    Command::Signal { message, .. } => seen.push(format!("signal:{message:?}")),
                    Command::Leave { session } => seen.push(format!("leave:{session}")),
                    _ => {}
                }
            }
            seen
        });
        let (out_tx, mut out_rx) = futures_channel();
        run_session(
            out_tx,
            stream::iter(frames),
            core,
            Arc::new(ShardMetrics::new()),
        )
        .await;
        let mut replies = Vec::new();
        while let Ok(frame) = out_rx.try_recv() {
            replies.push(decode_server(&frame).expect("valid server frame"));
        }
        let seen = fake_core.await.expect("fake core");
        (replies, seen)
    }

    fn futures_channel() -> (
        impl Sink<String> + Unpin,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sink = futures_util::sink::unfold(tx, |tx, frame: String| async move {
            tx.send(frame).map_err(|_| ())?;
            Ok::<_, ()>(tx)
        });
        (Box::pin(sink), rx)
    }

    fn rate_limited(replies: &[ServerMessage]) -> usize {
        replies
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .count()
    }

    fn text(s: &str) -> Incoming {
        Incoming::Text(s.to_owned())
    }

    #[tokio::test]
    async fn bad_frames_get_errors_and_the_session_continues() {
        let (replies, seen) = script(vec![
            text("garbage"),
            Incoming::Binary,
            text(r#"{"v":1,"type":"offer","pc":"publisher","sdp":"v=0"}"#),
            text(r#"{"v":9,"type":"ping"}"#),
            text(r#"{"v":1,"type":"join","room":"r1","participant":"p1"}"#),
            text(r#"{"v":1,"type":"join","room":"r1","participant":"p1"}"#),
            text(r#"{"v":1,"type":"ping"}"#),
            text(r#"{"v":1,"type":"leave"}"#),
            Incoming::Close,
        ])
        .await;
        let codes: Vec<_> = replies
            .iter()
            .map(|r| match r {
                ServerMessage::Error { code, .. } => code.as_str(),
                ServerMessage::Pong => "pong",
                _ => "other",
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                "bad_message",
                "bad_message",
                "not_joined",
                "unsupported_version",
                "already_joined",
                "pong"
            ]
        );
        assert_eq!(seen, vec!["join:r1", "signal:Leave", "leave:7"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_never_joins_is_closed() {
        let (tx, _rx) = mpsc::channel::<Command>(1);
        let (out_tx, mut out_rx) = futures_channel();
        let silent = stream::pending::<Incoming>();
        let started = tokio::time::Instant::now();
        run_session(
            out_tx,
            silent,
            CoreHandle::new(tx),
            Arc::new(ShardMetrics::new()),
        )
        .await;
        assert!(started.elapsed() >= JOIN_TIMEOUT);
        let frame = out_rx.try_recv().expect("a closing error");
        assert!(matches!(
            decode_server(&frame),
            Ok(ServerMessage::Error {
                code: ErrorCode::NotJoined,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_flood_is_rate_limited_then_closed() {
        let frames: Vec<Incoming> = (0..(RATE.1 + MAX_STRIKES + 10))
            .map(|_| text(r#"{"v":1,"type":"ping"}"#))
            .collect();
        let (replies, _) = script(frames).await;
        let limited = rate_limited(&replies);
        assert!(limited > 0);
        // The session closed before answering every frame.
        assert!(replies.len() < (RATE.1 + MAX_STRIKES + 10) as usize);
    }

    #[tokio::test]
    async fn offers_and_quality_changes_have_budgets_of_their_own() {
        let mut frames = vec![text(
            r#"{"v":1,"type":"join","room":"r1","participant":"p1"}"#,
        )];
        frames.extend(
            (0..30).map(|_| text(r#"{"v":1,"type":"offer","pc":"publisher","sdp":"v=0"}"#)),
        );
        frames.extend(
            (0..60).map(|_| text(r#"{"v":1,"type":"set_quality","track":"t","quality":"low"}"#)),
        );
        frames.push(text(r#"{"v":1,"type":"ping"}"#));
        frames.push(Incoming::Close);
        let (replies, seen) = script(frames).await;
        let reached = |kind: &str| seen.iter().filter(|s| s.contains(kind)).count();
        // The burst of each reaches the core (a little refill at most); the rest is
        // refused before it costs the media thread anything. Pings still get through.
        assert!((10..=11).contains(&reached("Offer")), "{seen:?}");
        assert!((50..=52).contains(&reached("SetQuality")), "{seen:?}");
        let limited = rate_limited(&replies);
        assert_eq!(limited, 90 - reached("Offer") - reached("SetQuality"));
        assert!(matches!(replies.last(), Some(ServerMessage::Pong)));
    }
}
