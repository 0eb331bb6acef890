//! The parent's side of a relay pipe, played by the test as the edge would: it joins as a
//! relay with its end of the pipe, reads the parent's answer and track announcements,
//! decrypts what arrives at its media address with its own SRTP receiver, and sends
//! NACKs and keyframe requests back as SRTCP.

use super::*;
use crate::shard::api::JoinRequest;
use crate::signal::protocol::PipeEnd;
use crate::sim::synth::{self, VideoCodec};
use crate::srtp::{Profile, SrtcpSender, SrtpReceiver, rtp_header_len};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use std::collections::HashMap;

const EDGE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1)), 7000);
const EDGE_SSRC: u32 = 0xED6E_0001;

/// One decrypted pipe packet: SSRC, sequence number, plain packet.
type Plain = (u32, u16, Vec<u8>);

struct Edge {
    session: crate::shard::api::SessionId,
    events: mpsc::Receiver<ServerMessage>,
    rtcp: SrtcpSender,
    receiver: Option<SrtpReceiver>,
    /// Announced SSRC → (track, video).
    tracks: HashMap<u32, (String, bool)>,
}

impl Edge {
    fn join(sim: &mut Sim, room: &str) -> Self {
        let key = [0x42u8; 16];
        let salt = [0x24u8; 12];
        let mut both = key.to_vec();
        both.extend_from_slice(&salt);
        let (session, events) = sim
            .join_raw(JoinRequest {
                room: room.into(),
                participant: "relay.edge-1.0".into(),
                name: "relay".into(),
                publish: false,
                subscribe: true,
                recorder: false,
                offer_subscriber: false,
                relay: true,
                pipe: Some(PipeEnd {
                    media: EDGE.to_string(),
                    key: BASE64.encode(&both),
                    ssrc: EDGE_SSRC,
                }),
            })
            .expect("relay joins");
        sim.tap(EDGE);
        Self {
            session,
            events,
            rtcp: SrtcpSender::new(Profile::AeadAes128Gcm, &key, &salt).expect("sender"),
            receiver: None,
            tracks: HashMap::new(),
        }
    }

    /// Reads the parent's messages: its end of the pipe, and the tracks on it.
    fn read_events(&mut self) {
        while let Ok(message) = self.events.try_recv() {
            match message {
                ServerMessage::Pipe { end } => {
                    assert_eq!(end.media, SHARD.to_string());
                    assert_ne!(end.ssrc, EDGE_SSRC);
                    let both = BASE64.decode(&end.key).expect("base64 key");
                    self.receiver = Some(
                        SrtpReceiver::new(Profile::AeadAes128Gcm, &both[..16], &both[16..])
                            .expect("receiver"),
                    );
                }
                ServerMessage::PipeTrack {
                    track,
                    kind,
                    ssrc,
                    codec,
                    ..
                } => {
                    let video = kind == TrackKind::Video;
                    assert_eq!(codec.mime.starts_with("video/"), video, "{codec:?}");
                    assert!(self.tracks.insert(ssrc, (track, video)).is_none());
                }
                ServerMessage::Offer { .. } => panic!("a pipe gets no offer"),
                _ => {}
            }
        }
    }

    /// Decrypts what arrived, except the packets `lose` picks (as a network would lose
    /// them, before they are read).
    fn receive(&mut self, sim: &mut Sim, mut lose: impl FnMut(u32, u16) -> bool) -> Vec<Plain> {
        self.read_events();
        let receiver = self
            .receiver
            .as_mut()
            .expect("the parent's end of the pipe");
        let mut out = Vec::new();
        for mut datagram in sim.tapped(EDGE) {
            let media = datagram.len() >= 12 && !(192..=223).contains(&datagram[1]);
            assert!(media, "only media reaches a pipe's edge here");
            let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
            let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
            if lose(ssrc, seq) {
                continue;
            }
            let len = receiver.unprotect_rtp(&mut datagram).expect("decrypts");
            out.push((ssrc, seq, datagram[..len].to_vec()));
        }
        out
    }

