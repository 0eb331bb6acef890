//! The shard's admin API, as the operator (and local mode's placer) speaks it: what a
//! pipeline is asked to be, what the shard reports back, and why a request fails.
//! Reference: `docs/shard-admin-api.md`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Smallest and largest `maxParticipants` a pipeline accepts (the Room CRD's bounds).
pub const PARTICIPANT_BOUNDS: (u32, u32) = (2, 10_000);
/// Longest `emptyTimeoutSeconds` (one week).
pub const MAX_EMPTY_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Media policy of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaPolicy {
    /// Whether audio may be published.
    #[serde(default = "yes")]
    pub audio: bool,
    /// Whether video may be published.
    #[serde(default = "yes")]
    pub video: bool,
    /// Upper bound on each published video track, in kbit/s (sent to publishers in SDP).
    #[serde(default)]
    pub max_video_bitrate_kbps: Option<u32>,
    /// Whether publishers may send simulcast.
    #[serde(default = "yes")]
    pub simulcast: bool,
}

fn yes() -> bool {
    true
}

impl Default for MediaPolicy {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            max_video_bitrate_kbps: None,
            simulcast: true,
        }
    }
}

/// What the operator (or local mode) asks a shard to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    /// Most participants at once.
    #[serde(default = "default_max_participants")]
    pub max_participants: u32,
    /// How long the pipeline survives with nobody in it.
    #[serde(default = "default_empty_timeout")]
    pub empty_timeout_seconds: u64,
    /// Media policy.
    #[serde(default)]
    pub media: MediaPolicy,
    /// Who owns the pipeline (e.g. `Room/default/lesson-1`), so that orphans can be found.
    #[serde(default)]
    pub owner: Option<String>,
    /// An audience room (a broadcast): participants who do not publish are viewers, never
    /// announced to the others.
    #[serde(default)]
    pub audience: bool,
    /// Where this pipeline's media comes from when the shard is an edge of a broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelaySpec>,
    /// How the room's audio is encoded and played out (the profile and Opus tuning the
    /// shard writes into its SDP).
    #[serde(
        default,
        skip_serializing_if = "crate::audio::AudioSettings::is_speech_default"
    )]
    pub audio: crate::audio::AudioSettings,
}

/// An edge's upstream: the parent shard's pipeline it relays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelaySpec {
    /// The parent shard's signaling WebSocket URL.
    pub from: String,
    /// The pipeline on the parent to relay.
    pub room: String,
    /// Simulcast layers to relay (1: the top one; 3: low, medium and high, so that viewers
    /// can choose).
    #[serde(default = "one_layer")]
    pub layers: u8,
}

fn one_layer() -> u8 {
    1
}

fn default_max_participants() -> u32 {
    16
}

fn default_empty_timeout() -> u64 {
    300
}

impl Default for PipelineSpec {
    fn default() -> Self {
        Self {
            max_participants: default_max_participants(),
            empty_timeout_seconds: default_empty_timeout(),
            media: MediaPolicy::default(),
            owner: None,
            audience: false,
            relay: None,
            audio: Default::default(),
        }
    }
}

impl PipelineSpec {
    /// Checks the bounds of every field.
    pub fn validate(&self) -> Result<(), String> {
        let (min, max) = PARTICIPANT_BOUNDS;
        if !(min..=max).contains(&self.max_participants) {
            return Err(format!("maxParticipants must be between {min} and {max}"));
        }
        if self.empty_timeout_seconds > MAX_EMPTY_TIMEOUT_SECS {
            return Err(format!(
                "emptyTimeoutSeconds must be at most {MAX_EMPTY_TIMEOUT_SECS}"
            ));
        }
        self.audio.validate()?;
        if let Some(kbps) = self.media.max_video_bitrate_kbps
            && !(30..=50_000).contains(&kbps)
        {
            return Err("media.maxVideoBitrateKbps must be between 30 and 50000".into());
        }
        if let Some(owner) = &self.owner
            && (owner.len() > 256 || owner.chars().any(char::is_control))
        {
            return Err("owner must be at most 256 printable characters".into());
        }
        if let Some(relay) = &self.relay {
            let scheme_ok = relay.from.starts_with("ws://") || relay.from.starts_with("wss://");
            if !scheme_ok || relay.from.len() > 512 || relay.from.chars().any(char::is_control) {
                return Err("relay.from must be a ws:// or wss:// URL".into());
            }
            if !crate::protocol::valid_id(&relay.room) {
                return Err("relay.room must be a room name".into());
            }
            if !matches!(relay.layers, 1 | 3) {
                return Err("relay.layers must be 1 or 3".into());
            }
        }
        Ok(())
    }

