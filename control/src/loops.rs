//! The control loops over the live state: placing rooms that have a record but no Room
//! resource, driving broadcast cascades, collecting orphaned pipelines and compacting the
//! store's history, each on a period and at once when the set of shards changes.
//!
//! The operator runs them beside its Kubernetes controllers; a standalone operator and
//! the gateway's local mode run them alone. What differs is only the [`Observer`]: the
//! operator's counts metrics, records Events and knows which Room resources exist.

use crate::cascade::{CascadeParams, Driver};
use crate::gc::{self, Released};
use crate::outcome::RoomOutcome;
use crate::placement::Strategy;
use crate::placer::Placer;
use crate::records::RecordKeeper;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::admin::PipelineInfo;
use tutti_store::{LiveView, LiveWriter};

/// How the loops run.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The shards' admin token.
    pub admin_token: String,
    /// How rooms are spread.
    pub strategy: Strategy,
    /// Time between garbage collections.
    pub gc_period: Duration,
    /// Pipelines younger than this are never collected.
    pub gc_grace: Duration,
    /// How often shard records are compared for changes, and records and cascades passed
    /// over when nothing woke them sooner.
    pub shard_poll: Duration,
    /// Time between compactions of the live state's history.
    pub compact_every: Duration,
    /// How broadcast cascades are shaped.
    pub cascade: CascadeParams,
}

/// Revisions of history kept when compacting: enough for any watcher a few minutes behind.
const COMPACT_KEEP: i64 = 10_000;

/// What the loops report to, and ask of, whoever runs them. Every method has a default
/// that does nothing, which is what local mode needs.
#[async_trait::async_trait]
pub trait Observer: Send + Sync + 'static {
    /// Waits until the owner knows which Room resources exist; `false` ends collection
    /// (the owner is stopping). Until then every pipeline of a Room would look orphaned.
    async fn ready(&self) -> bool {
        true
    }

    /// Whether the Room resource `namespace/name` exists; `None` when no resources are
    /// watched (then only records say what is owned).
    fn room_resource_exists(&self, _namespace: &str, _name: &str) -> Option<bool> {
        None
    }

    /// The set of live shards, or their draining flags, changed.
    fn shards_changed(&self) {}

    /// A record-only room was placed (or placed again).
    fn record_placed(&self, _room: &str, _outcome: &RoomOutcome) {}

    /// One pass over a broadcast's cascade ended.
    fn cascade_passed(&self, _broadcast: &str, _applied: bool) {}

    /// A pass changed a recording's state, or met a problem with it.
    fn recording_driven(&self, _driven: &crate::recordings::Driven) {}

    /// A garbage collection ran.
    fn collected(&self) {}

    /// A pipeline nothing owned was released.
    async fn released(&self, _released: &Released) {}
}

/// An observer that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {}

/// What changes in the shard records matter: which shards live, and which drain.
fn shard_signature<V: LiveView + ?Sized>(view: &V) -> Vec<(String, bool)> {
    view.shards()
        .into_iter()
        .map(|s| (s.id, s.draining))
        .collect()
}

/// Whether a pipeline on `shard` belongs to something that exists and is routed there:
/// a Room resource (when resources are watched), or a room record with the same owner.
/// A room declared without an owner (a rooms file, a hand-written record) owns its
/// pipeline as any other record does: its pipeline is no orphan for carrying no owner.
pub fn owned<V: LiveView + ?Sized>(
    view: &V,
    observer: &dyn Observer,
    shard: &str,
    pipeline: &PipelineInfo,
) -> bool {
    // An edge of a broadcast's cascade: owned while the cascade lists it.
    let edge_of_cascade = view
        .cascades()
        .iter()
        .any(|c| c.stage == pipeline.name && c.edges.iter().any(|e| e.shard == shard));
    if edge_of_cascade {
        return true;
    }
    let routed_here = view.route(&pipeline.name).is_some_and(|r| r.shard == shard);
    let owner = pipeline.spec.owner.as_deref();
    let record_owned = || {
        view.room(&pipeline.name)
            .is_some_and(|r| r.owner.as_deref() == owner)
    };
    match owner.and_then(gc::parse_owner) {
        Some(("Room", namespace, name)) => {
            name == pipeline.name
                && routed_here
                // Without a view of the resources, no Room is known to exist.
                && observer
                    .room_resource_exists(namespace, name)
                    .unwrap_or(false)
        }
        _ => routed_here && record_owned(),
    }
}

/// Runs the loops over `store` until `stop`.
pub async fn run<S>(
    store: S,
    settings: LoopSettings,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let placer = Arc::new(Placer::new(
        store,
        settings.admin_token.clone(),
        settings.strategy,
    ));
    let tasks = spawn(placer, settings, observer, stop.clone());
    stop.cancelled().await;
    for task in tasks {
        let _ = task.await;
    }
}

