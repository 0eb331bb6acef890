//! The relay client: how an edge shard receives a broadcast from its parent.
//!
//! For a pipeline whose spec names a parent, the edge joins the parent's pipeline the way
//! a participant does — over the parent's signaling WebSocket, authenticated by the
//! shards' signaling token — but as a *relay*: it takes no seat, is never announced, and
//! asks for its tracks as a *pipe* (`shard/pipe.rs`): plain SRTP from the parent's media
//! port to this shard's, with keys the two ends exchange over this WebSocket, no ICE and
//! no DTLS. It does this once per relayed simulcast layer (each link asks the parent for
//! one quality), so an edge takes one copy of each track and layer whatever the size of
//! its audience. The media thread decrypts what arrives and forwards it to the edge's
//! viewers as if a publisher had sent it.
//!
//! Repair is hop by hop: the edge's end of the pipe asks the parent for what got lost on
//! the way (NACK), and the edge answers its viewers' NACKs from its own buffers. Keyframe
//! requests from the edge's viewers are throttled per layer and go up the pipe to the
//! parent, which throttles again before its presenter sees any.
//!
//! This task only speaks signaling: who is at the parent, which tracks the pipe carries
//! with which SSRC, and when the link ends (the WebSocket closing ends the pipe at both
//! ends).

use crate::shard::api::{Command, CoreHandle, PipeId, RelayedTrack, TurnedOff, TurnedOffLayers};
use crate::signal::protocol::{
    ClientMessage, PipeCodec, PipeEnd, Quality, ServerMessage, TrackKind, decode_server,
    encode_client,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tutti_service::ratelimit::TokenBucket;
use tutti_shard_api::admin::RelaySpec;

/// What a relay needs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The edge's pipeline.
    pub room: String,
    /// Where its media comes from.
    pub spec: RelaySpec,
    /// The token the parent's signaling endpoint accepts.
    pub signal_token: String,
    /// This shard's media address, where the parent sends the pipe's packets.
    pub media: SocketAddr,
    /// This shard's id, in the relay's participant id at the parent.
    pub edge: String,
}

/// Runs the relay until `stop`, reconnecting after every interruption.
pub fn spawn(
    core: CoreHandle,
    options: RelayOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        loop {
            let (demand, off) = watch::channel(BTreeMap::new());
            if core
                .relay_attach(options.room.clone(), demand)
                .await
                .is_err()
            {
                // The pipeline is gone (released): nothing to feed.
                return;
            }
            let outcome = tokio::select! {
                _ = stop.cancelled() => Ok(()),
                outcome = relay(&core, &options, off) => outcome,
            };
            core.send(Command::RelayDetach {
                room: options.room.clone(),
            })
            .await;
            if stop.is_cancelled() {
                return;
            }
            if let Err(err) = outcome {
                tracing::warn!(room = %options.room, from = %options.spec.from, %err, retry_in = ?delay, "relay interrupted");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    })
}

/// Quality requests per second a link sends on average, and its burst: below what the
/// parent allows a session (`signal::session::QUALITY_RATE`), so that a room whose every
/// track changes at once is caught up over a few seconds instead of being refused.
const LINK_QUALITY_RATE: (u32, u32) = (8, 40);

/// One relay session: a link per layer, until any of them ends.
async fn relay(core: &CoreHandle, options: &RelayOptions, off: TurnedOff) -> Result<(), String> {
    let layers = options.spec.layers.clamp(1, 3);
    let (ended_tx, mut ended) = mpsc::channel::<String>(4);
    let mut links = Vec::new();
    for rank in 0..layers {
        links.push(tokio::spawn(link(
            core.clone(),
            options.clone(),
            (rank, layers),
            off.clone(),
            ended_tx.clone(),
        )));
    }
    drop(ended_tx);
    let why = ended
        .recv()
        .await
        .unwrap_or_else(|| "every link ended".into());
    for link in links {
        link.abort();
    }
    Err(why)
}

/// What a link knows about the parent's participants and tracks.
#[derive(Default)]
struct Parent {
    names: HashMap<String, String>,
    /// Track id → whether it has simulcast layers.
    simulcast: HashMap<String, bool>,
    /// Track id → the quality this link last asked for.
    asked: HashMap<String, Quality>,
}

