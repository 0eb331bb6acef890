//! The operator's live-state side with real shards (the SFU's servers, in this process)
//! heartbeating into the in-memory store: garbage collection of an ownerless pipeline,
//! release on Room deletion, and a Room placed again when its shard disappears.

use anyhow::{Context, Result, ensure};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::gc;
use tutti_control::loops::{Observer, owned};
use tutti_control::outcome::RoomOutcome;
use tutti_control::placement::Strategy;
use tutti_control::placer::Placer;
use tutti_crds::{Room, RoomSpec};
use tutti_operator::validation::validate_room;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_store::{LiveView, MemoryStore};
use tutti_tests::eventually::eventually;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(10);

/// A shard that heartbeats into `store` every 200 ms (records live 1 s).
async fn shard(store: &MemoryStore, id: &str, stop: &CancellationToken) -> Result<TestShard> {
    let shard = TestShard::start().await?;
    shard.heartbeat_into(
        store.clone(),
        id,
        Duration::from_millis(200),
        Duration::from_secs(1),
        stop.child_token(),
    );
    let live = store.clone();
    let id = id.to_owned();
    eventually(WAIT, "the shard's first heartbeat", || {
        let live = live.clone();
        let id = id.clone();
        async move { Ok(live.shard(&id).is_some()) }
    })
    .await?;
    Ok(shard)
}

fn room(namespace: &str, name: &str) -> Room {
    let mut room = Room::new(
        name,
        RoomSpec {
            max_participants: 4,
            ..serde_json::from_value(serde_json::json!({})).expect("defaults")
        },
    );
    room.metadata.namespace = Some(namespace.into());
    room
}

fn listener(room: &str, id: &str) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, id);
    config.audio = false;
    config.video = false;
    config
}

/// A valid default Room of namespace `music`.
fn valid(name: &str) -> Result<tutti_operator::validation::ValidRoom> {
    validate_room("music", name, &room("music", name).spec).map_err(|p| anyhow::anyhow!("{p:?}"))
}

/// The Room cache as the control loops see it (what the operator's observer answers).
struct RoomCache(kube::runtime::reflector::Store<Room>);

impl Observer for RoomCache {
    fn room_resource_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        Some(self.0.get(&key).is_some())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_releases_only_ownerless_pipelines_after_the_grace() -> Result<()> {
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let a = shard(&store, "a", &stop).await?;
    let placer = Placer::new(store.clone(), ADMIN_TOKEN.into(), Strategy::Packed);
    // A Room the cluster knows, placed the normal way.
    let lesson = room("music", "lesson");
    let valid = valid("lesson")?;
    ensure!(matches!(
        placer.apply(&valid.record, &valid.selector, None).await,
        RoomOutcome::Placed { .. }
    ));
    // A leak: a pipeline nobody owns, and one whose Room is gone.
    a.admin
        .put_pipeline("leaked", &PipelineSpec::default())
        .await?;
    a.admin
        .put_pipeline(
            "deleted-room",
            &PipelineSpec {
                owner: Some("Room/music/deleted-room".into()),
                ..PipelineSpec::default()
            },
        )
        .await?;
    let mut writer: Writer<Room> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Apply(lesson));
    let rooms = writer.as_reader();
    let grace = Duration::from_secs(1);
    let collect = || {
        gc::collect(&store, ADMIN_TOKEN, grace, |shard, p| {
            owned(&store, &RoomCache(rooms.clone()), shard, p)
        })
    };

