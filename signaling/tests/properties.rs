//! Property-based tests of what the gateway parses from outside: client frames and the
//! rooms file. `PROPTEST_CASES=100000` runs them longer.

use proptest::prelude::*;
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_signaling::protocol::{Inbound, decode_client};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

fn join_frame() -> impl Strategy<Value = String> {
    (
        ".{0,80}",
        proptest::option::of(".{0,80}"),
        proptest::option::of(proptest::collection::btree_map(
            "[a-zA-Z0-9\\-]{0,70}",
            -10.0f64..20000.0,
            0..20,
        )),
    )
        .prop_map(|(room, name, rtt)| {
            let mut join = serde_json::json!({"v": 1, "type": "join", "room": room});
            if let Some(name) = name {
                join["name"] = name.into();
            }
            if let Some(rtt) = rtt {
                join["rtt"] = serde_json::to_value(rtt).unwrap_or_default();
            }
            join.to_string()
        })
}

/// Rooms-file-like TOML: known keys with random values, in random tables.
fn rooms_file() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("maxParticipants"),
        Just("password"),
        Just("audio"),
        Just("audioBitrate"),
        Just("audioPtime"),
        Just("placement"),
        Just("emptyTimeoutSeconds"),
        Just("presenters"),
        Just("expectedAudience"),
        Just("nonsense"),
    ];
    let value = prop_oneof![
        "[a-z\\-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
    ];
    let table = prop_oneof![
        Just("[[rooms]]"),
        Just("[[broadcasts]]"),
        Just("[defaults]")
    ];
    proptest::collection::vec((table, proptest::collection::vec((key, value), 0..6)), 0..6)
        .prop_map(|tables| {
            tables
                .into_iter()
                .map(|(header, pairs)| {
                    let body: Vec<String> = pairs
                        .into_iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect();
                    format!("{header}\n{}\n", body.join("\n"))
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_frames_decode_or_are_refused(text in prop_oneof![any::<String>(), join_frame()]) {
        if let Ok(Inbound::Join(join)) = decode_client(&text) {
            let rtt = join.rtt_ms();
            prop_assert!(rtt.len() <= tutti_store::MAX_REPORTED_REGIONS);
            prop_assert!(rtt.values().all(|ms| *ms <= tutti_store::MAX_REPORTED_RTT_MS));
            prop_assert!(rtt.keys().all(|r| tutti_store::valid_region(r)));
        }
    }

    #[test]
    fn rooms_files_load_or_are_refused_with_a_reason(text in rooms_file()) {
        if let Ok(file) = toml::from_str::<RoomsFile>(&text) {
            match LocalRooms::from_file(file, false) {
                Ok(rooms) => {
                    for room in &rooms.rooms {
                        prop_assert!((2..=10_000).contains(&room.max_participants));
                    }
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
    }
}