impl Parent {
    /// The requests that bring what this link asked of each simulcast track in line with
    /// the layers the edge turned off (`off`), as many as `budget` allows now; the rest
    /// go at a later call.
    fn sync(
        &mut self,
        link: (u8, u8),
        off: &TurnedOffLayers,
        budget: &mut TokenBucket,
        now: std::time::Instant,
    ) -> Vec<ClientMessage> {
        let (rank, layers) = link;
        let mut out = Vec::new();
        for (track, simulcast) in &self.simulcast {
            if !*simulcast {
                continue;
            }
            let quality = link_quality(rank, layers, off.get(track));
            if self.asked.get(track) == Some(&quality) {
                continue;
            }
            if !budget.take(now) {
                break;
            }
            self.asked.insert(track.clone(), quality);
            out.push(ClientMessage::SetQuality {
                track: track.clone(),
                quality,
            });
        }
        out
    }
}

/// The quality a link of rank `rank` of `layers` asks for.
fn quality(rank: u8, layers: u8) -> Quality {
    match (layers, rank) {
        (1, _) => Quality::High,
        (_, 0) => Quality::Low,
        (_, 1) => Quality::Medium,
        _ => Quality::High,
    }
}

/// What the link of rank `rank` of `layers` asks for of a simulcast track of which the
/// edge turned off the layers `off` (rids; `None`: none): its own quality, or nothing when
/// its layer is off, so the parent stops sending it and its publisher may stop encoding it.
fn link_quality(rank: u8, layers: u8, off: Option<&Vec<String>>) -> Quality {
    let rid = crate::shard::relayed_layer_rid(rank);
    match off {
        Some(off) if layers > 1 && off.iter().any(|r| r == rid) => Quality::Off,
        _ => quality(rank, layers),
    }
}

/// One link: a relay session at the parent receiving one layer of every track.
async fn link(
    core: CoreHandle,
    options: RelayOptions,
    layer: (u8, u8),
    off: TurnedOff,
    ended: mpsc::Sender<String>,
) {
    let why = match run_link(&core, &options, layer, off).await {
        Ok(()) => "the parent ended the relay".to_owned(),
        Err(err) => err,
    };
    let _ = ended.send(why).await;
}

