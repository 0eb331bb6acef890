//! A client that offers its own subscriber connection (a WHEP player): each section it
//! receives on is a slot that carries one track of its kind at a time, with one numbering
//! for the life of the connection.

use super::*;
use crate::shard::sdp::Direction;
use crate::signal::protocol::{ClientMessage, ErrorCode, PeerTarget};

/// A player offering these sections, in order.
fn player(sections: &[(TrackKind, Direction)]) -> ClientSpec {
    ClientSpec {
        offers: Some(sections.to_vec()),
        ..ClientSpec::default()
    }
}

/// The errors the shard sent client `index`, as (code, message).
fn errors(sim: &Sim, index: usize) -> Vec<(ErrorCode, String)> {
    sim.client(index)
        .events
        .iter()
        .filter_map(|e| match e {
            ServerMessage::Error { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .collect()
}

/// Runs until slot `slot` of `viewer` has `count` packets more than it has now.
fn receive_on_slot(sim: &mut Sim, viewer: usize, slot: &str, count: usize) {
    let before = sim.client(viewer).received_on(slot).count();
    let what = format!("{count} more packets on {slot}");
    sim.run_until(SETTLE, &what, |s| {
        s.client(viewer).received_on(slot).count() >= before + count
    })
    .unwrap();
}

/// Client `viewer` offers its subscriber connection with `sdp`, as written.
fn offer(sim: &mut Sim, viewer: usize, sdp: String) {
    sim.signal(
        viewer,
        ClientMessage::Offer {
            pc: PeerTarget::Subscriber,
            sdp,
        },
    );
}

/// The ICE username fragment of a description.
fn ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Alice publishes audio and one video layer in "room"; returns her index.
fn alice(sim: &mut Sim) -> usize {
    sim.join(
        "room",
        "alice",
        publishing(Some(None), Some(VideoSpec::single())),
    )
    .unwrap()
}

/// The sections most players offer: one audio and one video, both receiving.
const AUDIO_AND_VIDEO: [(TrackKind, Direction); 2] = [
    (TrackKind::Audio, Direction::RecvOnly),
    (TrackKind::Video, Direction::RecvOnly),
];

/// Those and an inactive video section.
const WITH_INACTIVE: [(TrackKind, Direction); 3] = [
    (TrackKind::Audio, Direction::RecvOnly),
    (TrackKind::Video, Direction::RecvOnly),
    (TrackKind::Video, Direction::Inactive),
];

#[test]
fn each_offered_section_carries_one_track_and_the_next_presenter_takes_over_its_numbering() {
    let mut sim = Sim::with_defaults().unwrap();
    let alice = alice(&mut sim);
    let viewer = sim.join("room", "player", player(&WITH_INACTIVE)).unwrap();
    sim.connect_all().unwrap();
    receive_on_slot(&mut sim, viewer, "slot1", 100);
    receive_on_slot(&mut sim, viewer, "slot0", 50);
    let first_video: Vec<&Received> = sim.client(viewer).received_on("slot1").collect();
    assert!(first_video[0].keyframe, "the slot starts on a keyframe");
    assert!(
        first_video
            .iter()
            .all(|r| r.stream == stream_id(alice, Some(0)))
    );
    assert!(
        sim.client(viewer)
            .received_on("slot0")
            .all(|r| r.stream == stream_id(alice, None))
    );
    let answer = sim.client(viewer).subscriber_remote_sdp().unwrap();
    assert_eq!(answer.matches("m=").count(), 3, "{answer}");
    assert!(answer.contains("a=inactive"), "{answer}");

    // Bob's tracks wait for a free slot: the only receiving ones carry Alice.
    let bob = sim
        .join(
            "room",
            "bob",
            publishing(Some(None), Some(VideoSpec::single())),
        )
        .unwrap();
    sim.connect_all().unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.client(viewer)
            .received
            .iter()
            .all(|r| r.stream != stream_id(bob, Some(0)) && r.stream != stream_id(bob, None)),
        "nothing of Bob while Alice holds the slots"
    );

    let ssrcs = (
        sim.client(viewer).received_ssrc("slot0"),
        sim.client(viewer).received_ssrc("slot1"),
    );
    let before = sim.client(viewer).received_on("slot1").count();
    sim.leave(alice);
    let what = "Bob's video on the video slot";
    sim.run_until(SETTLE, what, |s| {
        s.client(viewer)
            .received_on("slot1")
            .filter(|r| r.stream == stream_id(bob, Some(0)))
            .count()
            >= 100
    })
    .unwrap();
    receive_on_slot(&mut sim, viewer, "slot0", 50);
    let video: Vec<&Received> = sim.client(viewer).received_on("slot1").collect();
    let first_of_bob = video
        .iter()
        .position(|r| r.stream == stream_id(bob, Some(0)))
        .unwrap();
    assert!(first_of_bob >= before, "Alice's packets came first");
    assert!(
        video[first_of_bob].keyframe,
        "Bob's picture starts on a keyframe"
    );
    assert!(
        video[first_of_bob..]
            .iter()
            .all(|r| r.stream == stream_id(bob, Some(0))),
        "once Bob, only Bob"
    );
    // One stream to the player: numbers, picture IDs and time run on across the change.
    super::assert_continuous(&video);
    let (last_alice, first_bob) = (video[first_of_bob - 1], video[first_of_bob]);
    let ts_step = first_bob.timestamp.wrapping_sub(last_alice.timestamp);
    assert!(
        (1..90_000 * 5).contains(&ts_step),
        "the timestamp moves on, by {ts_step}"
    );
    let audio: Vec<&Received> = sim.client(viewer).received_on("slot0").collect();
    for pair in audio.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq.wrapping_add(1), "audio numbering");
    }
    assert!(
        audio
            .last()
            .is_some_and(|r| r.stream == stream_id(bob, None))
    );
    assert_eq!(
        (
            sim.client(viewer).received_ssrc("slot0"),
            sim.client(viewer).received_ssrc("slot1"),
        ),
        ssrcs,
        "the same SSRCs throughout"
    );
    assert_eq!(sim.client(viewer).received_on("slot2").count(), 0);
    assert!(
        errors(&sim, viewer).is_empty(),
        "{:?}",
        errors(&sim, viewer)
    );
}

