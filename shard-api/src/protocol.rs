//! The shard's signaling protocol, version 1: JSON text frames over a WebSocket.
//!
//! Every frame is one object with a version `v` and a `type`. The gateway relays clients'
//! messages here; tests and the load generator speak it directly. Full reference with
//! examples: `docs/shard-protocol.md`.
//!
//! Client → shard: `join`, `offer` (the client's publisher connection), `answer` (to the
//! shard's offer on the subscriber connection), `candidate`, `set_quality`, `mute`,
//! `screen_share`, `chat`, `leave`, `ping`.
//!
//! Shard → client: `joined`, `answer`, `offer`, `participant_joined`, `participant_left`,
//! `track_published`, `track_unpublished`, `track_muted`, `screen_share`, `chat`,
//! `active_speaker`, `connection_quality`, `publish_layers`, `error`, `pong`, `left`.
//!
//! The shard is the one place a room lives, so it is also where the room's rules that
//! involve other participants are kept: capacity, nicknames unique ignoring case, and the
//! delivery of chat and direct messages, whichever gateway each participant came through.

use serde::{Deserialize, Serialize};

/// The quality a subscriber asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// The smallest layer.
    Low,
    /// The middle layer.
    Medium,
    /// The full-resolution layer.
    High,
    /// Nothing: the subscriber does not show the video now (a hidden tile), so the shard
    /// sends none of it until asked for a quality again.
    Off,
}

impl Quality {
    /// The rank of this quality (0 lowest); `None` for [`Quality::Off`].
    pub fn rank(self) -> Option<u8> {
        match self {
            Self::Low => Some(0),
            Self::Medium => Some(1),
            Self::High => Some(2),
            Self::Off => None,
        }
    }
}

/// One participant's connection in one word (see [`ServerMessage::ConnectionQuality`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantQuality {
    /// The participant id.
    pub participant: String,
    /// The worse of its uplink (loss of what it publishes) and its downlink (loss, round
    /// trip, video held back or paused).
    pub quality: crate::admin::Reception,
}

/// The protocol version this shard speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest frame accepted (an SDP offer with simulcast is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The longest room or participant identifier.
pub const MAX_ID_LEN: usize = 64;
/// The longest display name, in characters.
pub use crate::nickname::{MAX_NAME_CHARS, nickname_key, valid_nickname};
/// The longest ICE candidate line.
pub const MAX_CANDIDATE_LEN: usize = 512;
/// The longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 2000;

/// Which of a participant's two peer connections a message concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTarget {
    /// The connection the client publishes on (the client offers).
    Publisher,
    /// The connection the client receives on (the shard offers).
    Subscriber,
}