    fn send_rtcp(&mut self, sim: &mut Sim, packet: Box<dyn rtc::rtcp::packet::Packet>) {
        let plain = rtc::rtcp::packet::marshal(&[packet]).expect("marshal");
        let mut buf = BytesMut::from(&plain[..]);
        self.rtcp.protect(&mut buf).expect("protect");
        sim.send_to_shard(EDGE, &buf);
    }

    fn ssrc(&self, video: bool) -> u32 {
        self.tracks
            .iter()
            .find(|(_, (_, v))| *v == video)
            .map(|(ssrc, _)| *ssrc)
            .expect("announced")
    }
}

fn payload(plain: &[u8]) -> &[u8] {
    &plain[rtp_header_len(plain).expect("RTP")..]
}

#[test]
fn a_relay_pipe_carries_every_track_and_answers_nacks_and_keyframe_requests() {
    let mut sim = Sim::with_defaults().unwrap();
    let mut video = VideoSpec::single();
    video.keyframe_interval = Duration::from_secs(600);
    sim.join("room", "alice", publishing(Some(None), Some(video)))
        .unwrap();
    sim.connect_all().unwrap();
    let mut edge = Edge::join(&mut sim, "room");
    sim.run_for(Duration::from_secs(2));
    let got = edge.receive(&mut sim, |_, _| false);
    assert_eq!(edge.tracks.len(), 2, "audio and video announced");
    let (audio, video) = (edge.ssrc(false), edge.ssrc(true));
    // Every packet is one of the announced streams, intact, in order, without gaps.
    let mut last: HashMap<u32, u16> = HashMap::new();
    for (ssrc, seq, plain) in &got {
        assert!(*ssrc == audio || *ssrc == video, "unannounced SSRC {ssrc}");
        let probe = synth::probe(payload(plain), 0).expect("a synthetic payload");
        let expected_stream = stream_id(0, (*ssrc == video).then_some(0));
        assert_eq!(probe.stream, expected_stream);
        if let Some(previous) = last.insert(*ssrc, *seq) {
            assert_eq!(*seq, previous.wrapping_add(1), "no gap, no reordering");
        }
    }
    let count = |ssrc: u32| got.iter().filter(|(s, _, _)| *s == ssrc).count();
    println!(
        "pipe: {} audio and {} video packets in 2 s",
        count(audio),
        count(video)
    );
    assert!(count(audio) >= 80, "audio packets: {}", count(audio));
    assert!(count(video) >= 40, "video packets: {}", count(video));
    let first_video = got.iter().find(|(s, _, _)| *s == video).expect("video");
    assert!(
        synth::is_keyframe(VideoCodec::Vp8, payload(&first_video.2)),
        "the pipe's video starts on a keyframe"
    );

    // Two video packets lost on the way; the edge asks for them once.
    sim.run_for(Duration::from_millis(300));
    let mut lost = Vec::new();
    let arrived = edge.receive(&mut sim, |ssrc, seq| {
        let take = ssrc == video && lost.len() < 2 && seq % 3 == 0;
        if take {
            lost.push(seq);
        }
        take
    });
    assert_eq!(lost.len(), 2, "{} packets arrived", arrived.len());
    edge.send_rtcp(
        &mut sim,
        Box::new(TransportLayerNack {
            sender_ssrc: EDGE_SSRC,
            media_ssrc: video,
            nacks: lost
                .iter()
                .map(|&seq| NackPair {
                    packet_id: seq,
                    lost_packets: 0,
                })
                .collect(),
        }),
    );
    sim.run_for(Duration::from_millis(50));
    let resent: Vec<u16> = edge
        .receive(&mut sim, |_, _| false)
        .iter()
        .filter(|(ssrc, seq, _)| *ssrc == video && lost.contains(seq))
        .map(|(_, seq, _)| *seq)
        .collect();
    assert_eq!(resent, lost, "each lost packet resent once, and decrypted");

    // A keyframe request goes to the publisher, and a keyframe comes down the pipe.
    let keyframes = |got: &[Plain]| {
        got.iter()
            .filter(|(s, _, p)| *s == video && synth::is_keyframe(VideoCodec::Vp8, payload(p)))
            .count()
    };
    edge.send_rtcp(
        &mut sim,
        Box::new(PictureLossIndication {
            sender_ssrc: EDGE_SSRC,
            media_ssrc: video,
        }),
    );
    sim.run_for(Duration::from_millis(500));
    assert!(keyframes(&edge.receive(&mut sim, |_, _| false)) >= 1);

    // Forged SRTCP from the edge's address is refused and counted; media flows on.
    let mut forged = BytesMut::from(
        &rtc::rtcp::packet::marshal(&[Box::new(PictureLossIndication {
            sender_ssrc: EDGE_SSRC,
            media_ssrc: video,
        }) as Box<dyn rtc::rtcp::packet::Packet>])
        .expect("marshal")[..],
    );
    edge.rtcp.protect(&mut forged).expect("protect");
    forged[10] ^= 0x40;
    sim.send_to_shard(EDGE, &forged);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(keyframes(&edge.receive(&mut sim, |_, _| false)), 0);
    assert_eq!(
        sim.metrics()
            .dropped_count(crate::metrics::DropReason::BadSrtcp),
        1
    );

    // The relay session ends: so does the pipe.
    let now = sim.now();
    sim.core().handle_command(
        now,
        Command::Leave {
            session: edge.session,
        },
    );
    sim.run_for(Duration::from_millis(100));
    let _ = sim.tapped(EDGE);
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.tapped(EDGE).is_empty(),
        "nothing sent after the session ended"
    );
    let load = sim.ask(|reply| Command::Load { reply }).unwrap();
    assert_eq!(
        load.participants, 1,
        "the relay never took a seat; alice stays"
    );
}

