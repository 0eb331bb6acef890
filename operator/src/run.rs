//! Wiring: the Room, Broadcast and ShardPool controllers, garbage collection, cascades,
//! and the watch on shard records that triggers them, running until told to stop.

use crate::backoff::Backoff;
use crate::controller::{self, Context, MANAGER, error_policy, reconcile_room};
use crate::gc;
use crate::metrics::Metrics;
use crate::placement::Strategy;
use crate::placer::Placer;
use crate::records::RecordKeeper;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tutti_crds::{Broadcast, Room, ShardPool};
use tutti_shard_api::admin::PipelineInfo;
use tutti_store::{LiveView, LiveWriter};

/// What the operator runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shards' admin token.
    pub admin_token: String,
    /// How rooms are spread.
    pub strategy: Strategy,
    /// Time between garbage collections.
    pub gc_period: Duration,
    /// Pipelines younger than this are never collected.
    pub gc_grace: Duration,
    /// How often shard records are compared for changes.
    pub shard_poll: Duration,
    /// This replica's identity (Events' reporting instance).
    pub identity: String,
    /// Namespace for Events about pipelines that name no owner.
    pub namespace: String,
    /// Controller settings.
    pub controller: controller::Config,
    /// Time between compactions of the live state's history.
    pub compact_every: Duration,
    /// How broadcast cascades are shaped.
    pub cascade: tutti_cascade::CascadeParams,
    /// What shard pods of ShardPools are started with.
    pub shards: crate::shard_pods::ShardRuntime,
    /// Time between passes over each ShardPool.
    pub pool_period: Duration,
}

/// What changes in the shard records matter: which shards live, and which drain.
fn shard_signature<V: LiveView + ?Sized>(view: &V) -> Vec<(String, bool)> {
    view.shards()
        .into_iter()
        .map(|s| (s.id, s.draining))
        .collect()
}

/// Whether a pipeline on `shard` belongs to something that exists and is routed there:
/// a Room resource (when Kubernetes is watched), or a room record with the same owner.
pub fn owned<V: LiveView + ?Sized>(
    view: &V,
    rooms: Option<&Store<Room>>,
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
    let Some(owner) = pipeline.spec.owner.as_deref() else {
        return false;
    };
    match gc::parse_owner(owner) {
        Some(("Room", namespace, name)) => {
            name == pipeline.name
                && routed_here
                && rooms.is_some_and(|rooms| {
                    rooms.get(&ObjectRef::new(name).within(namespace)).is_some()
                })
        }
        _ => {
            routed_here
                && view
                    .room(&pipeline.name)
                    .is_some_and(|r| r.owner.as_deref() == Some(owner))
        }
    }
}

/// What the live-state loops share with the Room controller when Kubernetes is watched.
struct KubeSide {
    rooms: Store<Room>,
    recorder: Recorder,
    shards_changed: mpsc::Sender<()>,
}

