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