#[test]
fn a_bad_pipe_end_is_refused_at_join() {
    let mut sim = Sim::with_defaults().unwrap();
    sim.join("room", "alice", publishing(Some(None), None))
        .unwrap();
    let join = |media: &str, key: String| JoinRequest {
        room: "room".into(),
        participant: "relay.x.0".into(),
        name: "relay".into(),
        publish: false,
        subscribe: true,
        recorder: false,
        offer_subscriber: false,
        relay: true,
        pipe: Some(PipeEnd {
            media: media.into(),
            key,
            ssrc: 7,
        }),
    };
    let good_key = BASE64.encode([1u8; 28]);
    for (media, key) in [
        ("not an address", good_key.clone()),
        ("0.0.0.0:7000", good_key.clone()),
        ("10.0.9.1:0", good_key.clone()),
        ("[::1]:7000", good_key.clone()),
        ("10.0.9.1:7000", BASE64.encode([1u8; 16])),
        ("10.0.9.1:7000", "%%%".into()),
    ] {
        let refused = sim.join_raw(join(media, key)).err();
        assert!(refused.is_some(), "{media} accepted");
    }
    assert!(
        sim.join_raw(join("10.0.9.1:7000", good_key.clone()))
            .is_ok()
    );
    // The same address and SSRC again, from another relay session.
    let mut again = join("10.0.9.1:7000", good_key);
    again.participant = "relay.y.0".into();
    assert!(sim.join_raw(again).is_err());
}

/// The parent's side, played by the test: its key, and an SRTP sender with it.
struct Parent {
    sender: crate::srtp::SrtpSender,
    source: synth::VideoSource,
    seq: u16,
    /// The SSRC the parent announced for this copy.
    ssrc: u32,
}

const PARENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 8, 1)), 7882);
const PIPE_VIDEO_SSRC: u32 = 0x5151_0001;

impl Parent {
    /// The parent's copy of `source` under `ssrc`, protected with [`PARENT_KEY`].
    fn new(source: synth::VideoSource, ssrc: u32) -> Self {
        Self {
            sender: crate::srtp::SrtpSender::new(
                Profile::AeadAes128Gcm,
                &PARENT_KEY[..16],
                &PARENT_KEY[16..],
            )
            .expect("sender"),
            source,
            seq: 1000,
            ssrc,
        }
    }

    /// The next frame's packets, protected for the pipe, with their sequence numbers.
    fn frame(&mut self, epoch: Instant, now: Instant) -> Vec<(u16, Vec<u8>)> {
        let sent_ns = now.saturating_duration_since(epoch).as_nanos() as u64;
        self.source
            .next_frame(sent_ns)
            .into_iter()
            .map(|p| {
                let seq = self.seq;
                self.seq = self.seq.wrapping_add(1);
                (seq, self.protect(seq, p.timestamp, p.marker, &p.payload))
            })
            .collect()
    }