/// Starts the loops: the watch on shard records, placement of record-only rooms,
/// broadcast cascades, garbage collection and history compaction.
pub fn spawn<S>(
    placer: Arc<Placer<S>>,
    settings: LoopSettings,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let store = placer.store().clone();
    let collect_now = Arc::new(Notify::new());
    let place_now = Arc::new(Notify::new());
    let plan_now = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    // Shard records come and go with heartbeats: re-place rooms and collect garbage
    // whenever the set of live shards (or their draining flags) changes.
    tasks.push({
        let (store, stop, observer) = (store.clone(), stop.clone(), observer.clone());
        let (collect_now, place_now, plan_now) =
            (collect_now.clone(), place_now.clone(), plan_now.clone());
        let poll = settings.shard_poll;
        tokio::spawn(async move {
            let mut seen = shard_signature(&store);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                let now = shard_signature(&store);
                if now != seen {
                    tracing::info!(shards = ?now, "shards changed");
                    seen = now;
                    observer.shards_changed();
                    place_now.notify_one();
                    plan_now.notify_one();
                    collect_now.notify_one();
                }
            }
        })
    });
    tasks.push(spawn_records(
        placer,
        settings.shard_poll,
        place_now,
        observer.clone(),
        stop.clone(),
    ));
    tasks.push(spawn_cascades(
        store.clone(),
        &settings,
        plan_now,
        observer.clone(),
        stop.clone(),
    ));
    tasks.push(spawn_recordings(
        store.clone(),
        &settings,
        observer.clone(),
        stop.clone(),
    ));
    tasks.push(spawn_hls(store.clone(), &settings, stop.clone()));
    tasks.push(spawn_collection(
        store.clone(),
        &settings,
        collect_now,
        observer,
        stop.clone(),
    ));
    tasks.push(spawn_compaction(store, settings.compact_every, stop));
    tasks
}

/// Places record-only rooms: each `period`, when shards change, and at once when a room
/// record or a latency report changes (a first join waits on it).
fn spawn_records<S>(
    placer: Arc<Placer<S>>,
    period: Duration,
    place_now: Arc<Notify>,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut records = placer.store().watch_rooms();
        let mut keeper = RecordKeeper::default();
        loop {
            let pass = keeper.pass(&placer).await;
            for (room, outcome) in pass.placed {
                observer.record_placed(&room, &outcome);
                tracing::info!(%room, ?outcome, "record-only room placed");
            }
            for room in pass.forgotten {
                tracing::info!(%room, "room created on first join released by its shard; forgotten");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = place_now.notified() => {}
                changed = records.changed() => {
                    if changed.is_err() {
                        // The store is gone: only the period is left to wake on.
                        records = placer.store().watch_rooms();
                    }
                }
            }
        }
    })
}

/// Drives every broadcast's cascade: each `shard_poll`, and at once when shards change.
fn spawn_cascades<S>(
    store: S,
    settings: &LoopSettings,
    plan_now: Arc<Notify>,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let driver = Driver::new(store, settings.admin_token.clone(), settings.cascade);
    let period = settings.shard_poll;
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<String, String> = Default::default();
        loop {
            for (broadcast, outcome) in driver.pass().await {
                let summary = match &outcome {
                    Ok(driven) => {
                        for (shard, err) in &driven.failed {
                            tracing::warn!(%broadcast, %shard, %err, "edge pipeline not applied");
                        }
                        format!("{:?}", driven.cascade)
                    }
                    Err(err) => err.to_string(),
                };
                observer.cascade_passed(&broadcast, outcome.is_ok());
                // Log a cascade when it changes, not every pass.
                if last.get(&broadcast) != Some(&summary) {
                    match &outcome {
                        Ok(_) => tracing::info!(%broadcast, cascade = %summary, "cascade applied"),
                        Err(err) => tracing::warn!(%broadcast, %err, "cascade not applied"),
                    }
                    last.insert(broadcast, summary);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = plan_now.notified() => {}
            }
        }
    })
}

/// Runs every recording on its room's shard, each `shard_poll`.
fn spawn_recordings<S>(
    store: S,
    settings: &LoopSettings,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let driver = crate::recordings::RecordingDriver::new(store, settings.admin_token.clone());
    let mut ticker = tokio::time::interval(settings.shard_poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<String, Option<String>> = Default::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for driven in driver.pass().await {
                observer.recording_driven(&driven);
                // A problem is logged when it appears or changes, not every pass.
                if last.get(&driven.name) != Some(&driven.problem) {
                    if let Some(problem) = &driven.problem {
                        tracing::warn!(recording = %driven.name, %problem, "recording not driven");
                    }
                    last.insert(driven.name.clone(), driven.problem.clone());
                }
            }
        }
    })
}

