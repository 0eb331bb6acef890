//! What the schema cannot check about a Room, checked before anything acts on it.

use std::collections::BTreeMap;
use tutti_crds::duration::parse_duration;
use tutti_crds::{RoomSpec, SecretKeyRef};
use tutti_store::{AudioProfile, AudioSettings, PlacementPolicy, RoomRecord};

/// Longest room name: rooms are joined by name, and shards key pipelines by it.
pub const MAX_ROOM_NAME: usize = 64;
/// Longest empty timeout.
pub const MAX_EMPTY_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A Room that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRoom {
    /// The record gateways admit by (no password hash yet).
    pub record: RoomRecord,
    /// Place only on shards with these labels.
    pub selector: BTreeMap<String, String>,
    /// Where its password is.
    pub password: Option<SecretKeyRef>,
}

/// The owner string a Room's pipeline and record carry.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("Room/{namespace}/{name}")
}

fn valid_label_part(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253
                && prefix.split('.').all(|p| valid_label_part(p, 63))
                && valid_label_part(name, 63)
        }
        None => valid_label_part(key, 63),
    }
}

/// Checks a Room; every problem is listed, so one edit can fix them all.
pub fn validate_room(
    namespace: &str,
    name: &str,
    spec: &RoomSpec,
) -> Result<ValidRoom, Vec<String>> {
    let mut problems = Vec::new();
    if name.len() > MAX_ROOM_NAME {
        problems.push(format!(
            "metadata.name is {} characters; rooms are joined by name, at most {MAX_ROOM_NAME}",
            name.len()
        ));
    }
    if !(2..=10_000).contains(&spec.max_participants) {
        problems.push("spec.maxParticipants must be 2..=10000".into());
    }
    let empty_timeout = parse_duration(&spec.empty_timeout);
    match empty_timeout {
        None => problems.push(format!(
            "spec.emptyTimeout {:?} is not a duration like 30s, 5m or 1h",
            spec.empty_timeout
        )),
        Some(d) if d.as_secs() > MAX_EMPTY_TIMEOUT_SECS => {
            problems.push("spec.emptyTimeout is at most 168h".into());
        }
        Some(_) => {}
    }
    if let Some(kbps) = spec.media.max_video_bitrate_kbps
        && !(30..=50_000).contains(&kbps)
    {
        problems.push("spec.media.maxVideoBitrateKbps must be 30..=50000".into());
    }
    if !spec.media.audio && !spec.media.video {
        problems.push("spec.media allows neither audio nor video".into());
    }
    let audio_settings = spec
        .audio
        .as_ref()
        .map(|audio| AudioSettings {
            profile: match audio.profile {
                tutti_crds::room::AudioProfile::Speech => AudioProfile::Speech,
                tutti_crds::room::AudioProfile::Music => AudioProfile::Music,
            },
            bitrate: audio.bitrate,
            ptime: audio.ptime,
        })
        .unwrap_or_default();
    if let Err(problem) = audio_settings.validate() {
        problems.push(format!("spec.{problem}"));
    }
    for (key, value) in &spec.shard_selector {
        if !valid_label_key(key) || !(value.is_empty() || valid_label_part(value, 63)) {
            problems.push(format!(
                "spec.shardSelector {key}={value} is not a valid label"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ValidRoom {
        record: RoomRecord {
            name: name.to_owned(),
            max_participants: spec.max_participants,
            password_hash: None,
            empty_timeout_seconds: empty_timeout.map_or(300, |d| d.as_secs()),
            audio: spec.media.audio,
            video: spec.media.video,
            simulcast: spec.media.simulcast,
            svc: spec.media.svc,
            svc_codec: match spec.media.svc_codec {
                Some(tutti_crds::room::SvcCodec::Av1) => tutti_store::SvcCodec::Av1,
                Some(tutti_crds::room::SvcCodec::Vp9) | None => tutti_store::SvcCodec::Vp9,
            },
            max_video_bitrate_kbps: spec.media.max_video_bitrate_kbps,
            owner: Some(owner(namespace, name)),
            audience: false,
            audio_settings,
            placement: match spec.placement {
                None => PlacementPolicy::Auto,
                Some(tutti_crds::room::PlacementMode::Latency) => PlacementPolicy::Latency,
                Some(tutti_crds::room::PlacementMode::Packed) => PlacementPolicy::Packed,
            },
        },
        selector: spec.shard_selector.clone(),
        password: spec.password_secret_ref.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_crds::MediaSpec;

    fn spec() -> RoomSpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    #[test]
    fn a_default_room_is_valid_and_becomes_a_record() {
        let valid = validate_room("music", "violin-lesson", &spec()).unwrap();
        assert_eq!(valid.record.max_participants, 16);
        assert_eq!(valid.record.empty_timeout_seconds, 300);
        assert_eq!(
            valid.record.owner.as_deref(),
            Some("Room/music/violin-lesson")
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut bad = spec();
        bad.max_participants = 1;
        bad.empty_timeout = "2w".into();
        bad.media = MediaSpec {
            audio: false,
            video: false,
            max_video_bitrate_kbps: Some(5),
            simulcast: true,
            svc: false,
            svc_codec: None,
        };
        bad.shard_selector.insert("bad key!".into(), "x".into());
        let problems = validate_room("ns", &"r".repeat(65), &bad).unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:?}");
        let mut long = spec();
        long.empty_timeout = "200h".into();
        assert!(validate_room("ns", "r", &long).is_err());
    }

    #[test]
    fn label_syntax_follows_kubernetes() {
        assert!(valid_label_key("tutti.dev/tier"));
        assert!(valid_label_key("zone"));
        assert!(!valid_label_key("-zone"));
        assert!(!valid_label_key("a/b/c"));
        assert!(!valid_label_key(&"k".repeat(64)));
    }
}
