//! The relay client: how an edge shard receives a broadcast from its parent.
//!
//! For a pipeline whose spec names a parent, the edge joins the parent's pipeline the way
//! a participant does — over the parent's signaling WebSocket, authenticated by the
//! shards' signaling token — but as a *relay*: it takes no seat, is never announced, and
//! receives every track over one DTLS-SRTP connection. It does this once per relayed
//! simulcast layer (each link asks the parent for one quality), so an edge takes one copy
//! of each track and layer whatever the size of its audience, and hands the packets to
//! its core, which forwards them to its viewers as if a publisher had sent them.
//!
//! Repair is hop by hop: the client's NACK generator asks the parent for what got lost on
//! the way, and the edge answers its viewers' NACKs from its own buffers. Keyframe requests
//! from the edge's viewers arrive here already throttled per layer and go up to the parent,
//! which throttles again before its presenter sees any.
//!
//! The client runs on the async `webrtc` crate, with a socket of its own: it is the
//! controlling ICE agent towards the parent's ICE-lite shard, which the shard's own
//! sans-I/O core on the shared media port is not built to be.

use crate::shard::api::{Command, CoreHandle, RelayFeedback, RelayedTrack};
use crate::signal::protocol::{
    ClientMessage, PeerTarget, Quality, ServerMessage, TrackKind, decode_server, encode_client,
};
use futures_util::{SinkExt, StreamExt};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::admin::RelaySpec;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCSessionDescription, Registry, register_default_interceptors,
};

/// What a relay needs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The edge's pipeline.
    pub room: String,
    /// Where its media comes from.
    pub spec: RelaySpec,
    /// The token the parent's signaling endpoint accepts.
    pub signal_token: String,
    /// The address the relay's socket binds to.
    pub bind_ip: IpAddr,
    /// This shard's id, in the relay's participant id at the parent.
    pub edge: String,
}

/// Relayed packets queued towards the core before the newest are dropped.
const PACKET_QUEUE_WARN: u64 = 1000;

