//! The Recording controller: a Recording resource becomes a recording record in the live
//! state, which the control loop (`tutti_control::recordings`) runs on the shard holding
//! the room; what the shards report comes back as the status, with Events when it starts,
//! moves to another shard, stops or fails.
//!
//! Deletion goes through a finalizer: the record goes first, so the loop stops the
//! recorder. Files stay on the shards' recordings volume.

use crate::controller::{Context, Error, MANAGER};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizing, finalizer};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tutti_crds::{RecordedFileStatus, Recording, RecordingPhase, RecordingSpec, RecordingStatus};
use tutti_store::{LiveView, LiveWriter, RecordingRecord, RecordingStateRecord};

/// The finalizer that makes deletion stop the recorder first.
pub const FINALIZER: &str = "tutti.dev/recording";
/// How often a recording's status is refreshed while it runs (durations and sizes grow).
const REFRESH: Duration = Duration::from_secs(5);
/// Files listed in a status at most.
const MAX_LISTED_FILES: usize = 100;

/// The owner string the records of a Recording carry.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("Recording/{namespace}/{name}")
}

/// The record a Recording stands for: `stage_of` gives a Broadcast's stage room. `Err`
/// says why the Recording is invalid.
pub fn record(
    namespace: &str,
    name: &str,
    spec: &RecordingSpec,
    stage_of: impl Fn(&str) -> Option<String>,
) -> Result<RecordingRecord, String> {
    if !tutti_shard_api::protocol::valid_id(name) {
        return Err("a Recording's name must be 1-64 characters of a-z 0-9 . -".into());
    }
    let room = match (&spec.room_ref, &spec.broadcast_ref) {
        (Some(room), None) => room.name.clone(),
        (None, Some(broadcast)) => stage_of(&broadcast.name)
            .ok_or_else(|| format!("no Broadcast called {} is known", broadcast.name))?,
        _ => return Err("give exactly one of roomRef and broadcastRef".into()),
    };
    Ok(RecordingRecord {
        name: name.to_owned(),
        room,
        compose: spec.compose,
        stopped: spec.stopped,
        owner: Some(owner(namespace, name)),
    })
}

/// The status a Recording shows: from what the loop saw (`state`), or why it is invalid.
pub fn recording_status(
    record: Result<&RecordingRecord, &str>,
    state: Option<&RecordingStateRecord>,
    generation: Option<i64>,
) -> RecordingStatus {
    let record = match record {
        Ok(record) => record,
        Err(problem) => {
            return RecordingStatus {
                phase: RecordingPhase::Failed,
                message: Some(problem.to_owned()),
                observed_generation: generation,
                ..RecordingStatus::default()
            };
        }
    };
    let segments = state.map(|s| s.segments.as_slice()).unwrap_or_default();
    let last = segments.last().map(|s| &s.status);
    let phase = match last.map(|s| s.phase.as_str()) {
        Some("Stopping") => RecordingPhase::Stopping,
        Some("Composing") => RecordingPhase::Composing,
        Some("Uploading") => RecordingPhase::Uploading,
        Some("Stopped") => RecordingPhase::Stopped,
        // A shard that went away cannot say it stopped.
        Some(_) if record.stopped && state.is_some_and(|s| s.shard.is_none()) => {
            RecordingPhase::Stopped
        }
        Some(_) => RecordingPhase::Recording,
        None if record.stopped => RecordingPhase::Stopped,
        None => RecordingPhase::Pending,
    };
    let files = segments
        .iter()
        .flat_map(|segment| {
            segment.status.files.iter().map(|file| RecordedFileStatus {
                path: format!("{}/{}", segment.status.path, file.file),
                participant: file.name.clone(),
                kind: file.kind.clone(),
                codec: file.codec.clone(),
                duration_ms: file.duration_ms,
                bytes: file.bytes,
            })
        })
        .take(MAX_LISTED_FILES)
        .collect();
    RecordingStatus {
        phase,
        shard: state.and_then(|s| s.shard.clone()),
        room: Some(record.room.clone()),
        segments: segments.len() as u32,
        duration_ms: last.map_or(0, |s| s.duration_ms),
        bytes: segments.iter().map(|s| s.status.bytes).sum(),
        files,
        composed: last.and_then(|s| s.composed.as_ref().map(|file| format!("{}/{file}", s.path))),
        stored: segments
            .iter()
            .filter_map(|s| s.status.stored.as_ref().map(|s| s.location.clone()))
            .collect(),
        message: state
            .and_then(|s| s.problem.clone())
            .or_else(|| last.and_then(|s| s.compose_error.clone()))
            .or_else(|| last.and_then(|s| s.stored.as_ref().and_then(|s| s.error.clone()))),
        conditions: Vec::new(),
        observed_generation: generation,
    }
}