    fn protect(&self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: 96,
                sequence_number: seq,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        let plain = rtc::shared::marshal::Marshal::marshal(&packet).expect("marshal");
        let mut buf = BytesMut::from(&plain[..]);
        self.sender
            .protect(&mut buf, 12, self.ssrc, u64::from(seq))
            .expect("protect");
        buf.to_vec()
    }
}

const PARENT_KEY: [u8; 28] = [0x11; 28];
const EDGE_KEY: [u8; 28] = [0x22; 28];

/// The edge's room "room" fed by a parent: the relay attached, the pipe open (what the
/// edge sends the parent tapped), Alice present at the parent. Returns the pipe and what
/// the edge turns off upstream.
fn edge_fed_by_parent(sim: &mut Sim) -> (crate::shard::api::PipeId, crate::shard::api::TurnedOff) {
    let (demand, turned_off) = tokio::sync::watch::channel(Default::default());
    let attached = sim.ask(|reply| Command::RelayAttach {
        room: "room".into(),
        demand,
        reply,
    });
    assert_eq!(attached, Some(Ok(())));
    let pipe = sim
        .ask(|reply| Command::PipeOpen {
            room: "room".into(),
            parent: PipeEnd {
                media: PARENT.to_string(),
                key: BASE64.encode(PARENT_KEY),
                ssrc: 0xAAAA,
            },
            own_key: BASE64.encode(EDGE_KEY),
            own_ssrc: 0xBBBB,
            reply,
        })
        .unwrap()
        .expect("the pipe opens");
    sim.tap(PARENT);
    let now = sim.now();
    sim.core().handle_command(
        now,
        Command::RelayParticipant {
            room: "room".into(),
            participant: "alice".into(),
            name: "Alice".into(),
            present: true,
        },
    );
    (pipe, turned_off)
}

/// The parent announces a copy of Alice's VP8 camera on the pipe under `ssrc`, as layer
/// `layer` (rank, of how many).
fn announce_camera(sim: &mut Sim, pipe: crate::shard::api::PipeId, ssrc: u32, layer: (u8, u8)) {
    let taken = sim.ask(|reply| Command::PipeTrack {
        pipe,
        track: crate::shard::api::RelayedTrack {
            room: "room".into(),
            participant: "alice".into(),
            name: "Alice".into(),
            track: "camera".into(),
            kind: TrackKind::Video,
            codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: Vec::new(),
            },
            ssrc,
            layer,
        },
        reply,
    });
    assert_eq!(taken, Some(true));
}

/// RTCP the edge sent up the pipe, decrypted with the edge's key.
fn upstream_rtcp(
    sim: &mut Sim,
    receiver: &mut SrtpReceiver,
) -> Vec<Box<dyn rtc::rtcp::packet::Packet>> {
    let mut out = Vec::new();
    for mut datagram in sim.tapped(PARENT) {
        let len = receiver
            .unprotect_rtcp(&mut datagram)
            .expect("the edge's SRTCP");
        out.extend(rtc::rtcp::packet::unmarshal(&mut &datagram[..len]).expect("RTCP"));
    }
    out
}