    // Within the grace nothing is touched: a room being created is never raced.
    let early = collect().await;
    ensure!(early.released.is_empty(), "{early:?}");
    // Once they are older than the grace, the next collection releases both orphans. The
    // collector is asked every 200 ms, as a short period would; ages count whole seconds.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut period = tokio::time::interval(Duration::from_millis(200));
    let report = loop {
        period.tick().await;
        let report = collect().await;
        if !report.released.is_empty() || tokio::time::Instant::now() > deadline {
            break report;
        }
    };
    let mut released: Vec<&str> = report
        .released
        .iter()
        .map(|r| r.pipeline.as_str())
        .collect();
    released.sort_unstable();
    ensure!(released == ["deleted-room", "leaked"], "{report:?}");
    let left: Vec<String> = a
        .admin
        .pipelines()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    ensure!(left == ["lesson"], "the owned pipeline stays: {left:?}");
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_releases_its_pipeline_and_route() -> Result<()> {
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let a = shard(&store, "a", &stop).await?;
    let placer = Placer::new(store.clone(), ADMIN_TOKEN.into(), Strategy::Packed);
    let valid = valid("duet")?;
    let outcome = placer
        .apply(&valid.record, &valid.selector, Some("con brio".into()))
        .await;
    ensure!(
        matches!(&outcome, RoomOutcome::Placed { shard, .. } if shard == "a"),
        "{outcome:?}"
    );
    let record = store.room("duet").context("room record")?;
    let hash = record.password_hash.context("password hash")?;
    ensure!(
        !hash.contains("con brio") && tutti_store::password::verify_password(&hash, "con brio")
    );
    // Reconciling again keeps the same hash (no churn in the live state).
    placer
        .apply(&valid.record, &valid.selector, Some("con brio".into()))
        .await;
    ensure!(store.room("duet").and_then(|r| r.password_hash) == Some(hash));
    ensure!(a.admin.pipelines().await?.iter().any(|p| p.name == "duet"));

    // A spec change reaches the shard on the next reconcile.
    let mut bigger = room("music", "duet");
    bigger.spec.max_participants = 8;
    let resized =
        validate_room("music", "duet", &bigger.spec).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    placer
        .apply(&resized.record, &resized.selector, Some("con brio".into()))
        .await;
    let hosted = a.admin.pipelines().await?;
    ensure!(
        hosted
            .iter()
            .any(|p| p.name == "duet" && p.spec.max_participants == 8),
        "{hosted:?}"
    );

    let released = placer.release("duet", "Room/music/duet").await?;
    ensure!(released.as_deref() == Some("a"));
    ensure!(a.admin.pipelines().await?.is_empty(), "pipeline released");
    ensure!(store.route("duet").is_none() && store.room("duet").is_none());
    // Released twice (a retried cleanup): nothing left to do, no error.
    ensure!(placer.release("duet", "Room/music/duet").await?.is_none());
    stop.cancel();
    Ok(())
}

/// Two heartbeating shards, a placer over them, and a room placed on one of them.
struct OneOfTwo {
    store: MemoryStore,
    stop: CancellationToken,
    placer: Placer<MemoryStore>,
    room: tutti_operator::validation::ValidRoom,
    /// The shard holding the room, its id, and the other shard.
    home: TestShard,
    home_id: String,
    other: TestShard,
}

async fn placed_on_one_of_two(name: &str) -> Result<OneOfTwo> {
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let first = shard(&store, "a", &stop).await?;
    let second = shard(&store, "b", &stop).await?;
    let placer = Placer::new(store.clone(), ADMIN_TOKEN.into(), Strategy::Packed);
    let room = valid(name)?;
    let RoomOutcome::Placed { shard: home_id, .. } =
        placer.apply(&room.record, &room.selector, None).await
    else {
        anyhow::bail!("not placed");
    };
    let (home, other) = if home_id == "a" {
        (first, second)
    } else {
        (second, first)
    };
    Ok(OneOfTwo {
        store,
        stop,
        placer,
        room,
        home,
        home_id,
        other,
    })
}

/// Waits until the live state's record of shard `id` (or its absence) passes `check`.
async fn until_shard(
    store: &MemoryStore,
    id: &str,
    what: &str,
    check: fn(Option<tutti_store::ShardRecord>) -> bool,
) -> Result<()> {
    eventually(WAIT, what, || async { Ok(check(store.shard(id))) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_shard_disappears_is_placed_again_with_a_new_epoch() -> Result<()> {
    let OneOfTwo {
        store,
        stop,
        placer,
        room: valid,
        home: gone,
        home_id: home,
        other: survivor,
    } = placed_on_one_of_two("quartet").await?;
    let epoch = store.route("quartet").context("route")?.epoch;
    gone.shard.stop().await;
    until_shard(&store, &home, "the stopped shard's record to go", |r| {
        r.is_none()
    })
    .await?;
    let outcome = placer.apply(&valid.record, &valid.selector, None).await;
    let RoomOutcome::Placed { shard, moved, .. } = &outcome else {
        anyhow::bail!("not placed again: {outcome:?}");
    };
    ensure!(*moved && shard != &home, "{outcome:?}");
    let route = store.route("quartet").context("route")?;
    ensure!(
        route.shard == *shard && route.epoch == epoch + 1,
        "{route:?}"
    );
    ensure!(
        survivor
            .admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "quartet")
    );
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_leaves_a_draining_shard_and_an_occupied_one_stays() -> Result<()> {
    let OneOfTwo {
        store,
        stop,
        placer,
        room: duo,
        home: draining,
        home_id: home,
        other,
    } = placed_on_one_of_two("duo").await?;
    // Packed placement puts a second room on the same shard; someone is in it.
    let busy = valid("trio")?;
    let busy_outcome = placer.apply(&busy.record, &busy.selector, None).await;
    ensure!(
        matches!(&busy_outcome, RoomOutcome::Placed { shard, .. } if *shard == home),
        "{busy_outcome:?}"
    );
    let url = draining.signal_url();
    let player = Participant::join(&url, SIGNAL_TOKEN, listener("trio", "player")).await?;
    eventually(WAIT, "the player is seated", || async {
        Ok(draining.admin.load().await?.participants == 1)
    })
    .await?;
    // The pool drains the shard (as the ShardPool reconciler does, through its admin API)
    // and its heartbeat says so.
    let (status, _) = draining
        .admin
        .request(hyper::Method::POST, "/v1/drain", Some(ADMIN_TOKEN), None)
        .await?;
    ensure!(status.is_success(), "drain: {status}");
    until_shard(&store, &home, "the draining flag in the live state", |r| {
        r.is_some_and(|s| s.draining)
    })
    .await?;
    let outcome = placer.apply(&duo.record, &duo.selector, None).await;
    let RoomOutcome::Placed { shard, moved, .. } = &outcome else {
        anyhow::bail!("not placed: {outcome:?}");
    };
    ensure!(
        *moved && *shard != home,
        "the empty room moved: {outcome:?}"
    );
    ensure!(store.route("duo").is_some_and(|r| r.shard == *shard));
    let left: Vec<String> = draining
        .admin
        .pipelines()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    ensure!(
        left == ["trio"],
        "only the occupied room is left on the draining shard: {left:?}"
    );
    ensure!(
        other
            .admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "duo"),
        "and the empty one was created on the other"
    );
    // The occupied room stays where its player is.
    let outcome = placer.apply(&busy.record, &busy.selector, None).await;
    ensure!(
        matches!(&outcome, RoomOutcome::Placed { shard, moved: false, .. } if *shard == home),
        "{outcome:?}"
    );
    player.leave().await;
    stop.cancel();
    Ok(())
}

/// Once `shards` shards heartbeat into `store`: a placer packing rooms, and the record of
/// "duet", a room of two placed by latency.
async fn latency_duet(store: &MemoryStore, shards: usize) -> Result<Placer<MemoryStore>> {
    use tutti_store::{LiveWriter, PlacementPolicy, RoomRecord};
    let live = store.clone();
    eventually(WAIT, "the shards' heartbeats", || {
        let live = live.clone();
        async move { Ok(live.shards().len() == shards) }
    })
    .await?;
    let record = RoomRecord {
        max_participants: 2,
        placement: PlacementPolicy::Latency,
        owner: Some("Test/duet".into()),
        ..RoomRecord::with_defaults("duet")
    };
    store.put_room(record).await.map_err(anyhow::Error::msg)?;
    Ok(Placer::new(
        store.clone(),
        ADMIN_TOKEN.into(),
        Strategy::Packed,
    ))
}

/// A participant of "duet" reporting its round trips (ms) to regions.
fn report(participant: &str, rtt: &[(&str, u32)]) -> tutti_store::LatencyReport {
    tutti_store::LatencyReport {
        room: "duet".into(),
        participant: participant.into(),
        rtt_ms: rtt.iter().map(|(r, ms)| ((*r).to_owned(), *ms)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_room_waits_for_its_first_participant_then_follows_the_pair() -> Result<()> {
    use tutti_control::records::RecordKeeper;
    use tutti_store::LiveWriter;
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let mut shards = Vec::new();
    for (id, region) in [("s-a", "r2"), ("s-b", "r3"), ("s-c", "r1")] {
        let shard = TestShard::start().await?;
        shard.heartbeat_in_region(
            store.clone(),
            id,
            Some(region),
            Duration::from_millis(200),
            Duration::from_secs(1),
            stop.child_token(),
        );
        shards.push(shard);
    }
    let placer = latency_duet(&store, 3).await?;
    let mut keeper = RecordKeeper::default();

    // Nobody has said where they are: the room waits.
    let pass = keeper.pass(&placer).await;
    ensure!(
        pass.placed == vec![("duet".to_owned(), RoomOutcome::AwaitingParticipants)],
        "{pass:?}"
    );
    ensure!(store.route("duet").is_none());

    // Abu Dhabi first: its nearest region, r2 (s-a).
    store
        .put_latency_report(report("abudhabi", &[("r1", 80), ("r2", 20), ("r3", 50)]))
        .await
        .map_err(anyhow::Error::msg)?;
    keeper.pass(&placer).await;
    let first = store.route("duet").context("placed")?;
    ensure!(first.shard == "s-a", "{first:?}");

    // Seoul joins: through r1 the two are 90 ms apart, through r2 110: the room moves,
    // with a new epoch (gateways tell everyone to join again), and leaves s-a.
    store
        .put_latency_report(report("seoul", &[("r1", 10), ("r2", 90), ("r3", 60)]))
        .await
        .map_err(anyhow::Error::msg)?;
    let pass = keeper.pass(&placer).await;
    let moved = store.route("duet").context("routed")?;
    ensure!(
        moved.shard == "s-c" && moved.epoch > first.epoch,
        "{moved:?} {pass:?}"
    );
    ensure!(
        shards[2]
            .admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "duet"),
        "the pipeline is on s-c"
    );
    ensure!(
        !shards[0]
            .admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "duet"),
        "and no longer on s-a"
    );

    // Once: a third report that would favour r3 does not move it again.
    store
        .put_latency_report(report("third", &[("r1", 200), ("r2", 200), ("r3", 5)]))
        .await
        .map_err(anyhow::Error::msg)?;
    keeper.pass(&placer).await;
    ensure!(store.route("duet").map(|r| r.shard) == Some("s-c".into()));
    // Released: the reports go with the room.
    placer
        .release("duet", "Test/duet")
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(store.latency_reports("duet").is_empty());
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_move_its_target_shard_refused_is_tried_again() -> Result<()> {
    use tutti_control::records::RecordKeeper;
    use tutti_store::LiveWriter;
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let near = TestShard::start().await?;
    let far = TestShard::start().await?;
    far.heartbeat_in_region(
        store.clone(),
        "s-far",
        Some("r2"),
        Duration::from_millis(200),
        Duration::from_secs(1),
        stop.child_token(),
    );
    // The near region's shard is announced at an address where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let silent = stop.child_token();
    near.heartbeat_at(
        store.clone(),
        "s-near",
        Some("r1"),
        &format!("http://{dead}"),
        Duration::from_millis(200),
        Duration::from_secs(1),
        silent.clone(),
    );
    let placer = latency_duet(&store, 2).await?;
    let mut keeper = RecordKeeper::default();
    store
        .put_latency_report(report("abudhabi", &[("r1", 80), ("r2", 20)]))
        .await
        .map_err(anyhow::Error::msg)?;
    keeper.pass(&placer).await;
    ensure!(store.route("duet").map(|r| r.shard) == Some("s-far".into()));

    // Seoul makes r1 the better region, but its shard does not answer: the room stays.
    store
        .put_latency_report(report("seoul", &[("r1", 10), ("r2", 90)]))
        .await
        .map_err(anyhow::Error::msg)?;
    let pass = keeper.pass(&placer).await;
    ensure!(
        matches!(pass.placed.as_slice(), [(_, RoomOutcome::ShardUnreachable { shard, .. })] if shard == "s-near"),
        "{pass:?}"
    );
    ensure!(store.route("duet").map(|r| r.shard) == Some("s-far".into()));

    // The shard answers at its real address now: the next pass, with the same reports,
    // makes the move it could not make before.
    silent.cancel();
    near.heartbeat_in_region(
        store.clone(),
        "s-near",
        Some("r1"),
        Duration::from_millis(200),
        Duration::from_secs(1),
        stop.child_token(),
    );
    let (live, real) = (store.clone(), format!("http://{}", near.shard.http_addr));
    eventually(WAIT, "the near shard's real address", || {
        let (live, real) = (live.clone(), real.clone());
        async move {
            Ok(live
                .shard("s-near")
                .is_some_and(|s| s.admin_url.starts_with(&real)))
        }
    })
    .await?;
    let pass = keeper.pass(&placer).await;
    ensure!(
        store.route("duet").map(|r| r.shard) == Some("s-near".into()),
        "{pass:?}"
    );
    ensure!(
        near.admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "duet"),
        "the pipeline is on the near shard"
    );
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_resource_takes_over_a_name_someone_created_by_joining() -> Result<()> {
    use tutti_store::{AUTO_CREATED_OWNER, LiveWriter, RoomRecord};
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let _a = shard(&store, "a", &stop).await?;
    let placer = Placer::new(store.clone(), ADMIN_TOKEN.into(), Strategy::Packed);
    // Someone joined "recital" first, creating it.
    store
        .put_room(RoomRecord {
            owner: Some(AUTO_CREATED_OWNER.into()),
            ..RoomRecord::with_defaults("recital")
        })
        .await
        .map_err(anyhow::Error::msg)?;
    let recital = valid("recital")?;
    let outcome = placer.apply(&recital.record, &recital.selector, None).await;
    ensure!(
        matches!(outcome, RoomOutcome::Placed { .. }),
        "the teacher's Room is not refused as a name conflict: {outcome:?}"
    );
    let record = store.room("recital").context("record")?;
    ensure!(
        record.owner.as_deref() == Some("Room/music/recital"),
        "{record:?}"
    );
    ensure!(record.max_participants == 4, "the Room's settings rule now");
    // Another Room's name still conflicts.
    let other = validate_room("jazz", "recital", &room("jazz", "recital").spec)
        .map_err(|p| anyhow::anyhow!("{p:?}"))?;
    ensure!(matches!(
        placer.apply(&other.record, &other.selector, None).await,
        RoomOutcome::NameConflict(_)
    ));
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_room_its_shard_let_go_is_created_again_where_it_was() -> Result<()> {
    use tutti_control::records::RecordKeeper;
    use tutti_store::{LiveWriter, RoomRecord};
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let a = shard(&store, "shard-a", &stop).await?;
    let placer = Placer::new(store.clone(), ADMIN_TOKEN.into(), Strategy::Packed);
    let mut keeper = RecordKeeper::default();
    let record = RoomRecord {
        owner: Some("Gateway/file".into()),
        ..RoomRecord::with_defaults("rehearsal")
    };
    store.put_room(record).await.map_err(anyhow::Error::msg)?;
    keeper.pass(&placer).await;
    let placed = store.route("rehearsal").context("placed")?;
    ensure!(placed.shard == "shard-a", "{placed:?}");
    // The shard releases it, as it does a pipeline that stood empty past its timeout.
    a.admin.release("rehearsal").await?;
    ensure!(
        a.admin
            .pipelines()
            .await?
            .iter()
            .all(|p| p.name != "rehearsal")
    );
    let pass = keeper.pass(&placer).await;
    ensure!(
        matches!(pass.placed.as_slice(), [(name, RoomOutcome::Placed { shard, moved: false, .. })]
            if name == "rehearsal" && shard == "shard-a"),
        "{pass:?}"
    );
    ensure!(
        a.admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "rehearsal"),
        "the pipeline is back on its shard"
    );
    ensure!(
        store.route("rehearsal") == Some(placed.clone()),
        "same route, same epoch: nobody is sent elsewhere"
    );
    stop.cancel();
    Ok(())
}