/// The Event a status change deserves, if any.
pub fn event_for(previous: &RecordingStatus, next: &RecordingStatus) -> Option<Event> {
    let event = |type_, reason: &str, note: String| Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Record".into(),
        secondary: None,
    };
    let shard = next.shard.as_deref().unwrap_or("-");
    match (previous.phase, next.phase) {
        (from, RecordingPhase::Recording) if from != RecordingPhase::Recording => Some(event(
            EventType::Normal,
            "Started",
            format!(
                "recording room {} on shard {shard}",
                next.room.as_deref().unwrap_or("-")
            ),
        )),
        (RecordingPhase::Recording, RecordingPhase::Recording)
            if next.segments > previous.segments =>
        {
            Some(event(
                EventType::Warning,
                "Moved",
                format!(
                    "the room moved: recording continues on shard {shard} (segment {})",
                    next.segments
                ),
            ))
        }
        (from, RecordingPhase::Stopped) if from != RecordingPhase::Stopped => Some(event(
            EventType::Normal,
            "Stopped",
            format!(
                "{} ms, {} bytes in {} files",
                next.duration_ms,
                next.bytes,
                next.files.len()
            ),
        )),
        (from, RecordingPhase::Failed) if from != RecordingPhase::Failed => Some(event(
            EventType::Warning,
            "Failed",
            next.message.clone().unwrap_or_default(),
        )),
        _ => None,
    }
}

/// Reconciles one Recording.
pub async fn reconcile_recording<S>(
    recording: Arc<Recording>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let namespace = recording.namespace().ok_or(Error::Unnamed)?;
    let name = recording.meta().name.clone().ok_or(Error::Unnamed)?;
    let api: Api<Recording> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, recording, |event| async {
        match event {
            Finalizing::Apply(r) => apply(&r, &namespace, &name, &api, &ctx).await,
            Finalizing::Cleanup(_) => cleanup(&namespace, &name, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled("recording", if result.is_ok() { "ok" } else { "error" });
    result
}

async fn apply<S>(
    recording: &Recording,
    namespace: &str,
    name: &str,
    api: &Api<Recording>,
    ctx: &Context<S>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let store = ctx.placer.store();
    let wanted = record(namespace, name, &recording.spec, |broadcast| {
        store.broadcast(broadcast).map(|b| b.stage)
    });
    let wanted = match wanted {
        Ok(record) => match store.recording(name) {
            Some(existing) if existing.owner != record.owner => Err(format!(
                "a recording called {name} exists; rename the Recording"
            )),
            Some(existing) if existing == record => Ok(record),
            _ => {
                store.put_recording(record.clone()).await.map_err(retry)?;
                Ok(record)
            }
        },
        Err(problem) => Err(problem),
    };
    let state = store.recording_state(name);
    let status = recording_status(
        wanted.as_ref().map_err(String::as_str),
        state.as_ref(),
        recording.meta().generation,
    );
    let previous = recording.status.clone().unwrap_or_default();
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "tutti.dev/v1alpha1",
            "kind": "Recording",
            "status": status,
        })),
    )
    .await?;
    if let Some(event) = event_for(&previous, &status) {
        let reference: ObjectReference = recording.object_ref(&());
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%err, reason = %event.reason, "event not recorded");
        }
    }
    Ok(match status.phase {
        RecordingPhase::Failed | RecordingPhase::Stopped => Action::await_change(),
        _ => Action::requeue(REFRESH),
    })
}

async fn cleanup<S>(namespace: &str, name: &str, ctx: &Context<S>) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let store = ctx.placer.store();
    let owner = owner(namespace, name);
    if store
        .recording(name)
        .is_some_and(|r| r.owner.as_deref() == Some(owner.as_str()))
    {
        store.delete_recording(name).await.map_err(retry)?;
    }
    Ok(Action::await_change())
}

