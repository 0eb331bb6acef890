//! Dynacast on the virtual clock: the publisher is told to encode only the simulcast
//! layers its subscribers receive, and a hidden tile receives nothing.

use super::*;
use crate::media::dynacast::PAUSE_AFTER;

/// The layers Alice was last told to encode, if she was told anything.
fn told_to_encode(sim: &Sim, alice: usize) -> Option<Vec<String>> {
    sim.client(alice).events.iter().rev().find_map(|e| match e {
        ServerMessage::PublishLayers { active, .. } => Some(active.clone()),
        _ => None,
    })
}

/// Packets of `track` that `viewer` received from `from` on.
fn received_since(sim: &Sim, viewer: usize, track: &str, from: usize) -> Vec<u32> {
    sim.client(viewer)
        .received_on(track)
        .skip(from)
        .map(|r| r.stream)
        .collect()
}

#[test]
fn the_publisher_encodes_only_the_layers_its_viewers_receive() {
    let mut sim = Sim::with_defaults().unwrap();
    let (alice, bob, carol) = alice_bob_and_carol(&mut sim, Some(None), VideoSpec::simulcast());
    let track = receive(&mut sim, bob, "alice", TrackKind::Video, 30);
    receive(&mut sim, carol, "alice", TrackKind::Video, 30);
    let layer = |l| stream_id(alice, Some(l));
    // Both want the best: the two lower layers are needed by nobody and are paused.
    sim.run_until(SETTLE, "the lower layers paused", |s| {
        told_to_encode(s, alice).as_deref() == Some(&["f".to_owned()][..])
    })
    .unwrap();

    // Both show Alice small: the low layer is resumed at once, and the top one, which
    // they do not need any more, paused after the wait.
    set_quality(&mut sim, bob, &track, Quality::Low);
    set_quality(&mut sim, carol, &track, Quality::Low);
    let paused_after = sim
        .run_until(SETTLE, "only the low layer encoded", |s| {
            told_to_encode(s, alice).as_deref() == Some(&["q".to_owned()][..])
        })
        .unwrap();
    assert!(
        paused_after >= PAUSE_AFTER,
        "paused after {paused_after:?}, before the wait"
    );
    let sent_before = sim.client(alice).packets_sent;
    let bob_before = sim.client(bob).received_on(&track).count();
    sim.run_for(Duration::from_secs(2));
    let sent = sim.client(alice).packets_sent - sent_before;
    let bob_got = received_since(&sim, bob, &track, bob_before);
    assert!(!bob_got.is_empty() && bob_got.iter().all(|s| *s == layer(0)));
    // What Alice sent in those 2 s is what Bob received of her video, plus her audio
    // (50 packets a second): the top layers cost her nothing any more.
    assert!(
        sent <= bob_got.len() as u64 + 110,
        "{sent} packets sent, {} of video received",
        bob_got.len()
    );

    // Carol enlarges the tile: the top layer is asked for at once and reaches her.
    set_quality(&mut sim, carol, &track, Quality::High);
    let resumed = sim
        .run_until(SETTLE, "the top layer resumed", |s| {
            told_to_encode(s, alice).as_deref() == Some(&["q".to_owned(), "f".to_owned()][..])
        })
        .unwrap();
    assert!(
        resumed < Duration::from_millis(500),
        "resumed after {resumed:?}"
    );
    let arrived = resumed
        + sim
            .run_until(SETTLE, "Carol on the top layer", |s| {
                last_stream(s, carol, &track) == Some(layer(2))
            })
            .unwrap();
    println!("dynacast: the top layer reached Carol {arrived:?} after she asked for it");
    assert!(arrived < Duration::from_secs(1), "{arrived:?}");

    // Bob hides the tile: he gets none of Alice's video at once, her sound still.
    let audio = receive(&mut sim, bob, "alice", TrackKind::Audio, 1);
    set_quality(&mut sim, bob, &track, Quality::Off);
    sim.run_for(Duration::from_millis(100));
    let (video_before, audio_before) = (
        sim.client(bob).received_on(&track).count(),
        sim.client(bob).received_on(&audio).count(),
    );
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.client(bob).received_on(&track).count(), video_before);
    assert!(sim.client(bob).received_on(&audio).count() >= audio_before + 90);
    // Nobody needs the low layer now: it is paused after the wait.
    sim.run_until(SETTLE, "only the top layer encoded", |s| {
        told_to_encode(s, alice).as_deref() == Some(&["f".to_owned()][..])
    })
    .unwrap();

    // Bob shows the tile again, small: the low layer is resumed and reaches him starting
    // on a keyframe, his numbering continuing where it stopped.
    set_quality(&mut sim, bob, &track, Quality::Low);
    sim.run_until(SETTLE, "Bob's video back", |s| {
        s.client(bob).received_on(&track).count() > video_before + 30
    })
    .unwrap();
    let packets: Vec<&Received> = sim.client(bob).received_on(&track).collect();
    let back = &packets[video_before..];
    assert!(back[0].keyframe, "video resumes on a keyframe");
    assert!(back.iter().all(|r| r.stream == layer(0)));
    assert_continuous(&packets[..video_before]);
    assert_continuous(back);
    // Across the pause: the next sequence number, and a picture ID ahead of the last one
    // (frames were skipped, as after a loss, which a decoder takes with a keyframe).
    let (last, first) = (packets[video_before - 1], back[0]);
    assert_eq!(first.seq, last.seq.wrapping_add(1));
    let ahead = first
        .picture_id
        .zip(last.picture_id)
        .map(|(b, a)| b.wrapping_sub(a) & 0x7fff);
    assert!(
        ahead.is_some_and(|step| (1..0x4000).contains(&step)),
        "picture ID step {ahead:?} across the pause"
    );
}