#[test]
fn an_edge_end_of_a_pipe_feeds_viewers_and_asks_upstream_for_losses_and_keyframes() {
    let mut sim = Sim::with_defaults().unwrap();
    let viewer = sim.join("room", "viewer-0", viewer()).unwrap();
    let (pipe, _turned_off) = edge_fed_by_parent(&mut sim);
    announce_camera(&mut sim, pipe, PIPE_VIDEO_SSRC, (0, 1));
    let mut parent = Parent::new(
        synth::VideoSource::new(
            VideoCodec::Vp8,
            stream_id(0, Some(0)),
            300_000,
            Duration::from_secs(600),
        ),
        PIPE_VIDEO_SSRC,
    );
    let mut edge_rtcp = SrtpReceiver::new(Profile::AeadAes128Gcm, &EDGE_KEY[..16], &EDGE_KEY[16..])
        .expect("receiver");
    let epoch = sim.now();
    // Two seconds of video from the parent, which makes a keyframe when the edge asks
    // (its viewer connected after the first one); one packet is lost on the way.
    let mut lost = None;
    let mut lost_packet = None;
    let mut nacked: Vec<u16> = Vec::new();
    let mut keyframes_asked = 0;
    for frame in 0..60 {
        for (seq, datagram) in parent.frame(epoch, sim.now()) {
            if frame == 45 && lost.is_none() {
                lost = Some(seq);
                lost_packet = Some(datagram);
                continue;
            }
            sim.send_to_shard(PARENT, &datagram);
        }
        sim.run_for(Duration::from_millis(33));
        for packet in upstream_rtcp(&mut sim, &mut edge_rtcp) {
            if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() {
                assert_eq!(
                    (nack.sender_ssrc, nack.media_ssrc),
                    (0xBBBB, PIPE_VIDEO_SSRC)
                );
                nacked.extend(nack.nacks.iter().flat_map(|pair| pair.packet_list()));
            } else if packet.as_any().is::<PictureLossIndication>() {
                keyframes_asked += 1;
                parent.source.request_keyframe();
            }
        }
    }
    assert!(
        keyframes_asked >= 1,
        "the edge asked for the keyframe its viewer needs"
    );
    let lost = lost.expect("a packet lost");
    let track = sim
        .client(viewer)
        .track_of("alice", TrackKind::Video)
        .expect("announced");
    let received = sim.client(viewer).received_on(&track).count();
    assert!(received >= 50, "the viewer got {received} packets");
    // The edge asked the parent for the lost packet, and nothing else.
    assert!(nacked.contains(&lost), "{nacked:?} lacks {lost}");
    assert!(nacked.iter().all(|s| *s == lost), "{nacked:?}");
    // The parent resends it: the viewer gets the repair.
    let before = sim.client(viewer).received_on(&track).count();
    sim.send_to_shard(PARENT, &lost_packet.expect("kept"));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.client(viewer).received_on(&track).count(), before + 1);
    // The viewer asks for a keyframe: the request goes up the pipe.
    let now = sim.now();
    assert!(sim.client_mut(viewer).request_keyframe(now, &track));
    sim.run_for(Duration::from_millis(200));
    let plis: Vec<u32> = upstream_rtcp(&mut sim, &mut edge_rtcp)
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<PictureLossIndication>())
        .map(|p| p.media_ssrc)
        .collect();
    assert_eq!(plis, vec![PIPE_VIDEO_SSRC]);
    // Media under the pipe's SSRC but not its key is refused and counted.
    let forger =
        crate::srtp::SrtpSender::new(Profile::AeadAes128Gcm, &[9; 16], &[9; 12]).expect("sender");
    let mut forged = BytesMut::from(&parent.protect(5000, 0, false, &[1, 2, 3])[..]);
    forged.truncate(forged.len() - 16);
    forger
        .protect(&mut forged, 12, PIPE_VIDEO_SSRC, 5000)
        .expect("protect");
    let before = sim.client(viewer).received_on(&track).count();
    sim.send_to_shard(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 6, 6, 6)), 1),
        &forged,
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.client(viewer).received_on(&track).count(), before);
    // The relay ends: its track leaves the viewer, and the pipe takes nothing more.
    let now = sim.now();
    sim.core().handle_command(
        now,
        Command::RelayDetach {
            room: "room".into(),
        },
    );
    sim.run_for(Duration::from_millis(100));
    for (_, datagram) in parent.frame(epoch, sim.now()) {
        sim.send_to_shard(PARENT, &datagram);
    }
    let before = sim.client(viewer).received_on(&track).count();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.client(viewer).received_on(&track).count(), before);
}