#[test]
fn an_ice_restart_keeps_the_slots_and_a_reoffer_of_other_sections_is_refused() {
    let mut sim = Sim::with_defaults().unwrap();
    alice(&mut sim);
    let viewer = sim
        .join("room", "player", player(&AUDIO_AND_VIDEO))
        .unwrap();
    sim.connect_all().unwrap();
    receive_on_slot(&mut sim, viewer, "slot1", 50);
    let first_ufrag = ufrag(&sim.client(viewer).subscriber_remote_sdp().unwrap())
        .unwrap()
        .to_owned();

    // Another set of sections is another connection: refused, and this one goes on.
    let local = sim.client(viewer).subscriber_local_sdp().unwrap();
    let other = local.replacen("a=mid:1", "a=mid:other", 1);
    assert_ne!(other, local);
    offer(&mut sim, viewer, other);
    sim.run_for(Duration::from_millis(10));
    let refused = errors(&sim, viewer);
    assert!(
        refused
            .iter()
            .any(|(code, m)| *code == ErrorCode::SdpRejected && m.contains("keep the sections")),
        "{refused:?}"
    );
    receive_on_slot(&mut sim, viewer, "slot1", 50);

    // A restart: fresh credentials both ways, the same slots and numbering.
    let now = sim.now();
    let restart = sim
        .client_mut(viewer)
        .reoffer_subscriber(now, true)
        .unwrap();
    sim.signal(viewer, restart);
    sim.run_until(SETTLE, "the restart answered", |s| {
        s.client(viewer)
            .subscriber_remote_sdp()
            .is_some_and(|sdp| ufrag(&sdp) != Some(first_ufrag.as_str()))
    })
    .unwrap();
    let before = sim.client(viewer).received_on("slot1").count();
    // Long past the old ICE session's consent: media flows over the new one.
    sim.run_for(Duration::from_secs(45));
    let video: Vec<&Received> = sim.client(viewer).received_on("slot1").collect();
    assert!(
        video.len() > before + 1000,
        "{} then {}",
        before,
        video.len()
    );
    super::assert_continuous(&video);
    assert_eq!(errors(&sim, viewer).len(), refused.len(), "no new error");
    assert!(sim.client(viewer).subscriber_connected());
}

