//! Wiring: the Room controller, garbage collection, and the watch on shard records that
//! triggers both, running until told to stop.

use crate::backoff::Backoff;
use crate::controller::{self, Context, MANAGER, error_policy, reconcile_room};
use crate::gc;
use crate::metrics::Metrics;
use crate::placement::Strategy;
use crate::placer::Placer;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tutti_crds::Room;
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
}

/// What changes in the shard records matter: which shards live, and which drain.
fn shard_signature<V: LiveView + ?Sized>(view: &V) -> Vec<(String, bool)> {
    view.shards()
        .into_iter()
        .map(|s| (s.id, s.draining))
        .collect()
}

/// Whether a pipeline on `shard` belongs to a Room that exists and is routed there.
pub fn owned_by_room<V: LiveView + ?Sized>(
    view: &V,
    rooms: &Store<Room>,
    shard: &str,
    pipeline: &PipelineInfo,
) -> bool {
    let Some((kind, namespace, name)) = pipeline.spec.owner.as_deref().and_then(gc::parse_owner)
    else {
        return false;
    };
    kind == "Room"
        && name == pipeline.name
        && rooms.get(&ObjectRef::new(name).within(namespace)).is_some()
        && view.route(name).is_some_and(|r| r.shard == shard)
}

/// Runs until `stop` is cancelled.
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
    });
    let rooms: Api<Room> = Api::all(client.clone());
    let controller = Controller::new(rooms, watcher::Config::default().any_semantic());
    let room_store = controller.store();

    // Shard records come and go with heartbeats: re-place every room, and collect garbage,
    // whenever the set of live shards (or their draining flags) changes.
    let (shards_changed, reconcile_all) = mpsc::channel::<()>(1);
    let collect_now = Arc::new(Notify::new());
    let watch = {
        let (store, stop, collect_now) = (store.clone(), stop.clone(), collect_now.clone());
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
                    let _ = shards_changed.try_send(());
                    collect_now.notify_one();
                }
            }
        })
    };
    let collector = {
        let (store, stop, room_store, metrics) = (
            store.clone(),
            stop.clone(),
            room_store.clone(),
            metrics.clone(),
        );
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
                if room_store.wait_until_ready().await.is_err() {
                    return;
                }
                let report = gc::collect(
                    &store,
                    &settings.admin_token,
                    settings.gc_grace,
                    |shard, pipeline| owned_by_room(&store, &room_store, shard, pipeline),
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
                    let (namespace, name) = released
                        .owner
                        .as_deref()
                        .and_then(gc::parse_owner)
                        .map(|(_, ns, name)| (ns.to_owned(), name.to_owned()))
                        .unwrap_or_else(|| (settings.namespace.clone(), released.pipeline.clone()));
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
            }
        })
    };
    controller
        .reconcile_all_on(tokio_stream_from(reconcile_all))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile_room, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        })
        .await;
    stop.cancel();
    let _ = watch.await;
    let _ = collector.await;
}

/// A receiver as a stream of triggers.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<()>,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