/// A message from a client (or the gateway relaying it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Enter a room. Must be the first message of a session.
    Join {
        /// The room (pipeline) name.
        room: String,
        /// A stable participant id; joining again with the same id replaces the old session.
        participant: String,
        /// The display name shown to others.
        #[serde(default)]
        name: Option<String>,
        /// Whether this participant may publish (default true).
        #[serde(default)]
        publish: Option<bool>,
        /// Whether this participant receives others' tracks (default true).
        #[serde(default)]
        subscribe: Option<bool>,
        /// A relay of another shard (an edge of a broadcast): it receives every track, is
        /// never announced to the room and takes no seat.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<bool>,
        /// A relay's media pipe (shard to shard only, with `relay: true`): the tracks come
        /// as SRTP straight to this end's media port instead of over a peer connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pipe: Option<PipeEnd>,
        /// A relay that records the room (with `relay: true`): while one is in the room,
        /// everyone in it is told so (`recording`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recorder: Option<bool>,
        /// The client offers its subscriber connection itself (a WHEP viewer): the shard
        /// answers, never offers on it, and sends into the audio and video sections the
        /// client offered the room's tracks, one each, in the order they were published.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer_subscriber: Option<bool>,
    },
    /// An SDP offer for the client's publisher connection.
    Offer {
        /// Must be `publisher`.
        pc: PeerTarget,
        /// The SDP.
        sdp: String,
    },
    /// The SDP answer to the shard's latest offer on the subscriber connection.
    Answer {
        /// Must be `subscriber`.
        pc: PeerTarget,
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate of the client.
    Candidate {
        /// The connection it belongs to.
        pc: PeerTarget,
        /// The `candidate:` line; empty for end-of-candidates.
        candidate: String,
        /// The media section id.
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
        /// The media section index.
        #[serde(default, rename = "sdpMLineIndex")]
        sdp_m_line_index: Option<u16>,
    },
    /// Choose the simulcast quality of a received track.
    SetQuality {
        /// The track id as announced in `track_published`.
        track: String,
        /// The wanted quality.
        quality: Quality,
    },
    /// Tell the others one of your tracks is muted or unmuted.
    Mute {
        /// One of your published tracks: its id in your offer (`msid`) or the id the shard
        /// gave it.
        track: String,
        /// Whether it is muted.
        muted: bool,
    },
    /// Tell the others you started or stopped sharing your screen.
    ScreenShare {
        /// Whether you are sharing now.
        active: bool,
    },
    /// A chat message to the whole room, or to one participant.
    Chat {
        /// The text, 1–2000 characters.
        text: String,
        /// The participant id of the only recipient (a direct message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Restart ICE on the subscriber connection (the client lost its media path): the
    /// shard sends a new `offer` with fresh ICE credentials. The publisher connection is
    /// restarted by the client's own offer with fresh credentials.
    RestartIce,
    /// Leave the room.
    Leave,
    /// Liveness check; answered with `pong`.
    Ping,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// The participant id.
    pub id: String,
    /// The display name.
    pub name: String,
    /// The tracks it publishes.
    pub tracks: Vec<TrackInfo>,
    /// Whether it is sharing its screen (on its video track).
    #[serde(default)]
    pub screen_sharing: bool,
}

/// The kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// A published track as subscribers see it. `id` and `stream_id` are the track and
/// stream ids of the track on the subscriber connection (the SDP `msid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The track id.
    pub id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// The media stream id: the publishing participant's id.
    pub stream_id: String,
    /// The codec MIME type.
    pub codec: String,
    /// The simulcast layers (rids), empty without simulcast.
    pub layers: Vec<String>,
    /// Whether the publisher muted it.
    pub muted: bool,
}

/// One end of a relay pipe between two shards' media ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeEnd {
    /// Where the other end sends: this end's media address, `ip:port`.
    pub media: String,
    /// The SRTP master key and salt this end protects what it sends with (profile
    /// AEAD_AES_128_GCM: 16 + 12 bytes), base64.
    pub key: String,
    /// The SSRC of this end's RTCP: the other end tells pipes on one address apart by it.
    pub ssrc: u32,
}

/// The codec of a track on a relay pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeCodec {
    /// MIME type, e.g. `video/VP8`.
    pub mime: String,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels (0 for video).
    pub channels: u16,
    /// The `a=fmtp` parameters.
    pub fmtp: String,
    /// The payload type its packets carry.
    pub payload_type: u8,
}

/// Stable error codes. Clients switch on these, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, missing fields, or a field out of bounds.
    BadMessage,
    /// The `v` field names a version this shard does not speak.
    UnsupportedVersion,
    /// The frame exceeds [`MAX_MESSAGE_BYTES`].
    MessageTooLarge,
    /// The socket did not authenticate.
    Unauthorized,
    /// No pipeline exists for the room.
    RoomNotFound,
    /// The room holds `maxParticipants` already.
    RoomFull,
    /// Someone in the room already has this nickname (ignoring case).
    NicknameTaken,
    /// A direct message named nobody in the room.
    ParticipantNotFound,
    /// A message that needs a joined session came before `join`.
    NotJoined,
    /// `join` on a session that already joined.
    AlreadyJoined,
    /// A message that does not fit the negotiation state (an answer with no offer out).
    OutOfOrder,
    /// The participant may not do this (e.g. publish without permission).
    Forbidden,
    /// The SDP or candidate could not be applied.
    SdpRejected,
    /// The subscriber cannot receive a track's codec.
    CodecUnsupported,
    /// No such track.
    TrackNotFound,
    /// The shard is draining and accepts no new joins.
    ShardDraining,
    /// The shard's send queue to this session overflowed.
    SlowConsumer,
    /// Too many messages too fast.
    RateLimited,
    /// Something failed inside the shard.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics registration and documentation tests.
    pub const ALL: [ErrorCode; 19] = [
        Self::BadMessage,
        Self::UnsupportedVersion,
        Self::MessageTooLarge,
        Self::Unauthorized,
        Self::RoomNotFound,
        Self::RoomFull,
        Self::NicknameTaken,
        Self::ParticipantNotFound,
        Self::NotJoined,
        Self::AlreadyJoined,
        Self::OutOfOrder,
        Self::Forbidden,
        Self::SdpRejected,
        Self::CodecUnsupported,
        Self::TrackNotFound,
        Self::ShardDraining,
        Self::SlowConsumer,
        Self::RateLimited,
        Self::Internal,
    ];

    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::UnsupportedVersion => "unsupported_version",
            Self::MessageTooLarge => "message_too_large",
            Self::Unauthorized => "unauthorized",
            Self::RoomNotFound => "room_not_found",
            Self::RoomFull => "room_full",
            Self::NicknameTaken => "nickname_taken",
            Self::ParticipantNotFound => "participant_not_found",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::OutOfOrder => "out_of_order",
            Self::Forbidden => "forbidden",
            Self::SdpRejected => "sdp_rejected",
            Self::CodecUnsupported => "codec_unsupported",
            Self::TrackNotFound => "track_not_found",
            Self::ShardDraining => "shard_draining",
            Self::SlowConsumer => "slow_consumer",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }
}