/// Packages each broadcast that asks for HLS on its stage's shard, each `shard_poll`.
fn spawn_hls<S>(
    store: S,
    settings: &LoopSettings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + Send + Sync + 'static,
{
    let driver = crate::hls::HlsDriver::new(store, settings.admin_token.clone());
    let mut ticker = tokio::time::interval(settings.shard_poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        let mut last: Vec<(String, String)> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let problems = driver.pass().await;
            // Logged when they change, not every pass.
            if problems != last {
                for (shard, problem) in &problems {
                    tracing::warn!(%shard, %problem, "HLS packaging not driven");
                }
                last = problems;
            }
        }
    })
}

/// Collects orphaned pipelines each `gc_period`, and at once when shards change.
fn spawn_collection<S>(
    store: S,
    settings: &LoopSettings,
    collect_now: Arc<Notify>,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let (admin_token, period, grace) = (
        settings.admin_token.clone(),
        settings.gc_period,
        settings.gc_grace,
    );
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
                _ = collect_now.notified() => {}
            }
            if !observer.ready().await {
                return;
            }
            let report = gc::collect(&store, &admin_token, grace, |shard, pipeline| {
                owned(&store, observer.as_ref(), shard, pipeline)
            })
            .await;
            observer.collected();
            for error in &report.errors {
                tracing::warn!(%error, "garbage collection incomplete");
            }
            for released in report.released {
                tracing::info!(shard = %released.shard, pipeline = %released.pipeline,
                    owner = ?released.owner, "orphaned pipeline released");
                observer.released(&released).await;
            }
        }
    })
}

/// Compacts the store's history every `period`.
fn spawn_compaction<S>(
    store: S,
    period: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveWriter + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match store.compact(COMPACT_KEEP).await {
                Ok(Some(revision)) => tracing::info!(revision, "live-state history compacted"),
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "live-state history not compacted"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_shard_api::admin::PipelineSpec;
    use tutti_store::{MemoryStore, RoomRecord};

    /// An observer that knows one Room resource exists.
    struct Knows(&'static str, &'static str);

    impl Observer for Knows {
        fn room_resource_exists(&self, namespace: &str, name: &str) -> Option<bool> {
            Some((namespace, name) == (self.0, self.1))
        }
    }

    fn pipeline(name: &str, owner: Option<&str>) -> PipelineInfo {
        PipelineInfo {
            name: name.to_owned(),
            spec: PipelineSpec {
                owner: owner.map(str::to_owned),
                ..PipelineSpec::default()
            },
            participants: 2,
            tracks: 2,
            forwarded_streams: 2,
            age_seconds: 600,
            empty_seconds: None,
            max_subscriber_loss_percent: 0.0,
        }
    }

    /// A store holding `name`'s record with `owner`, routed to shard `a`.
    async fn routed(name: &str, owner: Option<&str>) -> MemoryStore {
        let store = MemoryStore::new();
        let mut record = RoomRecord::with_defaults(name);
        record.owner = owner.map(str::to_owned);
        store.put_room(record).await.unwrap();
        store.put_route(name, "a", 0).await.unwrap();
        store
    }

    // A room from the rooms file has no owner: its pipeline, with people in it, was
    // released as an orphan a minute after it was placed (everyone in it rejoined).
    #[tokio::test]
    async fn a_declared_room_without_owner_owns_its_pipeline_where_it_is_routed() {
        let store = routed("lesson", None).await;
        assert!(owned(&store, &Quiet, "a", &pipeline("lesson", None)));
        assert!(!owned(&store, &Quiet, "b", &pipeline("lesson", None)));
    }

    #[tokio::test]
    async fn a_pipeline_without_owner_or_record_is_an_orphan() {
        let store = routed("lesson", None).await;
        assert!(!owned(&store, &Quiet, "a", &pipeline("leaked", None)));
    }

    #[tokio::test]
    async fn owners_must_agree() {
        let store = routed("lesson", Some(AUTO)).await;
        assert!(owned(&store, &Quiet, "a", &pipeline("lesson", Some(AUTO))));
        assert!(!owned(&store, &Quiet, "a", &pipeline("lesson", None)));
        let declared = routed("lesson", None).await;
        assert!(!owned(
            &declared,
            &Quiet,
            "a",
            &pipeline("lesson", Some(AUTO))
        ));
    }

    #[tokio::test]
    async fn a_room_resources_pipeline_is_owned_while_the_resource_exists() {
        let owner = Some("Room/music/lesson");
        let store = routed("lesson", owner).await;
        let live = pipeline("lesson", owner);
        assert!(owned(&store, &Knows("music", "lesson"), "a", &live));
        assert!(!owned(&store, &Knows("music", "other"), "a", &live));
        // Without a view of the resources, none is known to exist.
        assert!(!owned(&store, &Quiet, "a", &live));
    }

    const AUTO: &str = tutti_store::AUTO_CREATED_OWNER;
}
