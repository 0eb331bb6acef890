//! The client WebSocket protocol, version 1 (reference: `docs/protocol.md`).
//!
//! A client speaks to a gateway exactly as a participant speaks to a shard, except for
//! the handshake: its `join` names a room, a nickname and a password or a signed token
//! instead of a participant id, and its `joined` carries the ICE servers (STUN and
//! time-limited TURN credentials) to use. Every other message, both ways, is the shard's
//! protocol message of the same type (`tutti_shard_api::protocol`), validated by the same
//! code, so the gateway relays them without a second definition to drift. A gateway adds
//! `reconnect` (join again: the gateway is stopping or the room moved) and the admission
//! error codes.

use serde::{Deserialize, Serialize};
use tutti_shard_api::protocol::{
    self as shard, ErrorCode as ShardCode, PROTOCOL_VERSION, ParticipantInfo, valid_id,
};

/// The largest frame a client may send.
pub const MAX_MESSAGE_BYTES: usize = shard::MAX_MESSAGE_BYTES;
/// The longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 256;
/// The longest join token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Stable error codes of the client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown `type`, fields missing or out of bounds, a binary frame, or a frame
    /// over 64 KiB.
    BadMessage,
    /// `v` is not 1.
    UnsupportedVersion,
    /// The join token is missing where required, forged, expired or for another room.
    Unauthorized,
    /// The room needs a password and none was given.
    PasswordRequired,
    /// The password is wrong.
    WrongPassword,
    /// No such room, and rooms are not created on first join here.
    RoomNotFound,
    /// The room holds `maxParticipants` already.
    RoomFull,
    /// Someone in the room already has this nickname (ignoring case).
    NicknameTaken,
    /// A message that needs a joined session came before `join`.
    NotJoined,
    /// `join` on a session that already joined.
    AlreadyJoined,
    /// A message that does not fit the negotiation state.
    OutOfOrder,
    /// Not permitted (e.g. publishing with a subscribe-only token).
    Forbidden,
    /// An SDP or candidate could not be applied.
    SdpRejected,
    /// Your browser cannot receive a track's codec.
    CodecUnsupported,
    /// No such track.
    TrackNotFound,
    /// A direct message to someone who is not in the room.
    ParticipantNotFound,
    /// No shard can take the room now; try again shortly.
    ShardUnavailable,
    /// The cluster's live state cannot be reached: joins fail until it is back, while
    /// calls already running go on.
    Unavailable,
    /// Too many messages, or too many join attempts.
    RateLimited,
    /// The broadcast's WebRTC audience is full: watch it over HLS instead.
    UseHls,
    /// The gateway or shard fell behind sending to you; the session ends.
    SlowConsumer,
    /// Something failed inside Tutti.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics and documentation tests.
    pub const ALL: [ErrorCode; 22] = [
        Self::BadMessage,
        Self::UnsupportedVersion,
        Self::Unauthorized,
        Self::PasswordRequired,
        Self::WrongPassword,
        Self::RoomNotFound,
        Self::RoomFull,
        Self::NicknameTaken,
        Self::NotJoined,
        Self::AlreadyJoined,
        Self::OutOfOrder,
        Self::Forbidden,
        Self::SdpRejected,
        Self::CodecUnsupported,
        Self::TrackNotFound,
        Self::ParticipantNotFound,
        Self::ShardUnavailable,
        Self::Unavailable,
        Self::RateLimited,
        Self::UseHls,
        Self::SlowConsumer,
        Self::Internal,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unauthorized => "unauthorized",
            Self::PasswordRequired => "password_required",
            Self::WrongPassword => "wrong_password",
            Self::RoomNotFound => "room_not_found",
            Self::RoomFull => "room_full",
            Self::NicknameTaken => "nickname_taken",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::OutOfOrder => "out_of_order",
            Self::Forbidden => "forbidden",
            Self::SdpRejected => "sdp_rejected",
            Self::CodecUnsupported => "codec_unsupported",
            Self::TrackNotFound => "track_not_found",
            Self::ParticipantNotFound => "participant_not_found",
            Self::ShardUnavailable => "shard_unavailable",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::UseHls => "use_hls",
            Self::SlowConsumer => "slow_consumer",
            Self::Internal => "internal",
        }
    }
}

