//! Property-based tests of the shard protocol's decoders and the nickname rules:
//! anything decodes to a message or an error, never a panic; what decodes is within the
//! protocol's bounds. `PROPTEST_CASES=100000` runs them longer.

use proptest::prelude::*;
use tutti_shard_api::nickname::{MAX_NAME_CHARS, nickname_key, valid_nickname};
use tutti_shard_api::protocol::{ClientMessage, decode_client, decode_server};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

/// JSON objects shaped like protocol messages, with arbitrary field values.
fn frame() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("join"),
        Just("offer"),
        Just("answer"),
        Just("candidate"),
        Just("chat"),
        Just("mute"),
        Just("screen_share"),
        Just("set_quality"),
        Just("leave"),
        Just("ping"),
        Just("restart_ice"),
        Just("teleport"),
    ];
    let value = prop_oneof![
        any::<String>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    let fields = proptest::collection::btree_map(
        prop_oneof![
            Just("room"),
            Just("participant"),
            Just("name"),
            Just("sdp"),
            Just("pc"),
            Just("candidate"),
            Just("text"),
            Just("to"),
            Just("track"),
            Just("active"),
            Just("quality"),
            Just("muted"),
            Just("v")
        ]
        .prop_map(str::to_owned),
        value,
        0..8,
    );
    prop_oneof![
        any::<String>(),
        (kind, fields).prop_map(|(kind, fields)| {
            let mut object = serde_json::Map::from_iter(fields);
            object.insert("type".into(), kind.into());
            object.entry("v").or_insert(1.into());
            serde_json::Value::Object(object).to_string()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frames_decode_or_are_refused(text in frame()) {
        if let Ok(message) = decode_client(&text)
            && let ClientMessage::Join { name: Some(name), .. } = &message
        {
            prop_assert!(valid_nickname(name));
        }
        let _ = decode_server(&text);
    }

    #[test]
    fn nicknames_are_bounded_and_keys_stable(name in any::<String>()) {
        if valid_nickname(&name) {
            prop_assert!(name.chars().count() <= MAX_NAME_CHARS);
            prop_assert!(!name.chars().any(char::is_control));
        }
        // A name always clashes with itself and with its case and space variants.
        let key = nickname_key(&name);
        prop_assert!(key.clashes(&nickname_key(&name)));
        let padded = format!("  {}  ", name);
        prop_assert!(key.clashes(&nickname_key(&padded)));
    }
}
