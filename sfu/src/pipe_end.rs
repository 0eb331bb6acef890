//! The far end of a relay pipe in a process that only receives a room's media (the
//! recorder, the HLS packager): its keys, the shard's address once it answers, and RTCP
//! (NACK, PLI) sent back protected.

use crate::srtp::{Profile, SrtcpSender, SrtpReceiver};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use std::net::{IpAddr, SocketAddr};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use tutti_shard_api::protocol::{ClientMessage, PipeEnd, encode_client};

type Signaling =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A receive-only session at a room's shard: its media socket, its signaling both ways,
/// and its end of the pipe.
pub struct Joining {
    /// Where the shard sends the room's media.
    pub socket: UdpSocket,
    /// Messages to the shard.
    pub sink: SplitSink<Signaling, Message>,
    /// Messages from the shard.
    pub stream: SplitStream<Signaling>,
    /// This end of the pipe.
    pub pipe: Pipe,
}

/// Joins `room` at the shard whose signaling URL is `url` as a hidden relay session
/// `<kind>.<name>` that receives everything over a pipe to a socket bound on `bind`;
/// `recorder` tells the room it is being recorded.
pub async fn join_receiving(
    url: &str,
    signal_token: &str,
    room: &str,
    (kind, name): (&str, &str),
    bind: IpAddr,
    recorder: bool,
) -> Result<Joining, String> {
    let socket = UdpSocket::bind(SocketAddr::new(bind, 0))
        .await
        .map_err(|e| format!("no media socket: {e}"))?;
    let media = socket.local_addr().map_err(|e| e.to_string())?;
    let ws = crate::relay::connect_signaling(url, signal_token).await?;
    let (mut sink, stream) = ws.split();
    let (own, pipe) = own_end(media)?;
    let participant: String = format!("{kind}.{name}").chars().take(64).collect();
    let join = ClientMessage::Join {
        room: room.to_owned(),
        participant,
        name: Some(kind.to_owned()),
        publish: Some(false),
        subscribe: Some(true),
        relay: Some(true),
        pipe: Some(own),
        recorder: recorder.then_some(true),
        offer_subscriber: None,
    };
    sink.send(Message::Text(encode_client(&join).into()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Joining {
        socket,
        sink,
        stream,
        pipe,
    })
}

/// The signaling URL to receive from, which the control plane may change (the room
/// moved), and the [`crate::recorder::Locate`] that reads it.
pub fn movable_source(
    from: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    crate::recorder::Locate,
) {
    let source = std::sync::Arc::new(std::sync::Mutex::new(from.to_owned()));
    let read = source.clone();
    (
        source,
        std::sync::Arc::new(move || read.lock().ok().map(|url| url.clone())),
    )
}

/// This end of the pipe and, once the shard answered, the shard's.
pub struct Pipe {
    /// Decrypts what the shard sends, once it answered.
    pub receiver: Option<SrtpReceiver>,
    rtcp: SrtcpSender,
    /// The shard's media address, once it answered.
    pub shard: Option<SocketAddr>,
    /// This end's SSRC (the sender of its RTCP).
    pub ssrc: u32,
}

/// This end of a new pipe (as an edge's: `crate::relay::own_end`), and the SRTCP sender
/// it protects with.
pub fn own_end(media: SocketAddr) -> Result<(PipeEnd, Pipe), String> {
    let (end, key) = crate::relay::own_end(media);
    let (key, salt) = decode_key(&key)?;
    let rtcp = SrtcpSender::new(Profile::AeadAes128Gcm, &key, &salt).map_err(|e| e.to_string())?;
    let ssrc = end.ssrc;
    Ok((
        end,
        Pipe {
            receiver: None,
            rtcp,
            shard: None,
            ssrc,
        },
    ))
}

/// The master key and salt of a pipe end's base64.
pub fn decode_key(text: &str) -> Result<([u8; 16], [u8; 12]), String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| "the shard's pipe key is not base64".to_owned())?;
    let (Ok(key), Ok(salt)) = (
        <[u8; 16]>::try_from(bytes.get(..16).unwrap_or_default()),
        <[u8; 12]>::try_from(bytes.get(16..).unwrap_or_default()),
    ) else {
        return Err("the shard's pipe key is not 16 + 12 bytes".into());
    };
    Ok((key, salt))
}

/// Protects a compound RTCP packet and sends it to the shard.
pub async fn send_rtcp(
    pipe: &mut Pipe,
    socket: &UdpSocket,
    packets: &[Box<dyn rtc::rtcp::packet::Packet>],
) {
    let Some(shard) = pipe.shard else {
        return;
    };
    let Ok(plain) = rtc::rtcp::packet::marshal(packets) else {
        return;
    };
    let mut buf = bytes::BytesMut::with_capacity(plain.len() + pipe.rtcp.overhead());
    buf.extend_from_slice(&plain);
    if pipe.rtcp.protect(&mut buf).is_ok() {
        let _ = socket.send_to(&buf, shard).await;
    }
}

impl Pipe {
    /// Takes the shard's end of the pipe: its media address and keys.
    pub fn answer(&mut self, end: &PipeEnd) -> Result<(), String> {
        let shard: SocketAddr = end
            .media
            .parse()
            .map_err(|_| "the shard's pipe address is not ip:port".to_owned())?;
        let (key, salt) = decode_key(&end.key)?;
        self.receiver = Some(
            SrtpReceiver::new(Profile::AeadAes128Gcm, &key, &salt).map_err(|e| e.to_string())?,
        );
        self.shard = Some(shard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_keys_are_checked() {
        let key = BASE64.encode([1u8; 28]);
        let (k, s) = decode_key(&key).expect("a whole key");
        assert_eq!((k, s), ([1u8; 16], [1u8; 12]));
        assert!(decode_key(&BASE64.encode([1u8; 27])).is_err());
        assert!(decode_key("!!").is_err());
    }
}