/// The loops that need only the live state: the watch on shard records, placement of
/// record-only rooms, broadcast cascades, garbage collection and history compaction. `rooms` is the Room cache
/// when Kubernetes is watched; `shards_changed` also hears of shard changes.
fn spawn_store_loops<S>(
    placer: Arc<Placer<S>>,
    kube: Option<KubeSide>,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let store = placer.store().clone();
    let (rooms, recorder, shards_changed) = match kube {
        Some(side) => (
            Some(side.rooms),
            Some(side.recorder),
            Some(side.shards_changed),
        ),
        None => (None, None, None),
    };
    let collect_now = Arc::new(Notify::new());
    let place_now = Arc::new(Notify::new());
    let plan_now = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    // Shard records come and go with heartbeats: re-place rooms and collect garbage
    // whenever the set of live shards (or their draining flags) changes.
    tasks.push({
        let (store, stop, collect_now, place_now, plan_now) = (
            store.clone(),
            stop.clone(),
            collect_now.clone(),
            place_now.clone(),
            plan_now.clone(),
        );
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
                    if let Some(tx) = &shards_changed {
                        let _ = tx.try_send(());
                    }
                    place_now.notify_one();
                    plan_now.notify_one();
                    collect_now.notify_one();
                }
            }
        })
    });
    tasks.push({
        let (placer, stop, metrics) = (placer.clone(), stop.clone(), metrics.clone());
        let period = settings.shard_poll;
        tokio::spawn(async move {
            let mut keeper = RecordKeeper::default();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                    _ = place_now.notified() => {}
                }
                let pass = keeper.pass(&placer).await;
                for (room, outcome) in pass.placed {
                    let result = if matches!(outcome, crate::conditions::RoomOutcome::Placed { .. }) { "ok" } else { "error" };
                    metrics.reconciled("record", result);
                    tracing::info!(%room, ?outcome, "record-only room placed");
                }
                for room in pass.forgotten {
                    tracing::info!(%room, "room created on first join released by its shard; forgotten");
                }
            }
        })
    });
    tasks.push(spawn_cascades(
        store.clone(),
        &settings,
        plan_now,
        metrics.clone(),
        stop.clone(),
    ));
    tasks.push({
        let (store, stop, metrics) = (store.clone(), stop.clone(), metrics.clone());
        let settings = settings.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(settings.gc_period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                    _ = collect_now.notified() => {}
                }
                // Until the Room cache is filled, every pipeline would look orphaned.
                if let Some(rooms) = &rooms
                    && rooms.wait_until_ready().await.is_err()
                {
                    return;
                }
                let report = gc::collect(
                    &store,
                    &settings.admin_token,
                    settings.gc_grace,
                    |shard, pipeline| owned(&store, rooms.as_ref(), shard, pipeline),
                )
                .await;
                metrics.gc_runs.inc();
                for error in &report.errors {
                    tracing::warn!(%error, "garbage collection incomplete");
                }
                for released in report.released {
                    metrics.gc_released(&released.shard);
                    tracing::info!(shard = %released.shard, pipeline = %released.pipeline,
                        owner = ?released.owner, "orphaned pipeline released");
                    if let Some(recorder) = &recorder {
                        record_release(recorder, &settings.namespace, &released).await;
                    }
                }
            }
        })
    });
    tasks.push({
        let (store, stop) = (store, stop);
        let period = settings.compact_every;
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
    });
    tasks
}

/// Drives every broadcast's cascade: each `shard_poll`, and at once when shards change.
fn spawn_cascades<S>(
    store: S,
    settings: &Settings,
    plan_now: Arc<Notify>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let driver = tutti_cascade::Driver::new(store, settings.admin_token.clone(), settings.cascade);
    let period = settings.shard_poll;
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<String, String> = Default::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = plan_now.notified() => {}
            }
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
                metrics.reconciled("broadcast", if outcome.is_ok() { "ok" } else { "error" });
                // Log a cascade when it changes, not every pass.
                if last.get(&broadcast) != Some(&summary) {
                    match &outcome {
                        Ok(_) => tracing::info!(%broadcast, cascade = %summary, "cascade applied"),
                        Err(err) => tracing::warn!(%broadcast, %err, "cascade not applied"),
                    }
                    last.insert(broadcast, summary);
                }
            }
        }
    })
}

/// Revisions of history kept when compacting: enough for any watcher a few minutes behind.
const COMPACT_KEEP: i64 = 10_000;

async fn record_release(recorder: &Recorder, namespace: &str, released: &gc::Released) {
    let (namespace, name) = released
        .owner
        .as_deref()
        .and_then(gc::parse_owner)
        .map(|(_, ns, name)| (ns.to_owned(), name.to_owned()))
        .unwrap_or_else(|| (namespace.to_owned(), released.pipeline.clone()));
    let reference = ObjectReference {
        api_version: Some("tutti.dev/v1alpha1".into()),
        kind: Some("Room".into()),
        namespace: Some(namespace),
        name: Some(name),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "OrphanReleased".into(),
        note: Some(format!(
            "pipeline {} on shard {} had no owner and was released",
            released.pipeline, released.shard
        )),
        action: "CollectGarbage".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &reference).await {
        tracing::warn!(%err, "event not recorded");
    }
}

/// Runs without Kubernetes until `stop`: rooms come from records in the live state (a
/// hand-run cluster, or rooms gateways create on first join).
pub async fn run_standalone<S>(
    store: S,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let placer = Arc::new(Placer::new(
        store,
        settings.admin_token.clone(),
        settings.strategy,
    ));
    let tasks = spawn_store_loops(placer, None, settings, metrics, stop.clone());
    stop.cancelled().await;
    for task in tasks {
        let _ = task.await;
    }
}