    /// The empty timeout as a duration.
    pub fn empty_timeout(&self) -> Duration {
        Duration::from_secs(self.empty_timeout_seconds)
    }
}

/// One pipeline as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineInfo {
    /// The room name.
    pub name: String,
    /// Its spec.
    pub spec: PipelineSpec,
    /// Participants in it now.
    pub participants: u32,
    /// Published tracks.
    pub tracks: u32,
    /// Subscriber streams being forwarded.
    pub forwarded_streams: u32,
    /// Seconds since it was created.
    pub age_seconds: u64,
    /// Seconds it has been empty, when empty.
    pub empty_seconds: Option<u64>,
    /// The worst packet loss a subscriber's latest receiver report states, in percent.
    pub max_subscriber_loss_percent: f64,
}

/// A subscriber's reception in one word (see `GET /v1/pipelines/{room}/subscribers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reception {
    /// Nothing lost to speak of, a short round trip, everything it asked for.
    Good,
    /// Some loss, a long round trip, or video held below what it asked for.
    Fair,
    /// Heavy loss, a very long round trip, or video paused.
    Poor,
}

/// One subscriber of a pipeline, as its downlink looks from the shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberReception {
    /// The participant id.
    pub participant: String,
    /// Its display name.
    pub name: String,
    /// The word for its downlink.
    pub reception: Reception,
    /// The word for its connection as the room is shown it: the worse of its downlink and
    /// its uplink (the loss of what it publishes).
    pub quality: Reception,
    /// The worst loss its latest receiver reports state beyond what the publisher's uplink
    /// had already lost, percent: what its own downlink loses.
    pub loss_percent: f64,
    /// The worst loss of what it publishes over the last 2 s, percent; absent when it
    /// publishes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_loss_percent: Option<f64>,
    /// What its downlink may be sent, bit/s, once its congestion feedback has been read.
    pub downlink_bps: Option<u64>,
    /// The round trip of its downlink, ms, once measured.
    pub rtt_ms: Option<u32>,
    /// Whether its downlink has been congested (its layers are then chosen to fit).
    pub congested: bool,
    /// Video tracks held below the quality it asked for.
    pub held_back_tracks: u32,
    /// Video tracks paused because its downlink cannot carry them.
    pub paused_tracks: u32,
}

/// The shard's load, reported to the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardLoad {
    /// Pipelines hosted.
    pub pipelines: u32,
    /// Participants connected.
    pub participants: u32,
    /// Published tracks.
    pub tracks: u32,
    /// Subscriber streams being forwarded (the fan-out).
    pub forwarded_streams: u32,
    /// Media received, bit/s over the last second.
    pub ingress_bps: u64,
    /// Media sent, bit/s over the last second.
    pub egress_bps: u64,
    /// RTP packets forwarded per second over the last second.
    pub forwarded_packets_per_second: u64,
    /// CPU used by the shard process over the last second, in cores.
    pub cpu_cores: f64,
    /// Whether the shard is draining (accepting no new joins).
    pub draining: bool,
}

/// Why an admin request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The spec or name is invalid.
    #[error("invalid pipeline: {0}")]
    Invalid(String),
    /// No pipeline with that name.
    #[error("no pipeline named {0}")]
    NotFound(String),
    /// The shard holds as many pipelines as it may.
    #[error("the shard hosts its maximum of {0} pipelines")]
    AtCapacity(usize),
    /// The shard is draining.
    #[error("the shard is draining")]
    Draining,
    /// The media thread is gone.
    #[error("the shard is shutting down")]
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_and_bounds() {
        let spec: PipelineSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.max_participants, 16);
        assert!(spec.media.video && spec.media.audio);
        assert!(spec.validate().is_ok());
        for bad in [
            r#"{"maxParticipants":1}"#,
            r#"{"maxParticipants":10001}"#,
            r#"{"emptyTimeoutSeconds":99999999}"#,
            r#"{"media":{"maxVideoBitrateKbps":5}}"#,
        ] {
            let spec: PipelineSpec = serde_json::from_str(bad).unwrap();
            assert!(spec.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<PipelineSpec>(r#"{"maxParticipans":3}"#).is_err());
    }
}