#[test]
fn an_edge_turns_off_upstream_the_relayed_layers_none_of_its_viewers_needs() {
    use crate::media::dynacast::PAUSE_AFTER;
    let mut sim = Sim::with_defaults().unwrap();
    let viewer = sim.join("room", "viewer-0", viewer()).unwrap();
    let (pipe, turned_off) = edge_fed_by_parent(&mut sim);
    // Three links' copies of Alice's camera on one pipe, as an edge of `layers: 3` takes it.
    let announce = |sim: &mut Sim, rank: u8| {
        announce_camera(sim, pipe, PIPE_VIDEO_SSRC + u32::from(rank), (rank, 3));
    };
    let mut parents = Vec::new();
    for (rank, bitrate) in [(0u8, 150_000), (1, 500_000), (2, 1_500_000)] {
        let ssrc = PIPE_VIDEO_SSRC + u32::from(rank);
        parents.push(Parent::new(
            synth::VideoSource::new(
                VideoCodec::Vp8,
                stream_id(0, Some(usize::from(rank))),
                bitrate,
                Duration::from_secs(1),
            ),
            ssrc,
        ));
    }
    let epoch = sim.now();
    // Sends what the first `links` links carry for `duration`.
    let mut run_links = |sim: &mut Sim, duration: Duration, links: usize| {
        let until = sim.now() + duration;
        while sim.now() < until {
            for parent in parents.iter_mut().take(links) {
                for (_, datagram) in parent.frame(epoch, sim.now()) {
                    sim.send_to_shard(PARENT, &datagram);
                }
            }
            sim.run_for(Duration::from_millis(33));
        }
    };
    let off = |off: &crate::shard::api::TurnedOff| off.borrow().get("camera").cloned();
    let rids = |rids: &[&str]| Some(rids.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>());
    // The third link comes late: with two layers the viewer watches `h`, and `q` is
    // turned off upstream.
    announce(&mut sim, 0);
    announce(&mut sim, 1);
    run_links(&mut sim, Duration::from_secs(6), 2);
    assert_eq!(off(&turned_off), rids(&["q"]));
    // The third layer arrives: the edge starts afresh with every layer on, upstream too
    // (its link must not ask for nothing because `f` was not among the layers kept).
    announce(&mut sim, 2);
    assert_eq!(off(&turned_off), None);
    let mut run = |sim: &mut Sim, duration: Duration| run_links(sim, duration, 3);
    run(&mut sim, Duration::from_secs(2));
    assert_eq!(
        off(&turned_off),
        None,
        "nothing turned off in the first seconds"
    );
    run(&mut sim, Duration::from_secs(4));
    let track = sim
        .client(viewer)
        .track_of("alice", TrackKind::Video)
        .expect("announced");
    let top = stream_id(0, Some(2));
    assert!(
        sim.client(viewer)
            .received_on(&track)
            .any(|r| r.stream == top),
        "the viewer watches the top layer"
    );
    // The layers nobody watches are turned off upstream.
    assert_eq!(off(&turned_off), rids(&["q", "h"]));
    // The viewer shows the video small: the low layer is turned on at once, the top one
    // only after the pause delay.
    set_quality(&mut sim, viewer, &track, Quality::Low);
    run(&mut sim, Duration::from_millis(100));
    assert_eq!(off(&turned_off), rids(&["h"]));
    run(&mut sim, PAUSE_AFTER - Duration::from_millis(500));
    assert_eq!(off(&turned_off), rids(&["h"]), "not before the pause delay");
    run(&mut sim, Duration::from_secs(1));
    assert_eq!(off(&turned_off), rids(&["h", "f"]));
    // Large again: the top layer is needed at once.
    set_quality(&mut sim, viewer, &track, Quality::High);
    run(&mut sim, Duration::from_millis(100));
    assert_eq!(off(&turned_off), rids(&["h"]));
    let top_received = |sim: &Sim| {
        sim.client(viewer)
            .received_on(&track)
            .filter(|r| r.stream == top)
            .count()
    };
    let top_before = top_received(&sim);
    run(&mut sim, Duration::from_secs(2));
    let top_after = top_received(&sim);
    assert!(
        top_after > top_before + 30,
        "the top layer reached the viewer again"
    );
    // Alice leaves the parent: her track's demand goes with her.
    let now = sim.now();
    sim.core().handle_command(
        now,
        Command::RelayParticipant {
            room: "room".into(),
            participant: "alice".into(),
            name: String::new(),
            present: false,
        },
    );
    assert!(turned_off.borrow().is_empty());
}
