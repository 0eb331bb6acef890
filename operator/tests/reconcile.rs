//! The Room controller against kube's mock API service: every request it makes is checked
//! in order (method, path, body), as the controller-rs ApiServerVerifier does; shards are
//! small fake admin APIs, the live state the in-memory store.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tutti_control::placement::Strategy;
use tutti_control::placer::Placer;
use tutti_crds::Room;
use tutti_operator::backoff::Backoff;
use tutti_operator::controller::{Config, Context, Error, error_policy, reconcile_room};
use tutti_operator::metrics::Metrics;
use tutti_store::{LiveView, LiveWriter, MemoryStore, ShardRecord};

mod common;

use common::{ApiServer, condition, finish};

const TOKEN: &str = "admin-token-for-mock-tests-0123";

/// A shard admin API that records calls and answers like a shard (or fails on purpose).
#[derive(Clone, Default)]
struct FakeShard {
    calls: Arc<Mutex<Vec<String>>>,
    broken: bool,
}

impl FakeShard {
    async fn serve(self) -> String {
        let app = Router::new()
            .route(
                "/v1/pipelines/{name}",
                put(|State(shard): State<FakeShard>, Path(name): Path<String>, body: String| async move {
                    shard.calls.lock().unwrap().push(format!("PUT {name}"));
                    if shard.broken {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned());
                    }
                    let spec: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let info = json!({"name": name, "spec": spec, "participants": 0, "tracks": 0,
                        "forwardedStreams": 0, "ageSeconds": 0, "emptySeconds": 0,
                        "maxSubscriberLossPercent": 0.0});
                    (StatusCode::OK, info.to_string())
                })
                .delete(|State(shard): State<FakeShard>, Path(name): Path<String>| async move {
                    shard.calls.lock().unwrap().push(format!("DELETE {name}"));
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn shard_record(id: &str, admin_url: &str) -> ShardRecord {
    ShardRecord::new(id, admin_url, 100)
}

async fn live_state(shards: &[(&str, &str)]) -> MemoryStore {
    let store = MemoryStore::new();
    for (id, admin_url) in shards {
        store
            .heartbeat(shard_record(id, admin_url), Duration::from_secs(60))
            .await
            .expect("heartbeat");
    }
    store
}

fn context(store: MemoryStore) -> (Arc<Context<MemoryStore>>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let context = Context {
        client: client.clone(),
        placer: Placer::new(store, TOKEN.into(), Strategy::Packed),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "tutti-operator".into(),
                instance: Some("test".into()),
            },
        ),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        metrics: Arc::new(Metrics::new()),
        config: Config {
            public_url: Some("https://tutti.example".into()),
            ..Config::default()
        },
        unplaced: Default::default(),
    };
    (Arc::new(context), ApiServer(handle))
}

fn room(spec: Value, finalized: bool, deleting: bool, status: Option<Value>) -> Room {
    let mut metadata = json!({"name": "lesson", "namespace": "music", "uid": "uid-lesson",
        "generation": 1, "resourceVersion": "7"});
    if finalized {
        metadata["finalizers"] = json!(["tutti.dev/cleanup"]);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
    }
    let mut object = json!({"apiVersion": "tutti.dev/v1alpha1", "kind": "Room",
        "metadata": metadata, "spec": spec});
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).expect("a Room")
}

/// A Room as the API server returns it from a patch (the controller only checks it parses).
fn any_room() -> Value {
    serde_json::to_value(room(json!({}), true, false, None)).expect("JSON")
}

const ROOM: &str = "/apis/tutti.dev/v1alpha1/namespaces/music/rooms/lesson";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/music/events";

#[tokio::test]
async fn create_adds_the_finalizer_then_places_and_patches_status() {
    let shard = FakeShard::default();
    let url = shard.clone().serve().await;
    let store = live_state(&[("s1", &url)]).await;
    let (ctx, mut api) = context(store.clone());

    // First sight: only the finalizer is added.
    let fresh = room(json!({"maxParticipants": 2}), false, false, None);
    let reconcile = tokio::spawn(reconcile_room(Arc::new(fresh), ctx.clone()));
    let patch = api
        .answer(
            "PATCH",
            ROOM,
            serde_json::to_value(room(json!({"maxParticipants": 2}), true, false, None)).unwrap(),
        )
        .await;
    assert_eq!(patch[1]["op"], "add");
    assert_eq!(patch[1]["path"], "/metadata/finalizers");
    assert_eq!(patch[1]["value"], json!(["tutti.dev/cleanup"]));
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    assert!(
        shard.calls().is_empty(),
        "nothing is placed before the finalizer is on"
    );

    // With the finalizer: placed on the shard, status written by server-side apply.
    let finalized = room(json!({"maxParticipants": 2}), true, false, None);
    let reconcile = tokio::spawn(reconcile_room(Arc::new(finalized.clone()), ctx.clone()));
    let (body, respond) = api.expect("PATCH", &format!("{ROOM}/status")).await;
    assert_eq!(body["apiVersion"], "tutti.dev/v1alpha1");
    assert_eq!(body["kind"], "Room");
    let status = &body["status"];
    assert_eq!(status["phase"], "Placed");
    assert_eq!(status["shard"], "s1");
    assert_eq!(status["participants"], 0);
    assert_eq!(status["url"], "https://tutti.example/?room=lesson");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Placed")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    let mut placed = serde_json::to_value(&finalized).unwrap();
    placed["status"] = status.clone();
    respond.send_response(
        Response::builder()
            .body(Body::from(placed.to_string().into_bytes()))
            .unwrap(),
    );
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "Placed");
    assert_eq!(event["regarding"]["name"], "lesson");
    assert_eq!(
        finish(reconcile).await.unwrap(),
        Action::requeue(Duration::from_secs(30))
    );
    api.done().await;

