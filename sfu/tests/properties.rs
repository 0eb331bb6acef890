//! Property-based tests of every parser the shard runs on outside input: datagrams, the
//! ICE-TCP framing, SDP, codec payloads; and the demultiplexer's invariants. Each runs a
//! few hundred generated cases in CI; `PROPTEST_CASES=100000 cargo test -p tutti-sfu
//! --test properties` runs them longer.

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tutti_sfu::demux::{Demux, MAX_ADDRS_PER_PEER};
use tutti_sfu::media::codec::{CodecFamily, audio_level, is_keyframe, red_primary};
use tutti_sfu::shard::sdp::{MAX_MEDIA_SECTIONS, MAX_RIDS_PER_SECTION, checked_sections};
use tutti_sfu::tcp::{FrameDecoder, MAX_FRAME, encode};
use tutti_sfu::wire::{classify, probe_response, stun_username};

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides the count; the default keeps CI quick.
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

/// Bytes that are often shaped like STUN: a Binding request header with arbitrary
/// attributes after it, or anything at all.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(len, body)| {
            let mut d = vec![0x00, 0x01];
            d.extend_from_slice(&len.to_be_bytes());
            d.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            d.extend_from_slice(&[7u8; 12]);
            d.extend_from_slice(&body);
            d
        }),
    ]
}

/// SDP-like text: real attribute lines in random order and counts, with noise.
fn sdp() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("m=video 9 UDP/TLS/RTP/SAVPF 96".to_owned()),
        Just("m=audio 0 UDP/TLS/RTP/SAVPF 111".to_owned()),
        "a=rid:[a-z0-9_\\-]{0,20} (send|recv)".prop_map(|s| s),
        "a=mid:[a-z0-9]{0,4}".prop_map(|s| s),
        Just("a=sendonly".to_owned()),
        Just("a=inactive".to_owned()),
        ".{0,40}".prop_map(|s| s),
    ];
    proptest::collection::vec(line, 0..80).prop_map(|lines| lines.join("\r\n"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn datagram_parsers_take_anything(d in datagram(), port in any::<u16>(), ip in any::<[u8; 4]>()) {
        let _ = classify(&d);
        if let Some(username) = stun_username(&d) {
            // The username lies inside the datagram.
            prop_assert!(username.len() <= d.len());
        }
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port);
        if let Some(response) = probe_response(&d, from) {
            // Only plain Binding requests are answered, with a decodable success
            // response carrying the sender's address and transaction id.
            prop_assert!(stun_username(&d).is_none());
            let mut message = rtc::stun::message::Message { raw: response.clone(), ..Default::default() };
            prop_assert!(message.decode().is_ok());
            prop_assert_eq!(&response[8..20], &d[8..20]);
            prop_assert!(response.len() <= d.len().max(20) + 12);
        }
    }

    #[test]
    fn ice_tcp_frames_survive_any_split(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20), cuts in proptest::collection::vec(1usize..64, 0..50)) {
        let stream: Vec<u8> = packets.iter().flat_map(|p| encode(p).unwrap().to_vec()).collect();
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter();
        while at < stream.len() {
            let step = cuts.next().unwrap_or(stream.len() - at).min(stream.len() - at);
            decoder.push(&stream[at..at + step]);
            at += step;
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn ice_tcp_garbage_is_refused_or_buffered_boundedly(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut decoder = FrameDecoder::default();
        decoder.push(&bytes);
        let mut held = bytes.len();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() <= MAX_FRAME);
                    held -= frame.len() + 2;
                }
                Ok(None) => break,
                Err(too_large) => { prop_assert!(too_large.0 > MAX_FRAME); break }
            }
        }
        prop_assert!(held <= bytes.len());
    }

    #[test]
    fn sdp_checks_bound_what_gets_through(text in sdp()) {
        if let Ok(sections) = checked_sections(&text) {
            prop_assert!(sections.len() <= MAX_MEDIA_SECTIONS);
            for section in &sections {
                prop_assert!(section.rid_lines <= MAX_RIDS_PER_SECTION);
                prop_assert!(section.send_rids.len() <= section.rid_lines);
                prop_assert!(section.send_rids.iter().all(|r| (1..=16).contains(&r.len())));
            }
        }
    }

    #[test]
    fn codec_parsers_take_any_payload(payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        for family in [CodecFamily::Opus, CodecFamily::Vp8, CodecFamily::Vp9, CodecFamily::H264, CodecFamily::Av1, CodecFamily::Red, CodecFamily::Other] {
            let _ = is_keyframe(family, &payload);
        }
        if let Some((_, offset)) = red_primary(&payload) {
            prop_assert!(offset <= payload.len());
        }
        let _ = audio_level(&payload);
    }

    #[test]
    fn the_demultiplexer_keeps_its_bounds(ops in proptest::collection::vec((0u8..4, 0u16..40, 0u32..6, 0u64..120), 0..300)) {
        let mut demux: Demux<u32> = Demux::new(Duration::from_secs(30));
        let start = Instant::now();
        let mut removed: Vec<u32> = Vec::new();
        for (op, port, peer, secs) in ops {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1000 + port);
            let now = start + Duration::from_secs(secs);
            match op {
                0 => { demux.bind(addr, None, peer, now); removed.retain(|p| *p != peer); }
                1 => { demux.remove_peer(peer); removed.push(peer); }
                2 => { demux.evict_idle(now); }
                _ => { demux.peer_by_addr(addr, None, now); }
            }
            for p in 0..6u32 {
                let owned = (0..40u16)
                    .filter(|port| demux.owner(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1000 + port)) == Some(p))
                    .count();
                prop_assert!(owned <= MAX_ADDRS_PER_PEER);
                if removed.contains(&p) {
                    prop_assert_eq!(owned, 0, "a removed peer keeps no address");
                }
            }
        }
    }
}