#[test]
fn a_sending_section_is_refused_and_a_player_may_offer_again() {
    let mut sim = Sim::with_defaults().unwrap();
    let alice = sim
        .join("room", "alice", publishing(Some(None), None))
        .unwrap();
    let viewer = sim
        .join(
            "room",
            "player",
            player(&[(TrackKind::Audio, Direction::SendRecv)]),
        )
        .unwrap();
    sim.run_for(Duration::from_millis(10));
    let refused = errors(&sim, viewer);
    assert!(
        refused
            .iter()
            .any(|(code, m)| *code == ErrorCode::SdpRejected && m.contains("only receives")),
        "{refused:?}"
    );
    // Refused before any connection was made: the receiving offer the player meant
    // (its own description, all `recvonly`) works.
    let local = sim.client(viewer).subscriber_local_sdp().unwrap();
    offer(&mut sim, viewer, local);
    sim.connect_all().unwrap();
    receive_on_slot(&mut sim, viewer, "slot0", 50);
    assert!(
        sim.client(viewer)
            .received_on("slot0")
            .all(|r| r.stream == stream_id(alice, None))
    );
}

/// `sdp` with its video section offering one codec the shard does not know.
fn unknown_video_codec(sdp: String) -> String {
    let mut out = String::new();
    let mut in_video = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
            if in_video {
                let fields: Vec<&str> = line.split(' ').take(3).collect();
                out.push_str(&format!("{} 96\r\n", fields.join(" ")));
                continue;
            }
        }
        let format_line = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .any(|p| line.starts_with(p));
        if in_video && format_line {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if in_video && line.starts_with("a=mid:") {
            out.push_str("a=rtpmap:96 FOO/90000\r\n");
        }
    }
    out
}

#[test]
fn a_first_offer_the_shard_cannot_answer_leaves_no_connection_and_a_good_one_works() {
    let mut sim = Sim::with_defaults().unwrap();
    let alice = alice(&mut sim);
    sim.connect_all().unwrap();
    let connections = sim.core().connections();
    let spec = ClientSpec {
        offer_edit: Some(unknown_video_codec),
        ..player(&AUDIO_AND_VIDEO)
    };
    let viewer = sim.join("room", "player", spec).unwrap();
    sim.run_for(Duration::from_millis(10));
    // Refused by `rtc` while answering, after the connection was made and the offer
    // applied: the path that must undo both.
    let refused = errors(&sim, viewer);
    assert!(
        refused
            .iter()
            .any(|(code, m)| *code == ErrorCode::SdpRejected && m.starts_with("answer:")),
        "{refused:?}"
    );
    assert_eq!(
        sim.core().connections(),
        connections,
        "the half-made connection is gone"
    );
    // The offer as the client made it works from a clean start.
    let local = sim.client(viewer).subscriber_local_sdp().unwrap();
    offer(&mut sim, viewer, local);
    sim.connect_all().unwrap();
    receive_on_slot(&mut sim, viewer, "slot1", 50);
    assert!(
        sim.client(viewer)
            .received_on("slot1")
            .all(|r| r.stream == stream_id(alice, Some(0)))
    );
}

#[test]
fn a_reoffer_that_changes_a_sections_direction_is_refused() {
    let mut sim = Sim::with_defaults().unwrap();
    alice(&mut sim);
    let viewer = sim.join("room", "player", player(&WITH_INACTIVE)).unwrap();
    sim.connect_all().unwrap();
    receive_on_slot(&mut sim, viewer, "slot1", 30);
    // The video section goes inactive in a new offer: refused, and it goes on.
    let local = sim.client(viewer).subscriber_local_sdp().unwrap();
    let mut section = 0;
    let turned: String = local
        .lines()
        .map(|line| {
            if line.starts_with("m=") {
                section += 1;
            }
            let line = if section == 2 && line == "a=recvonly" {
                "a=inactive"
            } else {
                line
            };
            format!("{line}\r\n")
        })
        .collect();
    assert_ne!(turned, local);
    offer(&mut sim, viewer, turned);
    sim.run_for(Duration::from_millis(10));
    assert!(
        errors(&sim, viewer)
            .iter()
            .any(|(code, m)| *code == ErrorCode::SdpRejected && m.contains("keep the sections")),
        "{:?}",
        errors(&sim, viewer)
    );
    receive_on_slot(&mut sim, viewer, "slot1", 30);
    // A restart of the offer with its inactive section keeps every slot.
    let now = sim.now();
    let restart = sim
        .client_mut(viewer)
        .reoffer_subscriber(now, true)
        .unwrap();
    sim.signal(viewer, restart);
    sim.run_for(Duration::from_secs(2));
    receive_on_slot(&mut sim, viewer, "slot1", 30);
    assert_eq!(sim.client(viewer).received_on("slot2").count(), 0);
}