    assert_eq!(shard.calls(), ["PUT lesson"]);
    assert_eq!(store.route("lesson").map(|r| r.shard), Some("s1".into()));
    let record = store.room("lesson").expect("room record");
    assert_eq!(record.max_participants, 2);
    assert_eq!(record.owner.as_deref(), Some("Room/music/lesson"));
}

#[tokio::test]
async fn delete_releases_the_pipeline_then_removes_the_finalizer() {
    let shard = FakeShard::default();
    let url = shard.clone().serve().await;
    let store = live_state(&[("s1", &url)]).await;
    let (ctx, mut api) = context(store.clone());
    // The room is placed first (status patch and Placed event answered).
    let placed = room(json!({}), true, false, None);
    let reconcile = tokio::spawn(reconcile_room(Arc::new(placed.clone()), ctx.clone()));
    api.answer(
        "PATCH",
        &format!("{ROOM}/status"),
        serde_json::to_value(&placed).unwrap(),
    )
    .await;
    api.echo("POST", EVENTS).await;
    finish(reconcile).await.unwrap();

    let deleting = room(json!({}), true, true, None);
    let reconcile = tokio::spawn(reconcile_room(Arc::new(deleting), ctx.clone()));
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "Released");
    let patch = api
        .answer(
            "PATCH",
            ROOM,
            serde_json::to_value(room(json!({}), false, true, None)).unwrap(),
        )
        .await;
    assert_eq!(
        patch[0],
        json!({"op": "test", "path": "/metadata/finalizers/0", "value": "tutti.dev/cleanup"})
    );
    assert_eq!(
        patch[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"})
    );
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    api.done().await;
    assert_eq!(shard.calls(), ["PUT lesson", "DELETE lesson"]);
    assert!(store.route("lesson").is_none());
    assert!(store.room("lesson").is_none());
}

