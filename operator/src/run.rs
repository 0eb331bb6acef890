//! Wiring: the Room, Broadcast and ShardPool controllers beside the control loops of
//! `tutti_control` (record-only rooms, cascades, garbage collection), running until told
//! to stop.

use crate::backoff::Backoff;
use crate::controller::{self, Context, MANAGER, error_policy, reconcile_room};
use crate::metrics::Metrics;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tutti_control::gc::{self, Released};
use tutti_control::loops::{self, LoopSettings, Observer};
use tutti_control::outcome::RoomOutcome;
use tutti_control::placement::Strategy;
use tutti_control::placer::Placer;
use tutti_crds::{Broadcast, Recording, Room, ShardPool};
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
    pub cascade: tutti_control::cascade::CascadeParams,
    /// What shard pods of ShardPools are started with.
    pub shards: crate::shard_pods::ShardRuntime,
    /// Time between passes over each ShardPool.
    pub pool_period: Duration,
}

/// What the control loops report to the operator: metrics always; with Kubernetes
/// watched, the Room cache (what exists), Events about released pipelines, and the Room
/// controller's wake-up when shards change.
struct OperatorObserver {
    metrics: Arc<Metrics>,
    kube: Option<KubeSide>,
    namespace: String,
}

/// What the loops share with the Room controller when Kubernetes is watched.
struct KubeSide {
    rooms: Store<Room>,
    recorder: Recorder,
    shards_changed: mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl Observer for OperatorObserver {
    async fn ready(&self) -> bool {
        match &self.kube {
            Some(kube) => kube.rooms.wait_until_ready().await.is_ok(),
            None => true,
        }
    }

    fn room_resource_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let kube = self.kube.as_ref()?;
        Some(
            kube.rooms
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        )
    }

    fn shards_changed(&self) {
        if let Some(kube) = &self.kube {
            let _ = kube.shards_changed.try_send(());
        }
    }

    fn record_placed(&self, _room: &str, outcome: &RoomOutcome) {
        let result = if matches!(outcome, RoomOutcome::Placed { .. }) {
            "ok"
        } else {
            "error"
        };
        self.metrics.reconciled("record", result);
    }

    fn cascade_passed(&self, _broadcast: &str, applied: bool) {
        self.metrics
            .reconciled("broadcast", if applied { "ok" } else { "error" });
    }

    fn collected(&self) {
        self.metrics.gc_runs.inc();
    }

    async fn released(&self, released: &Released) {
        self.metrics.gc_released(&released.shard);
        if let Some(kube) = &self.kube {
            record_release(&kube.recorder, &self.namespace, released).await;
        }
    }
}

impl Settings {
    /// What the control loops run with.
    pub fn loops(&self) -> LoopSettings {
        LoopSettings {
            admin_token: self.admin_token.clone(),
            strategy: self.strategy,
            gc_period: self.gc_period,
            gc_grace: self.gc_grace,
            shard_poll: self.shard_poll,
            compact_every: self.compact_every,
            cascade: self.cascade,
        }
    }
}

async fn record_release(recorder: &Recorder, namespace: &str, released: &Released) {
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
    let observer = Arc::new(OperatorObserver {
        metrics,
        kube: None,
        namespace: settings.namespace.clone(),
    });
    loops::run(store, settings.loops(), observer, stop).await;
}

/// Runs the Room, Broadcast, Recording and ShardPool controllers and the live-state loops
/// until `stop` is cancelled.
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
    let unplaced = Arc::new(tutti_control::demand::Unplaced::default());
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
    let observer = Arc::new(OperatorObserver {
        metrics: metrics.clone(),
        kube: Some(KubeSide {
            rooms: controller.store(),
            recorder,
            shards_changed,
        }),
        namespace: settings.namespace.clone(),
    });
    let tasks = loops::spawn(placer, settings.loops(), observer, stop.clone());
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
    let recordings = Controller::new(
        Api::<Recording>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        crate::recordings::reconcile_recording,
        |recording: Arc<Recording>, error: &controller::Error, ctx: Arc<Context<S>>| {
            ctx.metrics.failed(error.category());
            let delay = ctx.backoff.failed(&recording.uid().unwrap_or_default());
            tracing::warn!(recording = %recording.name_any(), %error, retry_in = ?delay, "reconcile failed");
            kube::runtime::controller::Action::requeue(delay)
        },
        context.clone(),
    )
    .for_each(|result| async move {
        if let Err(err) = result {
            log_controller_error("recording", &err);
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
    futures_util::future::join4(rooms, broadcasts, recordings, pools).await;
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