/// Runs the relay until `stop`, reconnecting after every interruption.
pub fn spawn(
    core: CoreHandle,
    options: RelayOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(250);
        loop {
            let (feedback, requests) = mpsc::channel(256);
            if core
                .relay_attach(options.room.clone(), feedback)
                .await
                .is_err()
            {
                // The pipeline is gone (released): nothing to feed.
                return;
            }
            let outcome = tokio::select! {
                _ = stop.cancelled() => Ok(()),
                outcome = relay(&core, &options, requests) => outcome,
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

/// The parent's tracks this relay receives, by SSRC, for keyframe requests.
type Received = Arc<Mutex<HashMap<u32, Arc<dyn TrackRemote>>>>;

/// One relay session: a link per layer, until any of them ends.
async fn relay(
    core: &CoreHandle,
    options: &RelayOptions,
    mut requests: mpsc::Receiver<RelayFeedback>,
) -> Result<(), String> {
    let layers = options.spec.layers.clamp(1, 3);
    let received: Received = Arc::default();
    let (ended_tx, mut ended) = mpsc::channel::<String>(4);
    let mut links = Vec::new();
    for rank in 0..layers {
        links.push(tokio::spawn(link(
            core.clone(),
            options.clone(),
            (rank, layers),
            received.clone(),
            ended_tx.clone(),
        )));
    }
    let outcome = loop {
        tokio::select! {
            request = requests.recv() => match request {
                Some(RelayFeedback::KeyframeRequest { ssrc }) => {
                    let track = received.lock().await.get(&ssrc).cloned();
                    if let Some(track) = track {
                        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                        if let Err(err) = track.write_rtcp(vec![Box::new(pli)]).await {
                            tracing::debug!(%err, "keyframe request not sent up");
                        }
                    }
                }
                None => break Ok(()),
            },
            why = ended.recv() => break Err(why.unwrap_or_else(|| "every link ended".into())),
        }
    };
    for link in links {
        link.abort();
    }
    outcome
}

/// What the links of a relay know about the parent's participants and tracks.
#[derive(Default)]
struct Parent {
    names: HashMap<String, String>,
    /// Track id → (publisher, has simulcast layers).
    tracks: HashMap<String, (String, bool)>,
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

/// One link: a relay session at the parent receiving one layer of every track.
async fn link(
    core: CoreHandle,
    options: RelayOptions,
    layer: (u8, u8),
    received: Received,
    ended: mpsc::Sender<String>,
) {
    let why = match run_link(&core, &options, layer, received).await {
        Ok(()) => "the parent ended the relay".to_owned(),
        Err(err) => err,
    };
    let _ = ended.send(why).await;
}

async fn run_link(
    core: &CoreHandle,
    options: &RelayOptions,
    layer: (u8, u8),
    received: Received,
) -> Result<(), String> {
    let (rank, layers) = layer;
    let mut request = options
        .spec
        .from
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", options.signal_token)
        .parse()
        .map_err(|_| "the signaling token is not a header value".to_owned())?;
    request.headers_mut().insert("authorization", bearer);
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "the parent did not answer".to_owned())?
    .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = socket.split();
    let participant = format!("relay.{}.{rank}", options.edge);
    let join = ClientMessage::Join {
        room: options.spec.room.clone(),
        participant: participant.chars().take(64).collect(),
        name: Some("relay".into()),
        publish: Some(false),
        subscribe: Some(true),
        relay: Some(true),
        pipe: None,
    };
    sink.send(Message::Text(encode_client(&join).into()))
        .await
        .map_err(|e| e.to_string())?;
    let parent = Arc::new(Mutex::new(Parent::default()));
    let pc = build_pc(
        core.clone(),
        options.clone(),
        layer,
        parent.clone(),
        received,
    )
    .await?;
    let top = rank + 1 == layers;
    let result = async {
        while let Some(frame) = stream.next().await {
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(_)) | Err(_) => return Err("the parent closed the link".to_owned()),
                Ok(_) => continue,
            };
            let Ok(message) = decode_server(&text) else {
                continue;
            };
            let mut replies = Vec::new();
            match message {
                ServerMessage::Joined { participants, .. } => {
                    let mut parent = parent.lock().await;
                    for p in participants {
                        parent.names.insert(p.id.clone(), p.name.clone());
                        for track in &p.tracks {
                            parent.tracks.insert(track.id.clone(), (p.id.clone(), !track.layers.is_empty()));
                            if !track.layers.is_empty() {
                                replies.push(ClientMessage::SetQuality { track: track.id.clone(), quality: quality(rank, layers) });
                            }
                        }
                        if top {
                            let (participant, sharing) = (p.id.clone(), p.screen_sharing);
                            core.send(Command::RelayParticipant { room: options.room.clone(), participant: p.id, name: p.name, present: true }).await;
                            if sharing {
                                core.send(Command::RelayScreenShare { room: options.room.clone(), participant, active: true }).await;
                            }
                        }
                    }
                }
                ServerMessage::ParticipantJoined { participant } => {
                    parent.lock().await.names.insert(participant.id.clone(), participant.name.clone());
                    if top {
                        core.send(Command::RelayParticipant { room: options.room.clone(), participant: participant.id, name: participant.name, present: true }).await;
                    }
                }
                ServerMessage::ScreenShare { participant, active } if top => {
                    core.send(Command::RelayScreenShare { room: options.room.clone(), participant, active }).await;
                }
                ServerMessage::ParticipantLeft { participant } if top => {
                    core.send(Command::RelayParticipant {
                        room: options.room.clone(),
                        participant,
                        name: String::new(),
                        present: false,
                    })
                    .await;
                }
                ServerMessage::TrackPublished { participant, track } => {
                    let simulcast = !track.layers.is_empty();
                    parent.lock().await.tracks.insert(track.id.clone(), (participant, simulcast));
                    if simulcast {
                        replies.push(ClientMessage::SetQuality { track: track.id, quality: quality(rank, layers) });
                    }
                }
                ServerMessage::TrackUnpublished { track, .. } => {
                    parent.lock().await.tracks.remove(&track);
                    if top {
                        core.send(Command::RelayTrackEnded { room: options.room.clone(), track }).await;
                    }
                }
                ServerMessage::Offer { sdp, .. } => {
                    let offer = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
                    pc.set_remote_description(offer).await.map_err(|e| e.to_string())?;
                    let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
                    pc.set_local_description(answer.clone()).await.map_err(|e| e.to_string())?;
                    replies.push(ClientMessage::Answer { pc: PeerTarget::Subscriber, sdp: answer.sdp });
                }
                ServerMessage::Left { reason, .. } => return Err(format!("the parent ended the relay: {reason}")),
                ServerMessage::Error { code, message } => {
                    tracing::warn!(code = code.as_str(), %message, "the parent refused a relay step");
                }
                _ => {}
            }
            for reply in replies {
                sink.send(Message::Text(encode_client(&reply).into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Err("the parent closed the link".to_owned())
    }
    .await;
    let _ = pc.close().await;
    result
}

/// Hands every received track to the core and pumps its packets there.
struct Handler {
    core: CoreHandle,
    options: RelayOptions,
    layer: (u8, u8),
    parent: Arc<Mutex<Parent>>,
    received: Received,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(pump(
            self.core.clone(),
            self.options.room.clone(),
            self.layer,
            self.parent.clone(),
            self.received.clone(),
            track,
        ));
    }
}

async fn build_pc(
    core: CoreHandle,
    options: RelayOptions,
    layer: (u8, u8),
    parent: Arc<Mutex<Parent>>,
    received: Received,
) -> Result<Arc<dyn PeerConnection>, String> {
    let mut engine = MediaEngine::default();
    engine
        .register_default_codecs()
        .map_err(|e| e.to_string())?;
    // NACK generation towards the parent (hop-by-hop repair), receiver reports.
    let registry =
        register_default_interceptors(Registry::new(), &mut engine).map_err(|e| e.to_string())?;
    let settings = webrtc::peer_connection::SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_ice_connection_attempts(Some(Duration::from_millis(50)), None)
        .build();
    let bind = std::net::SocketAddr::new(options.bind_ip, 0).to_string();
    let pc = PeerConnectionBuilder::new()
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler {
            core,
            options,
            layer,
            parent,
            received,
        }))
        .with_udp_addrs(vec![bind])
        .build()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(pc))
}

async fn pump(
    core: CoreHandle,
    room: String,
    layer: (u8, u8),
    parent: Arc<Mutex<Parent>>,
    received: Received,
    track: Arc<dyn TrackRemote>,
) {
    let (rank, layers) = layer;
    let id = track.track_id().await;
    let kind = match track.kind().await {
        RtpCodecKind::Audio => TrackKind::Audio,
        _ => TrackKind::Video,
    };
    let participant = track.stream_id().await;
    let (name, simulcast) = {
        let parent = parent.lock().await;
        (
            parent
                .names
                .get(&participant)
                .cloned()
                .unwrap_or_else(|| participant.clone()),
            parent
                .tracks
                .get(&id)
                .is_some_and(|(_, simulcast)| *simulcast),
        )
    };
    // Without simulcast every link would carry the same stream: only the top link relays
    // it. Audio is never layered.
    let top = rank + 1 == layers;
    let (rank, layers) = if simulcast && kind == TrackKind::Video {
        (rank, layers)
    } else {
        (0, 1)
    };
    if !top && layers == 1 {
        while track.poll().await.is_some() {}
        return;
    }
    let mut handle = None;
    let mut dropped = 0u64;
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        if handle.is_none() {
            let ssrc = packet.header.ssrc;
            let Some(codec) = track.codec(ssrc).await else {
                continue;
            };
            received.lock().await.insert(ssrc, track.clone());
            handle = core
                .relay_track(RelayedTrack {
                    room: room.clone(),
                    participant: participant.clone(),
                    name: name.clone(),
                    track: id.clone(),
                    kind,
                    codec,
                    ssrc,
                    layer: (rank, layers),
                })
                .await;
            if handle.is_none() {
                return;
            }
        }
        let Some(handle) = handle else { continue };
        // The media thread must never wait on a relay: when its queue is full the packet
        // is dropped (and repaired by NACK downstream), never buffered without bound.
        if !core.try_send(Command::RelayRtp { handle, packet }) {
            dropped += 1;
            if dropped % PACKET_QUEUE_WARN == 1 {
                tracing::warn!(%room, dropped, "relayed packets dropped: the media thread is behind");
            }
        }
    }
}