#[tokio::test]
async fn an_invalid_room_is_degraded_with_one_warning_and_waits_for_a_change() {
    let shard = FakeShard::default();
    let url = shard.clone().serve().await;
    let (ctx, mut api) = context(live_state(&[("s1", &url)]).await);
    let invalid = json!({"emptyTimeout": "999h"});
    let reconcile = tokio::spawn(reconcile_room(
        Arc::new(room(invalid.clone(), true, false, None)),
        ctx.clone(),
    ));
    let body = api
        .answer("PATCH", &format!("{ROOM}/status"), any_room())
        .await;
    let status = &body["status"];
    assert_eq!(status["phase"], "Failed");
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("InvalidSpec"))
    );
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("168h")
    );
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("InvalidSpec"))
    );
    // No requeue: the Room waits for an edit instead of looping.
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());

    // Seen again unchanged (a resync): the status is reapplied, no new Warning, still waiting.
    let again = room(invalid, true, false, Some(status.clone()));
    let reconcile = tokio::spawn(reconcile_room(Arc::new(again), ctx.clone()));
    api.answer("PATCH", &format!("{ROOM}/status"), any_room())
        .await;
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    api.done().await;
    assert!(shard.calls().is_empty(), "an invalid room touches no shard");
}

#[tokio::test]
async fn a_failing_shard_admin_api_makes_the_backoff_grow_and_success_resets_it() {
    let broken = FakeShard {
        broken: true,
        ..FakeShard::default()
    };
    let url = broken.clone().serve().await;
    let store = live_state(&[("s1", &url)]).await;
    let (ctx, mut api) = context(store.clone());
    // Each attempt sees the status the previous one wrote, as the watch would deliver it.
    let mut subject = Arc::new(room(json!({}), true, false, None));
    let mut delays = Vec::new();
    for attempt in 0..4 {
        let reconcile = tokio::spawn(reconcile_room(subject.clone(), ctx.clone()));
        let body = api
            .answer("PATCH", &format!("{ROOM}/status"), any_room())
            .await;
        assert_eq!(
            condition(&body["status"], "Degraded")["reason"],
            "ShardUnreachable"
        );
        if attempt == 0 {
            // Only the first failure is announced; repeats would flood the Events.
            let event = api.echo("POST", EVENTS).await;
            assert_eq!(event["reason"], "ShardUnreachable");
        }
        let error = tokio::time::timeout(Duration::from_secs(5), reconcile)
            .await
            .expect("the reconcile finishes without further requests")
            .unwrap()
            .unwrap_err();
        assert_eq!(error.category(), "shard_api", "{error}");
        subject = Arc::new(room(json!({}), true, false, Some(body["status"].clone())));
        delays.push(error_policy(subject.clone(), &error, ctx.clone()));
    }
    let expected: Vec<Action> = [1, 2, 4, 8]
        .iter()
        .map(|s| Action::requeue(Duration::from_secs(*s)))
        .collect();
    assert_eq!(delays, expected);
    assert_eq!(broken.calls().len(), 4);

    // The shard recovers: success resets the backoff for this Room.
    let healthy = FakeShard::default();
    let healthy_url = healthy.clone().serve().await;
    store.remove_shard("s1").await.unwrap();
    store.delete_route("lesson").await.unwrap();
    store
        .heartbeat(shard_record("s2", &healthy_url), Duration::from_secs(60))
        .await
        .unwrap();
    let reconcile = tokio::spawn(reconcile_room(subject.clone(), ctx.clone()));
    api.answer("PATCH", &format!("{ROOM}/status"), any_room())
        .await;
    api.echo("POST", EVENTS).await;
    assert!(finish(reconcile).await.is_ok());
    assert_eq!(ctx.backoff.failures("uid-lesson"), 0);
    let error = Error::Retry {
        category: "shard_api",
        message: "again".into(),
    };
    assert_eq!(
        error_policy(subject, &error, ctx),
        Action::requeue(Duration::from_secs(1))
    );
}

fn broadcast(finalized: bool, deleting: bool) -> tutti_crds::Broadcast {
    let mut metadata = json!({"name": "concert", "namespace": "music", "uid": "uid-concert",
        "generation": 2, "resourceVersion": "9"});
    if finalized {
        metadata["finalizers"] = json!([tutti_operator::broadcasts::FINALIZER]);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
    }
    serde_json::from_value(
        json!({"apiVersion": "tutti.dev/v1alpha1", "kind": "Broadcast",
        "metadata": metadata, "spec": {"expectedAudience": 900, "maxViewersPerShard": 500}}),
    )
    .expect("a Broadcast")
}