fn retry(err: tutti_store::StoreError) -> Error {
    Error::Retry {
        category: "store",
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_crds::LocalObjectRef;
    use tutti_shard_api::recording::{RecordedFile, RecordingStatus as ShardStatus};
    use tutti_store::RecordingSegment;

    fn spec(room: Option<&str>, broadcast: Option<&str>) -> RecordingSpec {
        RecordingSpec {
            room_ref: room.map(|name| LocalObjectRef { name: name.into() }),
            broadcast_ref: broadcast.map(|name| LocalObjectRef { name: name.into() }),
            compose: true,
            stopped: false,
        }
    }

    fn segment(shard: &str, phase: &str, bytes: u64) -> RecordingSegment {
        RecordingSegment {
            shard: shard.into(),
            status: ShardStatus {
                room: "lesson".into(),
                phase: phase.into(),
                path: format!("lesson/{shard}"),
                started_at_ms: 1,
                ended_at_ms: None,
                takes: 1,
                duration_ms: 9_000,
                bytes,
                files: vec![RecordedFile {
                    file: "00-a-t.ogg".into(),
                    name: "Teacher".into(),
                    kind: "audio".into(),
                    codec: "audio/opus".into(),
                    duration_ms: 9_000,
                    bytes,
                    complete: false,
                }],
                composed: None,
                compose_error: None,
                problem: None,
                stored: None,
            },
        }
    }

    #[test]
    fn a_recording_names_a_room_or_a_broadcast_stage() {
        let stages = |b: &str| (b == "concert").then(|| "concert-stage".to_owned());
        let of_room = record("music", "lesson-rec", &spec(Some("lesson"), None), stages).unwrap();
        assert_eq!(of_room.room, "lesson");
        assert!(of_room.compose && !of_room.stopped);
        assert_eq!(of_room.owner.as_deref(), Some("Recording/music/lesson-rec"));
        let of_stage = record("music", "gala", &spec(None, Some("concert")), stages).unwrap();
        assert_eq!(of_stage.room, "concert-stage");
        assert!(record("music", "x", &spec(None, Some("nowhere")), stages).is_err());
        assert!(record("music", "x", &spec(Some("a"), Some("concert")), stages).is_err());
        assert!(record("music", "x", &spec(None, None), stages).is_err());
    }

    #[test]
    fn the_status_follows_the_shards_and_events_mark_its_turns() {
        let rec = record("music", "r", &spec(Some("lesson"), None), |_| None).unwrap();
        let pending = recording_status(Ok(&rec), None, Some(1));
        assert_eq!(pending.phase, RecordingPhase::Pending);
        let mut state = RecordingStateRecord {
            name: "r".into(),
            shard: Some("s1".into()),
            segments: vec![segment("s1", "Recording", 1_000)],
            problem: None,
        };
        let running = recording_status(Ok(&rec), Some(&state), Some(1));
        assert_eq!(running.phase, RecordingPhase::Recording);
        assert_eq!(running.shard.as_deref(), Some("s1"));
        assert_eq!(running.files[0].path, "lesson/s1/00-a-t.ogg");
        assert_eq!(event_for(&pending, &running).unwrap().reason, "Started");
        // The room moved: a second segment, the bytes of both.
        state.shard = Some("s2".into());
        state.segments.push(segment("s2", "Recording", 500));
        let moved = recording_status(Ok(&rec), Some(&state), Some(1));
        assert_eq!(
            (moved.segments, moved.bytes, moved.files.len()),
            (2, 1_500, 2)
        );
        assert_eq!(event_for(&running, &moved).unwrap().reason, "Moved");
        assert!(event_for(&moved, &moved).is_none());
        // Stopped on its shard.
        state.shard = None;
        state.segments[1] = segment("s2", "Stopped", 600);
        let stopped = recording_status(Ok(&rec), Some(&state), Some(2));
        assert_eq!(stopped.phase, RecordingPhase::Stopped);
        assert_eq!(event_for(&moved, &stopped).unwrap().reason, "Stopped");
        // Invalid: Failed with why.
        let failed = recording_status(Err("give exactly one"), None, Some(3));
        assert_eq!(failed.phase, RecordingPhase::Failed);
        assert_eq!(event_for(&pending, &failed).unwrap().reason, "Failed");
    }
}