/// A shard's signaling WebSocket at `url`, opened as another shard does: with the
/// shards' signaling token. Gives up after 5 s.
pub(crate) async fn connect_signaling(
    url: &str,
    token: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the signaling token is not a header value".to_owned())?;
    request.headers_mut().insert("authorization", bearer);
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "the shard did not answer".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// This end of a new pipe: a fresh master key and salt (AEAD_AES_128_GCM) and RTCP SSRC;
/// the key also as the base64 the pipe end carries.
pub(crate) fn own_end(media: SocketAddr) -> (PipeEnd, String) {
    let mut rng = rand::rng();
    let mut key = [0u8; 28];
    rng.fill(&mut key[..]);
    let key = BASE64.encode(key);
    let ssrc = loop {
        let ssrc: u32 = rng.random();
        if ssrc != 0 {
            break ssrc;
        }
    };
    (
        PipeEnd {
            media: media.to_string(),
            key: key.clone(),
            ssrc,
        },
        key,
    )
}

async fn run_link(
    core: &CoreHandle,
    options: &RelayOptions,
    layer: (u8, u8),
    mut off: TurnedOff,
) -> Result<(), String> {
    let (rank, layers) = layer;
    let socket = connect_signaling(&options.spec.from, &options.signal_token).await?;
    let (mut sink, mut stream) = socket.split();
    let participant = format!("relay.{}.{rank}", options.edge);
    let (own, own_key) = own_end(options.media);
    let own_ssrc = own.ssrc;
    let join = ClientMessage::Join {
        room: options.spec.room.clone(),
        participant: participant.chars().take(64).collect(),
        name: Some("relay".into()),
        publish: Some(false),
        subscribe: Some(true),
        relay: Some(true),
        pipe: Some(own),
        recorder: None,
        offer_subscriber: None,
    };
    sink.send(Message::Text(encode_client(&join).into()))
        .await
        .map_err(|e| e.to_string())?;
    let mut parent = Parent::default();
    let mut pipe: Option<PipeId> = None;
    let top = rank + 1 == layers;
    let room = &options.room;
    let mut budget = TokenBucket::new(LINK_QUALITY_RATE.0, LINK_QUALITY_RATE.1);
    // Catches up what the budget held back, or what the parent refused.
    let mut resync = tokio::time::interval(Duration::from_secs(1));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => match frame {
                Some(frame) => Some(frame),
                None => break,
            },
            changed = off.changed() => {
                if changed.is_err() {
                    return Err("the shard stopped the relay".to_owned());
                }
                off.borrow_and_update();
                None
            }
            _ = resync.tick() => None,
        };
        'message: {
            let Some(frame) = frame else {
                break 'message;
            };
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) | Err(_) => {
                    return Err("the parent closed the link".to_owned());
                }
                Ok(_) => break 'message,
            };
            let Ok(message) = decode_server(&text) else {
                break 'message;
            };
            match message {
                ServerMessage::Joined { participants, .. } => {
                    for p in participants {
                        parent.names.insert(p.id.clone(), p.name.clone());
                        for track in &p.tracks {
                            let simulcast = !track.layers.is_empty();
                            parent.simulcast.insert(track.id.clone(), simulcast);
                        }
                        if top {
                            let (participant, sharing) = (p.id.clone(), p.screen_sharing);
                            core.send(Command::RelayParticipant {
                                room: room.clone(),
                                participant: p.id,
                                name: p.name,
                                present: true,
                            })
                            .await;
                            if sharing {
                                core.send(Command::RelayScreenShare {
                                    room: room.clone(),
                                    participant,
                                    active: true,
                                })
                                .await;
                            }
                        }
                    }
                }
                ServerMessage::Pipe { end } => {
                    pipe = Some(
                        core.pipe_open(room.clone(), end, own_key.clone(), own_ssrc)
                            .await?,
                    );
                }
                ServerMessage::PipeTrack {
                    participant,
                    track,
                    kind,
                    codec,
                    ssrc,
                } => {
                    let Some(pipe) = pipe else {
                        return Err(
                            "the parent announced a track before its end of the pipe".into()
                        );
                    };
                    let simulcast = parent.simulcast.get(&track).copied().unwrap_or(false);
                    // Without simulcast every link would carry the same stream: only the top
                    // link relays it. Audio is never layered.
                    let layer = if simulcast && kind == TrackKind::Video {
                        (rank, layers)
                    } else {
                        (0, 1)
                    };
                    if !top && layer.1 == 1 {
                        break 'message;
                    }
                    let name = parent
                        .names
                        .get(&participant)
                        .cloned()
                        .unwrap_or_else(|| participant.clone());
                    let relayed = RelayedTrack {
                        room: room.clone(),
                        participant,
                        name,
                        track,
                        kind,
                        codec: rtc_codec(codec),
                        ssrc,
                        layer,
                    };
                    if !core.pipe_track(pipe, relayed).await {
                        tracing::warn!(%room, ssrc, "a track on the pipe was refused");
                    }
                }
                ServerMessage::ParticipantJoined { participant } => {
                    parent
                        .names
                        .insert(participant.id.clone(), participant.name.clone());
                    if top {
                        core.send(Command::RelayParticipant {
                            room: room.clone(),
                            participant: participant.id,
                            name: participant.name,
                            present: true,
                        })
                        .await;
                    }
                }
                ServerMessage::ScreenShare {
                    participant,
                    active,
                } if top => {
                    core.send(Command::RelayScreenShare {
                        room: room.clone(),
                        participant,
                        active,
                    })
                    .await;
                }
                ServerMessage::Recording { active } if top => {
                    core.send(Command::RelayRecording {
                        room: room.clone(),
                        active,
                    })
                    .await;
                }
                ServerMessage::ParticipantLeft { participant } if top => {
                    core.send(Command::RelayParticipant {
                        room: room.clone(),
                        participant,
                        name: String::new(),
                        present: false,
                    })
                    .await;
                }
                ServerMessage::TrackPublished { track, .. } => {
                    let simulcast = !track.layers.is_empty();
                    parent.simulcast.insert(track.id.clone(), simulcast);
                }
                ServerMessage::TrackUnpublished { track, .. } => {
                    parent.simulcast.remove(&track);
                    parent.asked.remove(&track);
                    if top {
                        core.send(Command::RelayTrackEnded {
                            room: room.clone(),
                            track,
                        })
                        .await;
                    }
                }
                ServerMessage::Left { reason, .. } => {
                    return Err(format!("the parent ended the relay: {reason}"));
                }
                ServerMessage::Error { code, message } => {
                    tracing::warn!(code = code.as_str(), %message, "the parent refused a relay step");
                    // A refused quality request is not what the parent has: ask again.
                    parent.asked.clear();
                }
                _ => {}
            }
        }
        let now = std::time::Instant::now();
        let replies = parent.sync(layer, &off.borrow(), &mut budget, now);
        for reply in replies {
            sink.send(Message::Text(encode_client(&reply).into()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Err("the parent closed the link".to_owned())
}

/// A pipe track's codec as the core describes codecs.
fn rtc_codec(codec: PipeCodec) -> rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
    rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
        mime_type: codec.mime,
        clock_rate: codec.clock_rate,
        channels: codec.channels,
        sdp_fmtp_line: codec.fmtp,
        rtcp_feedback: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_asks_for_its_layer_unless_the_edge_turned_it_off() {
        let rids = |rids: &[&str]| rids.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>();
        // Nothing turned off: every link asks for its own quality.
        assert_eq!(link_quality(0, 3, None), Quality::Low);
        assert_eq!(link_quality(1, 3, None), Quality::Medium);
        assert_eq!(link_quality(2, 3, None), Quality::High);
        let upper_off = rids(&["h", "f"]);
        assert_eq!(link_quality(0, 3, Some(&upper_off)), Quality::Low);
        assert_eq!(link_quality(1, 3, Some(&upper_off)), Quality::Off);
        assert_eq!(link_quality(2, 3, Some(&upper_off)), Quality::Off);
        // A layer the edge does not know yet (its link came late) is not off.
        let low_off = rids(&["q"]);
        assert_eq!(link_quality(2, 3, Some(&low_off)), Quality::High);
        // Two links: the second is the edge's layer `h`.
        assert_eq!(link_quality(0, 2, Some(&low_off)), Quality::Off);
        assert_eq!(link_quality(1, 2, Some(&low_off)), quality(1, 2));
        // A single link carries the only copy and is never turned off from here.
        assert_eq!(
            link_quality(0, 1, Some(&rids(&["q", "h", "f"]))),
            Quality::High
        );
    }

    #[test]
    fn quality_requests_are_paced_and_caught_up_later() {
        let mut parent = Parent::default();
        for n in 0..60 {
            parent.simulcast.insert(format!("track-{n}"), true);
        }
        parent.simulcast.insert("audio".into(), false);
        let mut budget = TokenBucket::new(LINK_QUALITY_RATE.0, LINK_QUALITY_RATE.1);
        let t0 = std::time::Instant::now();
        let none = BTreeMap::new();
        let first = parent.sync((0, 3), &none, &mut budget, t0);
        assert_eq!(first.len(), LINK_QUALITY_RATE.1 as usize, "a burst, not 60");
        // Nothing new to ask for what was asked.
        let again = parent.sync((0, 3), &none, &mut budget, t0);
        assert!(again.is_empty());
        let later = parent.sync((0, 3), &none, &mut budget, t0 + Duration::from_secs(3));
        assert_eq!(later.len(), 60 - first.len(), "the rest caught up");
        // Every track asked for once, the audio track never.
        let asked: std::collections::HashSet<String> = first
            .iter()
            .chain(&later)
            .map(|m| match m {
                ClientMessage::SetQuality { track, quality } => {
                    assert_eq!(*quality, Quality::Low);
                    track.clone()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(asked.len(), 60);
        // One track's layer turned off: one request.
        let mut off = BTreeMap::new();
        off.insert("track-7".to_owned(), vec!["q".to_owned()]);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            parent.sync((0, 3), &off, &mut budget, t1),
            vec![ClientMessage::SetQuality {
                track: "track-7".into(),
                quality: Quality::Off
            }]
        );
    }
}