const BROADCAST: &str = "/apis/tutti.dev/v1alpha1/namespaces/music/broadcasts/concert";

#[tokio::test]
async fn a_broadcast_becomes_records_its_cascade_becomes_its_status_and_deletion_forgets_it() {
    use tutti_operator::broadcasts::reconcile_broadcast;
    let store = live_state(&[]).await;
    let (ctx, mut api) = context(store.clone());

    let finalized = broadcast(true, false);
    let reconcile = tokio::spawn(reconcile_broadcast(
        Arc::new(finalized.clone()),
        ctx.clone(),
    ));
    let status = api
        .answer(
            "PATCH",
            &format!("{BROADCAST}/status"),
            serde_json::to_value(&finalized).unwrap(),
        )
        .await;
    assert_eq!(status["kind"], "Broadcast");
    assert_eq!(status["status"]["phase"], "Pending", "no cascade yet");
    assert_eq!(
        finish(reconcile).await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    let record = store.broadcast("concert").expect("broadcast record");
    assert_eq!(
        (record.stage.as_str(), record.expected_audience),
        ("concert", 900)
    );
    let stage = store.room("concert").expect("its own stage");
    assert!(stage.audience);
    assert_eq!(stage.owner.as_deref(), Some("Broadcast/music/concert"));

    // The cascade loop applied a tree: the next reconcile shows it.
    let edge = |shard: &str, parent: &str, viewers| tutti_store::CascadeEdge {
        shard: shard.into(),
        parent: parent.into(),
        viewers,
        draining: false,
    };
    store
        .put_cascade(tutti_store::CascadeRecord {
            broadcast: "concert".into(),
            stage: "concert".into(),
            origin: "o".into(),
            edges: vec![edge("a", "o", 480), edge("b", "o", 30), edge("c", "a", 0)],
        })
        .await
        .unwrap();
    let reconcile = tokio::spawn(reconcile_broadcast(
        Arc::new(finalized.clone()),
        ctx.clone(),
    ));
    let body = api
        .answer(
            "PATCH",
            &format!("{BROADCAST}/status"),
            serde_json::to_value(&finalized).unwrap(),
        )
        .await;
    let status = &body["status"];
    assert_eq!(status["phase"], "Placed");
    assert_eq!(status["origin"], "o");
    assert_eq!(status["edgeCount"], 3);
    assert_eq!(status["viewers"], 510);
    assert_eq!(status["cascadeDepth"], 2);
    assert_eq!(
        status["edges"][2],
        json!({"shard": "c", "viewers": 0, "parent": "a"})
    );
    assert_eq!(status["observedGeneration"], 2);
    finish(reconcile).await.unwrap();

    // Deletion: the records go (the cascade loop then releases the edges), then the
    // finalizer.
    let reconcile = tokio::spawn(reconcile_broadcast(
        Arc::new(broadcast(true, true)),
        ctx.clone(),
    ));
    let patch = api
        .answer(
            "PATCH",
            BROADCAST,
            serde_json::to_value(broadcast(false, true)).unwrap(),
        )
        .await;
    assert_eq!(
        patch[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"})
    );
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    api.done().await;
    assert!(store.broadcast("concert").is_none());
    assert!(store.room("concert").is_none());
}

fn recording(
    spec: Value,
    finalized: bool,
    deleting: bool,
    status: Option<Value>,
) -> tutti_crds::Recording {
    let mut metadata = json!({"name": "lesson-rec", "namespace": "music", "uid": "uid-rec",
        "generation": 1, "resourceVersion": "4"});
    if finalized {
        metadata["finalizers"] = json!([tutti_operator::recordings::FINALIZER]);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-12-04T10:00:00Z");
    }
    let mut object = json!({"apiVersion": "tutti.dev/v1alpha1", "kind": "Recording",
        "metadata": metadata, "spec": spec});
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).expect("a Recording")
}

const RECORDING: &str = "/apis/tutti.dev/v1alpha1/namespaces/music/recordings/lesson-rec";

#[tokio::test]
async fn a_recording_becomes_a_record_the_loop_state_its_status_with_events_and_deletion_stops_it()
{
    use tutti_operator::recordings::reconcile_recording;
    let store = live_state(&[]).await;
    let (ctx, mut api) = context(store.clone());
    let spec = json!({"roomRef": {"name": "violin-lesson"}, "compose": true});

    // Created: the record appears, the status is Pending.
    let finalized = recording(spec.clone(), true, false, None);
    let reconcile = tokio::spawn(reconcile_recording(
        Arc::new(finalized.clone()),
        ctx.clone(),
    ));
    let body = api
        .answer(
            "PATCH",
            &format!("{RECORDING}/status"),
            serde_json::to_value(&finalized).unwrap(),
        )
        .await;
    assert_eq!(body["status"]["phase"], "Pending");
    assert_eq!(body["status"]["room"], "violin-lesson");
    assert_eq!(
        finish(reconcile).await.unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    let record = store.recording("lesson-rec").expect("the record");
    assert_eq!(record.room, "violin-lesson");
    assert!(record.compose && !record.stopped);
    assert_eq!(record.owner.as_deref(), Some("Recording/music/lesson-rec"));

    // The loop ran it on s1: Recording, with a Started event.
    let status = tutti_shard_api::recording::RecordingStatus {
        room: "violin-lesson".into(),
        phase: "Recording".into(),
        path: "violin-lesson/20261204T100000Z".into(),
        started_at_ms: 1,
        ended_at_ms: None,
        takes: 1,
        duration_ms: 12_000,
        bytes: 4_096,
        files: Vec::new(),
        composed: None,
        compose_error: None,
        problem: None,
        stored: None,
    };
    store
        .put_recording_state(tutti_store::RecordingStateRecord {
            name: "lesson-rec".into(),
            shard: Some("s1".into()),
            segments: vec![tutti_store::RecordingSegment {
                shard: "s1".into(),
                status,
            }],
            problem: None,
        })
        .await
        .unwrap();
    let pending = recording(spec.clone(), true, false, Some(json!({"phase": "Pending"})));
    let reconcile = tokio::spawn(reconcile_recording(Arc::new(pending.clone()), ctx.clone()));
    let body = api
        .answer(
            "PATCH",
            &format!("{RECORDING}/status"),
            serde_json::to_value(&pending).unwrap(),
        )
        .await;
    assert_eq!(body["status"]["phase"], "Recording");
    assert_eq!(body["status"]["shard"], "s1");
    assert_eq!(body["status"]["durationMs"], 12_000);
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "Started");
    assert_eq!(event["type"], "Normal");
    finish(reconcile).await.unwrap();

    // Two Recordings may not share a name: a record owned by another is not taken over.
    store
        .put_recording(tutti_store::RecordingRecord {
            owner: Some("gateway".into()),
            ..record.clone()
        })
        .await
        .unwrap();
    let reconcile = tokio::spawn(reconcile_recording(Arc::new(pending.clone()), ctx.clone()));
    let body = api
        .answer(
            "PATCH",
            &format!("{RECORDING}/status"),
            serde_json::to_value(&pending).unwrap(),
        )
        .await;
    assert_eq!(body["status"]["phase"], "Failed");
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "Failed");
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    assert_eq!(
        store.recording("lesson-rec").unwrap().owner.as_deref(),
        Some("gateway")
    );
    store.put_recording(record).await.unwrap();

    // Deleted: the record goes (the loop stops the recorder), then the finalizer.
    let reconcile = tokio::spawn(reconcile_recording(
        Arc::new(recording(spec.clone(), true, true, None)),
        ctx.clone(),
    ));
    let patch = api
        .answer(
            "PATCH",
            RECORDING,
            serde_json::to_value(recording(spec, false, true, None)).unwrap(),
        )
        .await;
    assert_eq!(
        patch[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"})
    );
    assert_eq!(finish(reconcile).await.unwrap(), Action::await_change());
    api.done().await;
    assert!(store.recording("lesson-rec").is_none());
}