/// A message from the shard to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// The room.
        room: String,
        /// Your participant id.
        participant: String,
        /// Everyone already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// The room's audio profile and Opus tuning (omitted for speech defaults): how to
        /// capture the microphone and what the shard's SDP asks for.
        #[serde(
            default,
            skip_serializing_if = "crate::audio::AudioSettings::is_speech_default"
        )]
        audio: crate::audio::AudioSettings,
    },
    /// The answer to your publisher offer.
    Answer {
        /// Always `publisher`.
        pc: PeerTarget,
        /// The SDP.
        sdp: String,
    },
    /// An offer on your subscriber connection; reply with `answer`.
    Offer {
        /// Always `subscriber`.
        pc: PeerTarget,
        /// The SDP.
        sdp: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left; their tracks are gone.
    ParticipantLeft {
        /// Their id.
        participant: String,
    },
    /// A track became available; it arrives on your subscriber connection.
    TrackPublished {
        /// The publisher's id.
        participant: String,
        /// The track.
        track: TrackInfo,
    },
    /// The parent's end of the relay pipe a relay session asked for (after `joined`).
    Pipe {
        /// The parent's end.
        end: PipeEnd,
    },
    /// A track arrives on the relay pipe with this SSRC (instead of in an `offer`).
    PipeTrack {
        /// The publisher's id.
        participant: String,
        /// The track id.
        track: String,
        /// Audio or video.
        kind: TrackKind,
        /// Its codec.
        codec: PipeCodec,
        /// The SSRC its packets carry on the pipe.
        ssrc: u32,
    },
    /// A track was removed.
    TrackUnpublished {
        /// The publisher's id.
        participant: String,
        /// The track id.
        track: String,
    },
    /// A track was muted or unmuted by its publisher.
    TrackMuted {
        /// The publisher's id.
        participant: String,
        /// The track id.
        track: String,
        /// Whether it is muted now.
        muted: bool,
    },
    /// How each participant's connection is doing, sent to the room when a word changes,
    /// and to a session that has not had it yet (checked every 2 s).
    ConnectionQuality {
        /// One entry per participant in the room.
        qualities: Vec<ParticipantQuality>,
    },
    /// To a publisher: encode only these simulcast layers (or spatial layers) of one of its
    /// video tracks, as no subscriber receives the others (dynacast); sent again when that
    /// changes.
    PublishLayers {
        /// The track: its id in the publisher's offer (`MediaStreamTrack.id`).
        track: String,
        /// The rids to keep encoding; the others may be set inactive. Empty when nobody
        /// receives the track at all, and for a track sent as spatial layers.
        active: Vec<String>,
        /// For a track sent as one encoding of spatial layers (SVC): how many of them to
        /// keep encoding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spatial: Option<SpatialLayers>,
    },
    /// A participant started or stopped sharing its screen.
    ScreenShare {
        /// Who.
        participant: String,
        /// Whether it is sharing now.
        active: bool,
    },
    /// A chat message, to the room or to you alone. Senders get their own messages back,
    /// in the order the room saw them.
    Chat {
        /// The sender's participant id.
        from: String,
        /// The sender's display name.
        name: String,
        /// The text.
        text: String,
        /// For a direct message, the recipient's participant id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// When the shard relayed it, in milliseconds since the Unix epoch.
        at: u64,
    },
    /// The loudest participant changed (`null` when the room went quiet).
    ActiveSpeaker {
        /// The speaker's id.
        participant: Option<String>,
    },
    /// A request failed; the session stays open unless a `left` follows.
    Error {
        /// The stable code.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// The answer to `ping`.
    Pong,
    /// Whether the room is being recorded: sent after `joined` when it is, and to
    /// everyone in the room when a recording starts or stops.
    Recording {
        /// True while a recorder is in the room.
        active: bool,
    },
    /// The session ended (left, replaced by a newer join, room released, shard stopping).
    Left {
        /// Why.
        reason: String,
        /// Whether the client should join again (the shard is stopping or draining), which
        /// places it on another shard.
        #[serde(default)]
        reconnect: bool,
    },
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
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    message: ClientMessage,
}

#[derive(Serialize)]
struct OutEnvelope<'a> {
    v: u32,
    #[serde(flatten)]
    message: &'a ServerMessage,
}