impl From<ShardCode> for ErrorCode {
    fn from(code: ShardCode) -> Self {
        match code {
            ShardCode::BadMessage | ShardCode::MessageTooLarge => Self::BadMessage,
            ShardCode::UnsupportedVersion => Self::UnsupportedVersion,
            ShardCode::Unauthorized => Self::Internal,
            ShardCode::RoomNotFound => Self::RoomNotFound,
            ShardCode::RoomFull => Self::RoomFull,
            ShardCode::NicknameTaken => Self::NicknameTaken,
            ShardCode::ParticipantNotFound => Self::ParticipantNotFound,
            ShardCode::NotJoined => Self::NotJoined,
            ShardCode::AlreadyJoined => Self::AlreadyJoined,
            ShardCode::OutOfOrder => Self::OutOfOrder,
            ShardCode::Forbidden => Self::Forbidden,
            ShardCode::SdpRejected => Self::SdpRejected,
            ShardCode::CodecUnsupported => Self::CodecUnsupported,
            ShardCode::TrackNotFound => Self::TrackNotFound,
            ShardCode::ShardDraining => Self::ShardUnavailable,
            ShardCode::SlowConsumer => Self::SlowConsumer,
            ShardCode::RateLimited => Self::RateLimited,
            ShardCode::Internal => Self::Internal,
        }
    }
}

/// A client's `join`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct JoinRequest {
    /// The room name.
    pub room: String,
    /// The nickname; with a token, the token's name is used instead.
    #[serde(default)]
    pub name: Option<String>,
    /// The room's password, for rooms that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A signed join token (JWT, HS256), instead of a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Whether to publish (default true; a token may forbid it).
    #[serde(default)]
    pub publish: Option<bool>,
    /// Whether to receive others' media (default true; a token may forbid it).
    #[serde(default)]
    pub subscribe: Option<bool>,
    /// The `resume` token of an earlier `joined`: come back as the same participant
    /// (after a reconnect, through any gateway). When it is invalid or expired, the other
    /// credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Watch the broadcast called `room` as a viewer: receive only, seated on one of its
    /// edge shards, never announced to the room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    /// The audio profile for a room this join creates (`speech` or `music`); a room that
    /// exists already, or is declared, keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<tutti_store::AudioProfile>,
    /// The client's round trip to each region, in ms, as it measured it against the
    /// probes of `GET /v1/regions`: what latency placement puts the room by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt: Option<std::collections::BTreeMap<String, f64>>,
    /// The client offers its subscriber connection itself (a WHEP viewer): the shard
    /// answers, and sends into the audio and video sections offered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offer_subscriber: bool,
}

impl JoinRequest {
    /// The measured round trips, whole ms (validated by [`decode_client`]).
    pub fn rtt_ms(&self) -> std::collections::BTreeMap<String, u32> {
        self.rtt
            .iter()
            .flatten()
            .map(|(region, ms)| (region.clone(), ms.round() as u32))
            .collect()
    }
}

/// One decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The handshake.
    Join(JoinRequest),
    /// Anything else: a shard protocol message, relayed as is.
    Relay(shard::ClientMessage),
}

/// A decoding failure with the code to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

impl ProtocolError {
    /// An error with this code and explanation.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Decodes and validates one client frame.
pub fn decode_client(frame: &str) -> Result<Inbound, ProtocolError> {
    if frame.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::BadMessage,
            format!("frames are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    #[derive(Deserialize)]
    struct Head {
        v: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let head: Head = serde_json::from_str(frame).map_err(|e| {
        ProtocolError::new(ErrorCode::BadMessage, format!("not a JSON object: {e}"))
    })?;
    match head.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {other} is not supported; this gateway speaks 1"),
            ));
        }
        None => {
            return Err(ProtocolError::new(
                ErrorCode::BadMessage,
                "missing protocol version field \"v\"",
            ));
        }
    }
    if head.kind.as_deref() == Some("join") {
        let join: JoinRequest = serde_json::from_str(frame)
            .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, e.to_string()))?;
        validate_join(&join)?;
        return Ok(Inbound::Join(join));
    }
    shard::decode_client(frame)
        .map(Inbound::Relay)
        .map_err(|e| ProtocolError::new(e.code.into(), e.message))
}

