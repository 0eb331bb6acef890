//! A recording outlives the shard that records it: the control loops run it on the shard
//! holding the room; when that shard dies and the room is placed on another, the
//! recording continues there as a new segment, the gap between the two in their times.
//! Real shards, the memory store, the loops local mode and the operator run.

use anyhow::{Result, ensure};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::loops::{self, LoopSettings, Quiet};
use tutti_store::{LiveView, LiveWriter, MemoryStore, RecordingRecord, RoomRecord};
use tutti_tests::eventually::eventually;
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(30);
const BEAT: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(1);

/// The files of the recording's last segment with at least `ms` of media each.
fn last_segment_has(store: &MemoryStore, shard: &str, files: usize, ms: u64) -> bool {
    store.recording_state("lesson-rec").is_some_and(|state| {
        state.shard.as_deref() == Some(shard)
            && state.segments.last().is_some_and(|s| {
                s.shard == shard
                    && s.status.files.len() == files
                    && s.status.files.iter().all(|f| f.duration_ms >= ms)
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_moves_with_its_room_when_its_shard_dies() -> Result<()> {
    init_logs();
    let base = std::env::temp_dir().join(format!("tutti-recording-moves-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let store = MemoryStore::new();
    let shards = [
        TestShard::start_recording(base.join("s1")).await?,
        TestShard::start_recording(base.join("s2")).await?,
    ];
    let beats: Vec<CancellationToken> = (0..2).map(|_| CancellationToken::new()).collect();
    for (i, shard) in shards.iter().enumerate() {
        shard.heartbeat_into(
            store.clone(),
            &format!("s{}", i + 1),
            BEAT,
            TTL,
            beats[i].clone(),
        );
    }
    let stop = CancellationToken::new();
    let settings = LoopSettings {
        admin_token: ADMIN_TOKEN.into(),
        strategy: Default::default(),
        gc_period: Duration::from_secs(30),
        gc_grace: Duration::from_secs(60),
        shard_poll: BEAT,
        compact_every: Duration::from_secs(3600),
        cascade: Default::default(),
    };
    let control = tokio::spawn(loops::run(
        store.clone(),
        settings,
        Arc::new(Quiet),
        stop.clone(),
    ));

    store.put_room(RoomRecord::with_defaults("lesson")).await?;
    eventually(WAIT, "the room placed", || async {
        Ok(store.route("lesson").is_some())
    })
    .await?;
    store
        .put_recording(RecordingRecord {
            name: "lesson-rec".into(),
            room: "lesson".into(),
            compose: false,
            stopped: false,
            owner: Some("test".into()),
        })
        .await?;
    let first = store.route("lesson").map(|r| r.shard).unwrap_or_default();
    let (first_index, second) = if first == "s1" { (0, "s2") } else { (1, "s1") };
    let cello = Participant::join(
        &shards[first_index].signal_url(),
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson", "cello"),
    )
    .await?;
    eventually(
        WAIT,
        "the first segment recording a second of both tracks",
        || async { Ok(last_segment_has(&store, &first, 2, 1_000)) },
    )
    .await?;

    // The room's shard dies (its record expires); the loops place the room on the other,
    // where the participant comes back, and the recording follows.
    let [a, b] = shards;
    let (dead, alive) = if first_index == 0 { (a, b) } else { (b, a) };
    beats[first_index].cancel();
    cello.kill().await;
    dead.shard.stop().await;
    eventually(WAIT, "the room placed on the other shard", || async {
        Ok(store.route("lesson").is_some_and(|r| r.shard == second))
    })
    .await?;
    let cello = Participant::join(
        &alive.signal_url(),
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson", "cello"),
    )
    .await?;
    eventually(WAIT, "a second segment on the other shard", || async {
        Ok(last_segment_has(&store, second, 2, 1_000))
    })
    .await?;
    let state = store.recording_state("lesson-rec").expect("state");
    ensure!(state.segments.len() == 2, "{state:?}");
    let (one, two) = (&state.segments[0].status, &state.segments[1].status);
    ensure!(state.segments[0].shard == first && state.segments[1].shard == second);
    ensure!(
        two.started_at_ms > one.started_at_ms,
        "the gap is in their times"
    );
    // The dead shard ended its files as it stopped: its manifest says so.
    let manifest = base.join(&first).join(&one.path).join("manifest.json");
    let text = std::fs::read_to_string(&manifest)?;
    let written: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(written["endedAtMs"].is_u64(), "{text}");
    ensure!(
        written["tracks"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["complete"] == true)),
        "{text}"
    );

    // Stopped: the loop stops it on the living shard and keeps what it reported.
    let mut record = store.recording("lesson-rec").expect("record");
    record.stopped = true;
    store.put_recording(record).await?;
    eventually(WAIT, "the recording stopped", || async {
        Ok(store.recording_state("lesson-rec").is_some_and(|s| {
            s.shard.is_none()
                && s.segments.last().is_some_and(|l| {
                    l.status.phase == "Stopped" && l.status.files.iter().all(|f| f.complete)
                })
        }))
    })
    .await?;
    cello.leave().await;
    stop.cancel();
    let _ = control.await;
    beats[1 - first_index].cancel();
    alive.shard.stop().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
