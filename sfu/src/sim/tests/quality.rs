//! The room is told, in one word per participant, how each connection is doing: a viewer
//! whose downlink holds its video back, a publisher whose uplink loses what it sends.

use super::*;
use crate::sim::net::Loss;
use std::collections::BTreeMap;

/// What `viewer` was last told of each participant's connection.
fn told(sim: &Sim, viewer: usize) -> BTreeMap<String, Reception> {
    sim.client(viewer)
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            ServerMessage::ConnectionQuality { qualities } => Some(
                qualities
                    .iter()
                    .map(|q| (q.participant.clone(), q.quality))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn word(sim: &Sim, viewer: usize, who: &str) -> Option<Reception> {
    told(sim, viewer).get(who).copied()
}

#[test]
fn the_room_is_told_who_receives_poorly_and_who_sends_poorly() {
    let mut sim = Sim::with_defaults().unwrap();
    let simulcast = VideoSpec {
        bitrate: 600_000,
        ..VideoSpec::simulcast()
    };
    let (alice, bob, carol) = alice_bob_and_carol(&mut sim, Some(None), simulcast);
    receive(&mut sim, bob, "alice", TrackKind::Video, 30);
    receive(&mut sim, carol, "alice", TrackKind::Video, 30);
    sim.run_until(SETTLE, "everyone good", |s| {
        let words = told(s, carol);
        words.len() == 3 && words.values().all(|w| *w == Reception::Good)
    })
    .unwrap();
    let messages = |sim: &Sim| {
        sim.client(carol)
            .events
            .iter()
            .filter(|e| matches!(e, ServerMessage::ConnectionQuality { .. }))
            .count()
    };
    // Told only when a word changes: nothing new while nothing changes.
    let before = messages(&sim);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(messages(&sim), before, "no news, no message");

    // Bob's downlink narrows: his video is held back, and everyone is told.
    limit_downlink(&mut sim, bob, Some(300_000));
    let took = sim
        .run_until(Duration::from_secs(10), "Bob's connection not good", |s| {
            word(s, carol, "bob").is_some_and(|w| w != Reception::Good)
        })
        .unwrap();
    assert_eq!(word(&sim, alice, "bob"), word(&sim, carol, "bob"));
    let counted = sim.metrics().participants_fair.get() + sim.metrics().participants_poor.get();
    assert_eq!(counted, 1, "Bob counted in the metrics");
    assert_eq!(word(&sim, carol, "carol"), Some(Reception::Good));
    assert_eq!(word(&sim, carol, "alice"), Some(Reception::Good));

    // Alice's uplink loses one packet in eight, beyond repair: her connection is poor.
    sim.net.set_link(
        client_addr(alice).ip(),
        SHARD.ip(),
        crate::sim::net::LinkParams {
            loss: Loss::RtpSeqMultipleOf(8),
            ..crate::sim::net::LinkParams::default()
        },
    );
    let poor = sim
        .run_until(Duration::from_secs(10), "Alice's connection poor", |s| {
            word(s, carol, "alice") == Some(Reception::Poor)
        })
        .unwrap();
    println!(
        "connection quality: Bob's held-back downlink shown {took:?} after it narrowed, Alice's lossy uplink {poor:?} after it began"
    );
    assert_eq!(word(&sim, carol, "carol"), Some(Reception::Good));

    // Carol comes back on a new session at once (a rejoin): the words did not change, and
    // she is told them all the same.
    sim.leave(carol);
    let again = sim.join("room", "carol", viewer()).unwrap();
    sim.run_until(Duration::from_secs(5), "the rejoined Carol told", |s| {
        told(s, again).len() == 3
    })
    .unwrap();
}