/// Decodes and validates one client frame.
pub fn decode_client(frame: &str) -> Result<ClientMessage, ProtocolError> {
    if frame.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::MessageTooLarge,
            format!("frames are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: Option<serde_json::Value>,
    }
    let version: VersionOnly = serde_json::from_str(frame).map_err(|e| {
        ProtocolError::new(ErrorCode::BadMessage, format!("not a JSON object: {e}"))
    })?;
    match version.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {other} is not supported; this shard speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        None => {
            return Err(ProtocolError::new(
                ErrorCode::BadMessage,
                "missing protocol version field \"v\"",
            ));
        }
    }
    let envelope: Envelope = serde_json::from_str(frame)
        .map_err(|e| ProtocolError::new(ErrorCode::BadMessage, e.to_string()))?;
    let _ = envelope.v;
    validate(&envelope.message)?;
    Ok(envelope.message)
}

/// Encodes a shard message as one text frame.
pub fn encode_server(message: &ServerMessage) -> String {
    // Serializing these plain structs cannot fail; fall back to a fixed internal error
    // frame rather than panicking if it ever did.
    serde_json::to_string(&OutEnvelope {
        v: PROTOCOL_VERSION,
        message,
    })
    .unwrap_or_else(|_| {
        r#"{"v":1,"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
    })
}

/// Encodes a client message (used by test clients and the load generator).
pub fn encode_client(message: &ClientMessage) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        v: u32,
        #[serde(flatten)]
        message: &'a ClientMessage,
    }
    serde_json::to_string(&Out {
        v: PROTOCOL_VERSION,
        message,
    })
    .unwrap_or_default()
}

/// Decodes a shard frame (used by test clients and the load generator).
pub fn decode_server(frame: &str) -> Result<ServerMessage, serde_json::Error> {
    #[derive(Deserialize)]
    struct In {
        #[serde(flatten)]
        message: ServerMessage,
    }
    serde_json::from_str::<In>(frame).map(|m| m.message)
}

/// Longest pipe address or key accepted (an IPv6 address and port, base64 of 28 bytes).
const MAX_PIPE_FIELD_LEN: usize = 64;