fn validate_join(join: &JoinRequest) -> Result<(), ProtocolError> {
    let bad = |m: &str| Err(ProtocolError::new(ErrorCode::BadMessage, m));
    if !valid_id(&join.room) {
        return bad("room must be 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    if let Some(name) = &join.name
        && !valid_nickname(name)
    {
        return bad("name must be 1-64 visible characters (no control or invisible characters)");
    }
    if join
        .password
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PASSWORD_LEN)
    {
        return bad("password too long");
    }
    if join.token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_LEN)
        || join
            .resume
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TOKEN_LEN)
    {
        return bad("token too long");
    }
    if let Some(rtt) = &join.rtt {
        if rtt.len() > tutti_store::MAX_REPORTED_REGIONS {
            return bad("rtt lists at most 16 regions");
        }
        let most = f64::from(tutti_store::MAX_REPORTED_RTT_MS);
        for (region, ms) in rtt {
            if !tutti_store::valid_region(region) {
                return bad("rtt regions are 1-63 characters of a-z 0-9 -");
            }
            if !(ms.is_finite() && (0.0..=most).contains(ms)) {
                return bad("rtt values are 0..=10000 ms");
            }
        }
    }
    Ok(())
}

/// Whether a nickname is 1–64 visible characters, not all spaces (the shard's rule).
pub fn valid_nickname(name: &str) -> bool {
    tutti_shard_api::protocol::valid_nickname(name)
}

/// One ICE server entry, in the shape `RTCPeerConnection` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` or `turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (`expiry:participant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A message from the gateway to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// The join succeeded.
    Joined(Joined),
    /// Join again (same room and name): the gateway is stopping, or the room moved to
    /// another shard. Media stops until the client does.
    Reconnect {
        /// Why.
        reason: String,
    },
    /// A request failed; the session stays open unless a `left` or `reconnect` follows.
    Error {
        /// The code.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// A shard message, relayed.
    Shard(shard::ServerMessage),
}

/// The `joined` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The room.
    pub room: String,
    /// Your participant id (others address direct messages to it).
    pub participant: String,
    /// Your nickname.
    pub name: String,
    /// Whether you may publish.
    pub publish: bool,
    /// Whether you receive others' media.
    pub subscribe: bool,
    /// Everyone already in the room.
    pub participants: Vec<ParticipantInfo>,
    /// ICE servers for both of your peer connections.
    pub ice_servers: Vec<IceServer>,
    /// Send this back in `join.resume` to come back as the same participant after a
    /// reconnect, through any gateway of the cluster.
    pub resume: String,
    /// Send video as three simulcast layers (`q`, `h`, `f`), so that each subscriber
    /// gets the one its screen and network need (false in a room with simulcast off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulcast: bool,
    /// Send video as one VP9 stream of spatial layers (`L3T3_KEY`) where your browser can
    /// encode it, instead of simulcast (false unless the room asks for it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub svc: bool,
    /// With `svc`: send those spatial layers in AV1 instead of VP9 (omitted for VP9).
    #[serde(default, skip_serializing_if = "tutti_store::SvcCodec::is_vp9")]
    pub svc_codec: tutti_store::SvcCodec,
    /// The room's audio (omitted for speech defaults): with the music profile, capture
    /// the microphone without echo cancellation, noise suppression or gain control, in
    /// stereo where the device has it, and send at `bitrate`.
    #[serde(
        default,
        skip_serializing_if = "tutti_store::AudioSettings::is_speech_default"
    )]
    pub audio: tutti_store::AudioSettings,
}

