//! The live state in a real etcd: leases that make dead shards disappear, routes that move
//! only from the epoch a writer saw, copies kept current by watches, and an etcd restart
//! that stale copies ride out and recover from.

use anyhow::{Result, ensure};
use std::time::Duration;
use tutti_store::{
    EtcdConfig, EtcdStore, LiveView, LiveWriter, RecordingRecord, RecordingStateRecord, RoomRecord,
    ShardRecord, StoreError,
};
use tutti_tests::etcd::Etcd;
use tutti_tests::eventually::eventually;

const WAIT: Duration = Duration::from_secs(15);

async fn store(etcd: &Etcd) -> Result<EtcdStore> {
    let store = EtcdStore::connect(
        &EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?,
        WAIT,
    )
    .await?;
    ensure!(store.synced(), "first sync");
    Ok(store)
}

fn shard(id: &str, participants: u32) -> ShardRecord {
    let mut record = ShardRecord::new(id, &format!("http://{id}:7880"), 500);
    record.load.participants = participants;
    record
}

async fn until(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let check = &check;
    eventually(WAIT, what, || async move { Ok(check()) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_record_lives_while_its_heartbeat_does() -> Result<()> {
    let etcd = Etcd::start().await?;
    let shard_side = store(&etcd).await?;
    let gateway_side = store(&etcd).await?;
    let ttl = Duration::from_secs(2);
    shard_side.heartbeat(shard("s1", 0), ttl).await?;
    until("the gateway to see s1", || {
        gateway_side.shard("s1").is_some()
    })
    .await?;
    // Heartbeats with unchanged placement data renew the lease without writing.
    let writes = shard_side.writes();
    let mut same = shard("s1", 0);
    same.load.egress_bps = 1_234_567;
    for _ in 0..3 {
        shard_side.heartbeat(same.clone(), ttl).await?;
    }
    ensure!(shard_side.writes() == writes, "renewals are not writes");
    // A change placement cares about is written at once.
    shard_side.heartbeat(shard("s1", 7), ttl).await?;
    until("the new load", || {
        gateway_side
            .shard("s1")
            .is_some_and(|s| s.load.participants == 7)
    })
    .await?;
    // The shard dies: no more heartbeats; its lease expires and the record goes by itself.
    drop(shard_side);
    until("s1 to expire", || gateway_side.shard("s1").is_none()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_move_from_the_epoch_seen_and_watchers_hear_of_it() -> Result<()> {
    let etcd = Etcd::start().await?;
    let operator = store(&etcd).await?;
    let rival = store(&etcd).await?;
    let gateway = store(&etcd).await?;
    let mut changes = gateway.watch_routes();
    let first = operator.put_route("lesson", "s1", 0).await?;
    ensure!(first.epoch == 1);
    // A rival that read epoch 0 loses.
    ensure!(matches!(
        rival.put_route("lesson", "s2", 0).await,
        Err(StoreError::Conflict(_))
    ));
    let moved = operator.put_route("lesson", "s2", 1).await?;
    ensure!(moved.epoch == 2);
    let mut seen = Vec::new();
    while seen.last().map(|r: &tutti_store::Route| r.epoch) != Some(2) {
        let change = tokio::time::timeout(WAIT, changes.recv()).await??;
        seen.extend(change.route);
    }
    ensure!(
        seen.iter().map(|r| r.epoch).collect::<Vec<_>>() == [1, 2],
        "{seen:?}"
    );
    ensure!(gateway.route("lesson").is_some_and(|r| r.shard == "s2"));
    let mut room = RoomRecord::with_defaults("lesson");
    room.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into());
    operator.put_room(room.clone()).await?;
    until("the room record", || {
        gateway.room("lesson") == Some(room.clone())
    })
    .await?;
    operator.delete_route("lesson").await?;
    operator.delete_room("lesson").await?;
    until("both gone", || {
        gateway.route("lesson").is_none() && gateway.room("lesson").is_none()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_serve_the_last_state_while_etcd_is_down_and_resync_after() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    let writer = store(&etcd).await?;
    let reader = store(&etcd).await?;
    writer.put_route("concert", "s1", 0).await?;
    until("the route", || reader.route("concert").is_some()).await?;
    let resyncs = reader.resyncs();

    etcd.kill().await;
    until("the copy to notice", || !reader.synced()).await?;
    // Stale but answering: established sessions keep their routes.
    ensure!(reader.route("concert").is_some_and(|r| r.shard == "s1"));
    ensure!(matches!(
        writer.put_route("concert", "s2", 1).await,
        Err(StoreError::Unavailable(_))
    ));

    etcd.resume().await?;
    until("the copy to resync", || {
        reader.synced() && reader.resyncs() > resyncs
    })
    .await?;
    // Writes work again, and what changed after the restart reaches the copy.
    writer.put_route("concert", "s2", 1).await?;
    until("the moved route", || {
        reader
            .route("concert")
            .is_some_and(|r| r.shard == "s2" && r.epoch == 2)
    })
    .await?;

    // Compaction bounds the history; the copies keep following.
    for i in 0..50u64 {
        writer
            .put_route("concert", if i % 2 == 0 { "s1" } else { "s2" }, 2 + i)
            .await?;
    }
    let compacted = writer.compact(10).await?;
    ensure!(compacted.is_some(), "history compacted");
    writer
        .put_room(RoomRecord::with_defaults("after-compaction"))
        .await?;
    until("a record written after compaction", || {
        reader.room("after-compaction").is_some()
    })
    .await?;
    ensure!(
        reader.route("concert").is_some_and(|r| r.epoch == 52),
        "{:?}",
        reader.route("concert")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_and_their_states_reach_every_copy() -> Result<()> {
    let etcd = Etcd::start().await?;
    let gateway_side = store(&etcd).await?;
    let operator_side = store(&etcd).await?;
    let record = RecordingRecord {
        name: "lesson".into(),
        room: "lesson".into(),
        compose: true,
        stopped: false,
        owner: Some("gateway".into()),
    };
    gateway_side.put_recording(record.clone()).await?;
    until("the operator to see the recording", || {
        operator_side.recording("lesson").as_ref() == Some(&record)
    })
    .await?;
    let state = RecordingStateRecord {
        name: "lesson".into(),
        shard: Some("s1".into()),
        segments: Vec::new(),
        problem: None,
    };
    operator_side.put_recording_state(state.clone()).await?;
    until("the gateway to see its state", || {
        gateway_side.recording_states() == vec![state.clone()]
    })
    .await?;
    gateway_side.delete_recording("lesson").await?;
    operator_side.delete_recording_state("lesson").await?;
    until("both gone everywhere", || {
        gateway_side.recording_state("lesson").is_none() && operator_side.recordings().is_empty()
    })
    .await?;
    Ok(())
}