/// Runs the Room and Broadcast controllers and the live-state loops until `stop` is
/// cancelled.
pub async fn run<S>(
    client: Client,
    store: S,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) where
    S: LiveView + LiveWriter + Clone + Send + Sync + 'static,
{
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let namespace = settings.namespace.clone();
    let unplaced = Arc::new(crate::demand::Unplaced::default());
    let pool_context = Arc::new(crate::shardpool::PoolContext {
        client: client.clone(),
        store: store.clone(),
        admin_token: settings.admin_token.clone(),
        runtime: settings.shards.clone(),
        unplaced: unplaced.clone(),
        cascade: settings.cascade,
        recorder: recorder.clone(),
        metrics: metrics.clone(),
        period: settings.pool_period,
        memory: Default::default(),
    });
    let context = Arc::new(Context {
        client: client.clone(),
        placer: Placer::new(
            store.clone(),
            settings.admin_token.clone(),
            settings.strategy,
        ),
        recorder: recorder.clone(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        metrics: metrics.clone(),
        config: settings.controller.clone(),
        unplaced,
    });
    let rooms: Api<Room> = Api::all(client.clone());
    let controller = Controller::new(rooms, watcher::Config::default().any_semantic());
    let (shards_changed, reconcile_all) = mpsc::channel::<()>(1);
    let placer = Arc::new(Placer::new(
        store.clone(),
        settings.admin_token.clone(),
        settings.strategy,
    ));
    let kube = KubeSide {
        rooms: controller.store(),
        recorder,
        shards_changed,
    };
    let tasks = spawn_store_loops(placer, Some(kube), settings, metrics, stop.clone());
    let broadcasts = Controller::new(
        Api::<Broadcast>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        crate::broadcasts::reconcile_broadcast,
        |broadcast: Arc<Broadcast>, error: &controller::Error, ctx: Arc<Context<S>>| {
            ctx.metrics.failed(error.category());
            let delay = ctx.backoff.failed(&broadcast.uid().unwrap_or_default());
            tracing::warn!(broadcast = %broadcast.name_any(), %error, retry_in = ?delay, "reconcile failed");
            kube::runtime::controller::Action::requeue(delay)
        },
        context.clone(),
    )
    .for_each(|result| async move {
        if let Err(err) = result {
            log_controller_error("broadcast", &err);
        }
    });
    let rooms = controller
        .reconcile_all_on(tokio_stream_from(reconcile_all))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile_room, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                log_controller_error("room", &err);
            }
        });
    // Shard pods belong to their pool: a pod that changes (ready, failed, gone) wakes it.
    let shard_pods = watcher::Config::default()
        .labels("app.kubernetes.io/name=tutti-sfu")
        .any_semantic();
    // Pools live in the operator's namespace, next to the Secrets and the service
    // account their shards use; so do their pods.
    let pools = Controller::new(
        Api::<ShardPool>::namespaced(client.clone(), &namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns(
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &namespace),
        shard_pods,
    )
    // A shard starting or stopping changes its pod several times in a second: one pass.
    .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        crate::shardpool::reconcile_pool,
        crate::shardpool::pool_error_policy,
        pool_context,
    )
    .for_each(|result| async move {
        if let Err(err) = result {
            log_controller_error("shard pool", &err);
        }
    });
    futures_util::future::join3(rooms, broadcasts, pools).await;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
}

/// A receiver as a stream of triggers.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<()>,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A controller's stream error. A failed reconcile was already logged, with its retry, by
/// the error policy, and an object gone before its turn is expected; anything else (a
/// broken queue, the runner) is logged at warn, since nothing else reports it.
fn log_controller_error<R, Q>(controller: &str, err: &kube::runtime::controller::Error<R, Q>)
where
    kube::runtime::controller::Error<R, Q>: std::fmt::Display,
{
    match err {
        kube::runtime::controller::Error::ReconcilerFailed(..)
        | kube::runtime::controller::Error::ObjectNotFound(..) => {
            tracing::debug!(controller, %err, "controller event");
        }
        _ => tracing::warn!(controller, %err, "controller error"),
    }
}