/// Chromium sends no full-resolution layer of a 640×480 camera: viewers who want the best
/// need the middle layer, which must keep flowing, and only the low one is paused.
#[test]
fn a_top_layer_the_publisher_never_sends_leaves_the_next_one_running() {
    let mut sim = Sim::with_defaults().unwrap();
    let (alice, bob, carol) = alice_bob_and_carol(&mut sim, Some(None), VideoSpec::simulcast());
    sim.client_mut(alice).pause_layer("f", true);
    let track = receive(&mut sim, bob, "alice", TrackKind::Video, 30);
    receive(&mut sim, carol, "alice", TrackKind::Video, 30);
    sim.run_until(SETTLE, "the low layer paused", |s| {
        told_to_encode(s, alice).is_some()
    })
    .unwrap();
    sim.run_for(Duration::from_secs(5));
    let told = told_to_encode(&sim, alice).unwrap_or_default();
    assert!(
        told.contains(&"h".to_owned()) && !told.contains(&"q".to_owned()),
        "{told:?}"
    );
    let before = sim.client(bob).received_on(&track).count();
    sim.run_for(Duration::from_secs(1));
    let got = received_since(&sim, bob, &track, before);
    assert!(
        got.len() >= 25 && got.iter().all(|s| *s == stream_id(alice, Some(1))),
        "{} packets, streams {:?}",
        got.len(),
        got.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

/// Alice publishes alone, so every layer is paused; Carol joins and wants the best, Bob
/// joins behind 300 kbit/s: the low layer he can take is resumed for him, and he gets
/// it, not nothing.
#[test]
fn a_narrow_viewer_gets_the_low_layer_resumed_for_him() {
    let mut sim = Sim::with_defaults().unwrap();
    let alice = sim
        .join(
            "room",
            "alice",
            publishing(
                Some(None),
                Some(VideoSpec {
                    bitrate: 600_000,
                    ..VideoSpec::simulcast()
                }),
            ),
        )
        .unwrap();
    sim.run_until(SETTLE * 2, "every layer paused", |s| {
        told_to_encode(s, alice).is_some_and(|a| a.is_empty())
    })
    .unwrap();
    let carol = sim.join("room", "carol", viewer()).unwrap();
    receive(&mut sim, carol, "alice", TrackKind::Video, 30);
    let bob = sim.join("room", "bob", viewer()).unwrap();
    limit_downlink(&mut sim, bob, Some(300_000));
    receive(&mut sim, bob, "alice", TrackKind::Audio, 30);
    let video = sim
        .client(carol)
        .announced_tracks()
        .into_iter()
        .find(|(_, t)| t.kind == TrackKind::Video)
        .map(|(_, t)| t.id)
        .unwrap_or_default();
    sim.run_until(Duration::from_secs(20), "Bob on the low layer", |s| {
        last_stream(s, bob, &video) == Some(stream_id(alice, Some(0)))
    })
    .unwrap();
    let before = sim.client(bob).received_on(&video).count();
    sim.run_for(Duration::from_secs(5));
    let got = received_since(&sim, bob, &video, before);
    // Resends of what the top layer lost before he moved may still trickle in.
    let low = got
        .iter()
        .filter(|s| **s == stream_id(alice, Some(0)))
        .count();
    assert!(
        got.len() > 100 && low * 10 >= got.len() * 9,
        "{} packets in 5 s: {:?}",
        got.len(),
        got.iter()
            .fold(std::collections::BTreeMap::new(), |mut m, s| {
                *m.entry(*s).or_insert(0) += 1;
                m
            })
    );
}