/// Whether an identifier (room, participant) is 1–64 characters of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn validate(message: &ClientMessage) -> Result<(), ProtocolError> {
    let bad = |m: &str| Err(ProtocolError::new(ErrorCode::BadMessage, m));
    match message {
        ClientMessage::Join {
            room,
            participant,
            name,
            pipe,
            ..
        } => {
            if !valid_id(room) {
                return bad("room must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
            if !valid_id(participant) {
                return bad("participant must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
            if let Some(name) = name
                && !crate::nickname::valid_nickname(name)
            {
                return bad(
                    "name must be 1-64 visible characters (no control or invisible characters)",
                );
            }
            if let Some(pipe) = pipe
                && (pipe.media.len() > MAX_PIPE_FIELD_LEN || pipe.key.len() > MAX_PIPE_FIELD_LEN)
            {
                return bad("pipe media and key must be at most 64 characters");
            }
        }
        ClientMessage::Offer { sdp, .. } | ClientMessage::Answer { sdp, .. } => {
            if sdp.is_empty() {
                return bad("sdp must not be empty");
            }
        }
        ClientMessage::Candidate {
            candidate, sdp_mid, ..
        } => {
            if candidate.len() > MAX_CANDIDATE_LEN
                || sdp_mid.as_ref().is_some_and(|mid| mid.len() > MAX_ID_LEN)
            {
                return bad("candidate too long");
            }
        }
        ClientMessage::SetQuality { track, .. } | ClientMessage::Mute { track, .. } => {
            if !valid_id(track) {
                return bad("track must be a track id from track_published");
            }
        }
        ClientMessage::Chat { text, to } => {
            let chars = text.chars().count();
            if chars == 0 || chars > MAX_CHAT_CHARS {
                return bad("chat text must be 1-2000 characters");
            }
            if text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return bad("chat text may not hold control characters");
            }
            if to.as_deref().is_some_and(|to| !valid_id(to)) {
                return bad("to must be a participant id");
            }
        }
        ClientMessage::ScreenShare { .. }
        | ClientMessage::RestartIce
        | ClientMessage::Leave
        | ClientMessage::Ping => {}
    }
    Ok(())
}

/// The spatial layers of an SVC track its publisher is to encode (`publish_layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpatialLayers {
    /// How many spatial layers to encode, lowest first: those someone receives, or may
    /// soon; 0 when nobody receives the track.
    pub encode: u8,
    /// Of how many: what the publisher encoded while it encoded all it would.
    pub of: u8,
    /// The width of the highest layer to encode, as the publisher's own scalability
    /// structure gave it; absent when it gave none (or for all and none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_layers_carries_spatial_layers_only_for_an_svc_track() {
        let simulcast = ServerMessage::PublishLayers {
            track: "cam".into(),
            active: vec!["q".into()],
            spatial: None,
        };
        let json = serde_json::to_value(&simulcast).expect("serializes");
        assert_eq!(json["active"], serde_json::json!(["q"]));
        assert!(json.get("spatial").is_none(), "{json}");
        let svc = ServerMessage::PublishLayers {
            track: "cam".into(),
            active: Vec::new(),
            spatial: Some(SpatialLayers {
                encode: 1,
                of: 2,
                width: Some(320),
            }),
        };
        let json = serde_json::to_value(&svc).expect("serializes");
        assert_eq!(
            json["spatial"],
            serde_json::json!({"encode": 1, "of": 2, "width": 320})
        );
        let back: ServerMessage = serde_json::from_value(json).expect("reads back");
        assert_eq!(format!("{back:?}"), format!("{svc:?}"));
    }

    #[test]
    fn decodes_a_join() {
        let msg = decode_client(
            r#"{"v":1,"type":"join","room":"lesson-1","participant":"alice","name":"Alice"}"#,
        )
        .unwrap();
        assert_eq!(
            msg,
            ClientMessage::Join {
                room: "lesson-1".into(),
                participant: "alice".into(),
                name: Some("Alice".into()),
                publish: None,
                subscribe: None,
                relay: None,
                pipe: None,
                recorder: None,
                offer_subscriber: None,
            }
        );
    }

    #[test]
    fn round_trips_every_client_message() {
        let messages = [
            ClientMessage::Offer {
                pc: PeerTarget::Publisher,
                sdp: "v=0".into(),
            },
            ClientMessage::Answer {
                pc: PeerTarget::Subscriber,
                sdp: "v=0".into(),
            },
            ClientMessage::Candidate {
                pc: PeerTarget::Publisher,
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
            },
            ClientMessage::SetQuality {
                track: "TRabc".into(),
                quality: Quality::Low,
            },
            ClientMessage::Mute {
                track: "TRabc".into(),
                muted: true,
            },
            ClientMessage::RestartIce,
            ClientMessage::Leave,
            ClientMessage::Ping,
        ];
        for message in messages {
            assert_eq!(decode_client(&encode_client(&message)).unwrap(), message);
        }
    }

    #[test]
    fn rejects_bad_frames_with_stable_codes() {
        let code = |frame: &str| decode_client(frame).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::BadMessage);
        assert_eq!(code("[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"ping"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":2,"type":"ping"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(r#"{"v":"1","type":"ping"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"v":1,"type":"fly"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"a b","participant":"x"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(&format!(
                r#"{{"v":1,"type":"join","room":"{}","participant":"x"}}"#,
                "r".repeat(65)
            )),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"v":1,"type":"join","room":"r","participant":"x","name":"a\u0007"}"#),
            ErrorCode::BadMessage
        );
        let huge = format!(
            r#"{{"v":1,"type":"offer","pc":"publisher","sdp":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&huge), ErrorCode::MessageTooLarge);
    }

    #[test]
    fn server_messages_carry_version_and_type() {
        let frame = encode_server(&ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "full".into(),
        });
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "room_full");
        assert_eq!(
            decode_server(&frame).unwrap(),
            ServerMessage::Error {
                code: ErrorCode::RoomFull,
                message: "full".into()
            }
        );
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
        }
    }
}