/// Encodes a gateway message as one text frame.
pub fn encode(message: &Outbound) -> String {
    #[derive(Serialize)]
    struct Tagged<'a, T: Serialize> {
        v: u32,
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        body: &'a T,
    }
    #[derive(Serialize)]
    struct Reason<'a> {
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct Failure<'a> {
        code: ErrorCode,
        message: &'a str,
    }
    let encoded = match message {
        Outbound::Joined(joined) => serde_json::to_string(&Tagged {
            v: PROTOCOL_VERSION,
            kind: "joined",
            body: joined,
        }),
        Outbound::Reconnect { reason } => serde_json::to_string(&Tagged {
            v: PROTOCOL_VERSION,
            kind: "reconnect",
            body: &Reason { reason },
        }),
        Outbound::Error { code, message } => serde_json::to_string(&Tagged {
            v: PROTOCOL_VERSION,
            kind: "error",
            body: &Failure {
                code: *code,
                message,
            },
        }),
        Outbound::Shard(message) => return shard::encode_server(message),
    };
    // Serializing these plain structs cannot fail; never panic if it somehow did.
    encoded.unwrap_or_else(|_| {
        r#"{"v":1,"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(frame: &str) -> ErrorCode {
        decode_client(frame).unwrap_err().code
    }

    #[test]
    fn decodes_join_and_relays_the_rest() {
        let join = decode_client(
            r#"{"v":1,"type":"join","room":"violin","name":"지민","password":"bow"}"#,
        )
        .unwrap();
        assert_eq!(
            join,
            Inbound::Join(JoinRequest {
                room: "violin".into(),
                name: Some("지민".into()),
                password: Some("bow".into()),
                token: None,
                publish: None,
                subscribe: None,
                resume: None,
                watch: false,
                audio: None,
                rtt: None,
                offer_subscriber: false,
            })
        );
        let chat = decode_client(r#"{"v":1,"type":"chat","text":"hi","to":"p1"}"#).unwrap();
        assert_eq!(
            chat,
            Inbound::Relay(shard::ClientMessage::Chat {
                text: "hi".into(),
                to: Some("p1".into())
            })
        );
    }

    #[test]
    fn malformed_and_oversized_frames_are_bad_messages() {
        assert_eq!(code("garbage"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"ping"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":7,"type":"ping"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"v":1,"type":"teleport"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"a/b"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"a","name":"   "}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"v":1,"type":"chat","text":""}"#),
            ErrorCode::BadMessage
        );
        let huge = format!(
            r#"{{"v":1,"type":"chat","text":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&huge), ErrorCode::BadMessage);
        let long_password = format!(
            r#"{{"v":1,"type":"join","room":"a","password":"{}"}}"#,
            "p".repeat(MAX_PASSWORD_LEN + 1)
        );
        assert_eq!(code(&long_password), ErrorCode::BadMessage);
    }

    #[test]
    fn every_error_code_is_documented_and_explained_by_the_web_client() {
        let docs = include_str!("../../docs/protocol.md");
        let client = include_str!("../web/app.js");
        for code in ErrorCode::ALL {
            let name = code.as_str();
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "docs/protocol.md lacks {name}"
            );
            assert!(
                client.contains(&format!("  {name}: '")),
                "app.js has no text for {name}"
            );
        }
    }

    #[test]
    fn gateway_messages_carry_version_and_type() {
        let frame = encode(&Outbound::Error {
            code: ErrorCode::WrongPassword,
            message: "no".into(),
        });
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "wrong_password");
        let frame = encode(&Outbound::Reconnect {
            reason: "moved".into(),
        });
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            (value["type"].as_str(), value["reason"].as_str()),
            (Some("reconnect"), Some("moved"))
        );
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn round_trips_in_a_join_are_bounded() {
        let join = |rtt: &str| {
            decode_client(&format!(
                r#"{{"v":1,"type":"join","room":"lesson","rtt":{rtt}}}"#
            ))
        };
        match join(r#"{"eu-west-1":12.4,"me-central-1":87.6}"#).unwrap() {
            Inbound::Join(request) => {
                let rtt = request.rtt_ms();
                assert_eq!(rtt.get("eu-west-1"), Some(&12));
                assert_eq!(rtt.get("me-central-1"), Some(&88));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"EU":10}"#,
            r#"{"eu":-1}"#,
            r#"{"eu":10001}"#,
            r#"{"eu":"fast"}"#,
            r#"{"":5}"#,
        ] {
            let err = join(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadMessage, "{bad}");
        }
        let many: Vec<String> = (0..17).map(|i| format!(r#""r{i}":5"#)).collect();
        assert!(join(&format!("{{{}}}", many.join(","))).is_err());
    }
}
