//! The ShardPool reconciler: the Kubernetes side of scaling shards.
//!
//! Each pass is snapshot → decide → act → status: it reads the pool's pods and the live
//! state (shard records with their load, routes, cascades) into the autoscaler's view,
//! takes its pure [`decide`](tutti_control::autoscale::decide) decision, and carries it
//! out, every failure naming its [`PoolStep`]: shards are started from the pool's
//! template, marked draining through their admin API (and the pod annotated, so the
//! deadline survives an operator restart), and deleted when empty or at the deadline.
//! Occupied shards carry a label that the pool's PodDisruptionBudget protects, so a node
//! drain or the cluster autoscaler cannot evict a shard with people on it.

use crate::conditions::{Wanted, merge};
use crate::controller::{Error, MANAGER};
use crate::metrics::Metrics;
use crate::shard_pods::{
    ADVERTISE_IP_ANNOTATION, BalancerAddress, DRAINING_SINCE, Exposure, OCCUPIED_LABEL,
    REGION_ANNOTATION, REGISTERED, SLOT_LABEL, ShardRuntime, free_slots, load_balancer_address,
    media_service, node_external_ip, node_region, owner_reference, pool_selector, service_name,
    shard_name, shard_pod, slot_ports, validate_pool,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tutti_control::autoscale::{
    Decision, DeleteReason, Demand, PoolPolicy, ShardPhase, ShardView, decide,
};
use tutti_control::cascade::CascadeParams;
use tutti_control::demand::Unplaced;
use tutti_control::placement::candidates;
use tutti_crds::duration::parse_duration;
use tutti_crds::{NetworkingMode, ShardPool, ShardPoolStatus};
use tutti_shard_api::client::ShardAdmin;
use tutti_store::{LiveView, ShardRecord};

/// What every pool reconcile shares.
pub struct PoolContext<S> {
    /// The Kubernetes client.
    pub client: Client,
    /// The live state (read only: shards write their own records).
    pub store: S,
    /// The shards' admin token (to drain them).
    pub admin_token: String,
    /// What shards are started with.
    pub runtime: ShardRuntime,
    /// Rooms waiting for a shard.
    pub unplaced: Arc<Unplaced>,
    /// How cascades are sized (to know how many shards broadcasts want).
    pub cascade: CascadeParams,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time between passes.
    pub period: Duration,
    /// What passes remember: when each shard became empty, and the budgets applied.
    pub memory: Mutex<PoolMemory>,
}

/// What one pass leaves for the next.
#[derive(Debug, Default)]
pub struct PoolMemory {
    empty_since: HashMap<String, u64>,
    budgets: HashMap<String, u32>,
}

/// How long a shard pod may take to register before it is replaced.
const STARTUP_TIMEOUT: u64 = 600;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The pool's promises in the autoscaler's terms.
pub fn policy(pool: &ShardPool) -> PoolPolicy {
    let spec = &pool.spec;
    let seconds = |text: &str, default: u64| parse_duration(text).map_or(default, |d| d.as_secs());
    PoolPolicy {
        min_shards: spec.min_shards,
        max_shards: spec.max_shards,
        seats_per_shard: spec.capacity.participants,
        buffer: spec.buffer,
        scale_down_delay: seconds(&spec.scale_down_delay, 600),
        drain_timeout: seconds(&spec.drain_timeout, 3600),
        // Pulling an image and, on public nodes, waiting for the node's address.
        startup_timeout: STARTUP_TIMEOUT,
    }
}

/// Shards broadcasts want beyond the shards alive and not draining: each edge needs a
/// shard of its own, and the origin one more.
pub fn cascade_shortfall<V: LiveView + ?Sized>(view: &V, params: &CascadeParams) -> u32 {
    let serving = view.shards().iter().filter(|s| !s.draining).count();
    view.broadcasts()
        .iter()
        .map(|broadcast| {
            let seated: u32 = view
                .cascade(&broadcast.name)
                .map(|c| c.edges.iter().map(|e| e.viewers).sum())
                .unwrap_or(0);
            let audience = broadcast.expected_audience.max(seated);
            let edges = tutti_control::cascade::plan::edges_needed(
                audience,
                broadcast.max_viewers_per_shard,
                params.headroom,
            );
            (edges + 1).saturating_sub(serving) as u32
        })
        .max()
        .unwrap_or(0)
}

/// A pool's pod as the autoscaler sees it.
fn view_of(
    pod: &Pod,
    record: Option<&ShardRecord>,
    reserved: u32,
    in_cascade: bool,
    empty_since: &mut HashMap<String, u64>,
    now: u64,
) -> ShardView {
    let name = pod.name_any();
    let failed = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Failed" || phase == "Succeeded");
    let draining_since = pod
        .annotations()
        .get(DRAINING_SINCE)
        .and_then(|t| t.parse::<u64>().ok());
    let registered_before = pod.annotations().contains_key(REGISTERED);
    let created = pod
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| u64::try_from(t.0.as_second()).unwrap_or(now));
    let phase = match (failed, record, draining_since) {
        (true, _, _) => ShardPhase::Failed,
        (_, _, Some(since)) => ShardPhase::Draining { since },
        (_, Some(r), None) if r.draining => ShardPhase::Draining { since: now },
        (_, Some(_), None) => ShardPhase::Ready,
        (_, None, None) if registered_before => ShardPhase::Unreachable,
        (_, None, None) => ShardPhase::Starting { since: created },
    };
    let participants = record.map_or(0, |r| r.load.participants);
    // Without its record a draining shard's occupants are unknown: it waits for them (or
    // for its deadline) rather than be removed on a guess.
    let unknown =
        record.is_none() && matches!(phase, ShardPhase::Draining { .. }) && registered_before;
    let occupied = participants > 0 || in_cascade || unknown || phase == ShardPhase::Unreachable;
    let since = if occupied {
        empty_since.remove(&name);
        None
    } else {
        Some(*empty_since.entry(name.clone()).or_insert(now))
    };
    ShardView {
        name,
        phase,
        participants,
        used_seats: participants.max(reserved),
        occupied,
        empty_since: since,
    }
}

/// Reconciles one pool.
pub async fn reconcile_pool<S>(
    pool: Arc<ShardPool>,
    ctx: Arc<PoolContext<S>>,
) -> Result<Action, Error>
where
    S: LiveView + Send + Sync + 'static,
{
    let namespace = pool.namespace().ok_or(Error::Unnamed)?;
    let name = pool.meta().name.clone().ok_or(Error::Unnamed)?;
    let pools: Api<ShardPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = match validate_pool(&pool) {
        Err(problems) => {
            let message = problems.join("; ");
            let status = invalid_status(&pool, &message);
            patch_status(&pools, &name, &status).await?;
            let previous_reason = pool
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.reason.clone());
            if previous_reason.as_deref() != Some("InvalidSpec") {
                publish(
                    &ctx.recorder,
                    &pool,
                    EventType::Warning,
                    "InvalidSpec",
                    message,
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Ok(()) => scale(&pool, &namespace, &name, &pools, &ctx).await,
    };
    ctx.metrics
        .reconciled("shardpool", if result.is_ok() { "ok" } else { "error" });
    result
}

/// A step of a pool's pass, in the order they run; a failure names its step, which is also
/// its metric category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolStep {
    /// Listing the pool's pods.
    ListPods,
    /// Deleting a shard's pod (and its media Service).
    DeleteShard,
    /// Marking a shard draining.
    DrainShard,
    /// Creating a shard's pod (and its media Service).
    StartShard,
    /// Annotating pods with their node's address and region.
    NodeFacts,
    /// Labelling occupied shards.
    LabelOccupancy,
    /// Applying the pool's PodDisruptionBudget.
    DisruptionBudget,
    /// Writing the pool's status.
    Status,
}

impl PoolStep {
    /// The metric category of a failure in this step.
    pub fn category(self) -> &'static str {
        match self {
            Self::ListPods => "pool_list_pods",
            Self::DeleteShard => "pool_delete_shard",
            Self::DrainShard => "pool_drain_shard",
            Self::StartShard => "pool_start_shard",
            Self::NodeFacts => "pool_node_facts",
            Self::LabelOccupancy => "pool_label_occupancy",
            Self::DisruptionBudget => "pool_disruption_budget",
            Self::Status => "pool_status",
        }
    }
}

impl std::fmt::Display for PoolStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ListPods => "listing the pool's pods",
            Self::DeleteShard => "deleting a shard",
            Self::DrainShard => "draining a shard",
            Self::StartShard => "starting a shard",
            Self::NodeFacts => "publishing node facts",
            Self::LabelOccupancy => "labelling occupied shards",
            Self::DisruptionBudget => "applying the disruption budget",
            Self::Status => "writing the status",
        })
    }
}

/// Attaches the step a failure happened in.
fn at(step: PoolStep) -> impl FnOnce(Error) -> Error {
    move |error| Error::Pool {
        step,
        source: Box::new(error),
    }
}

/// What one pass reads before deciding: the pool's pods and the live state, as the
/// autoscaler sees them.
struct PoolSnapshot {
    pods: Api<Pod>,
    /// Shard records by id.
    records: BTreeMap<String, ShardRecord>,
    /// Pods not being deleted.
    live: Vec<Pod>,
    /// Slots held by any pod, even one on its way out.
    taken_slots: BTreeSet<u32>,
    /// The autoscaler's view of each live pod, in the order of `live`.
    views: Vec<ShardView>,
    demand: Demand,
    /// Whether the pool's shards carry no extra labels (it takes any room and cascade).
    general: bool,
}

/// Reads what a pass decides by.
async fn snapshot<S>(
    pool: &ShardPool,
    namespace: &str,
    name: &str,
    ctx: &PoolContext<S>,
    now: u64,
) -> Result<PoolSnapshot, Error>
where
    S: LiveView + Send + Sync + 'static,
{
    let policy = policy(pool);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = pool_selector(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| at(PoolStep::ListPods)(e.into()))?;
    let records: BTreeMap<String, ShardRecord> = ctx
        .store
        .shards()
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let reserved: BTreeMap<String, u32> = candidates(
        &records.values().cloned().collect::<Vec<_>>(),
        &ctx.store.routes(),
        &ctx.store.rooms(),
        "",
    )
    .into_iter()
    .map(|c| (c.id, c.reserved))
    .collect();
    let in_cascades: BTreeSet<String> = ctx
        .store
        .cascades()
        .into_iter()
        .flat_map(|c| std::iter::once(c.origin).chain(c.edges.into_iter().map(|e| e.shard)))
        .collect();
    let mut taken_slots = BTreeSet::new();
    let mut live = Vec::new();
    for pod in listed.items {
        if let Some(slot) = pod.labels().get(SLOT_LABEL).and_then(|s| s.parse().ok()) {
            taken_slots.insert(slot);
        }
        // A pod on its way out holds its slot, but no longer counts.
        if pod.meta().deletion_timestamp.is_none() {
            live.push(pod);
        }
    }
    let views: Vec<ShardView> = {
        // Only this pass touches the memory while it holds the lock; a panic elsewhere
        // cannot have left it half-written.
        let mut memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
        let views = live
            .iter()
            .map(|pod| {
                let id = pod.name_any();
                view_of(
                    pod,
                    records.get(&id),
                    reserved.get(&id).copied().unwrap_or(0),
                    in_cascades.contains(&id),
                    &mut memory.empty_since,
                    now,
                )
            })
            .collect();
        let names: BTreeSet<String> = live.iter().map(|p| p.name_any()).collect();
        memory.empty_since.retain(|shard, _| names.contains(shard));
        views
    };
    let mut labels = pool.spec.template.labels.clone();
    labels.insert(crate::shard_pods::POOL_LABEL.to_owned(), name.to_owned());
    let general = pool.spec.template.labels.is_empty();
    let demand = Demand {
        pending_seats: ctx
            .unplaced
            .seats_for(&labels, general, policy.seats_per_shard),
        // Cascades grow general-purpose pools: those whose shards carry no extra labels.
        shards_short: if general {
            cascade_shortfall(&ctx.store, &ctx.cascade)
        } else {
            0
        },
    };
    Ok(PoolSnapshot {
        pods,
        records,
        live,
        taken_slots,
        views,
        demand,
        general,
    })
}

/// One pass: snapshot, decide (pure: [`decide`]), act, status.
async fn scale<S>(
    pool: &ShardPool,
    namespace: &str,
    name: &str,
    pools: &Api<ShardPool>,
    ctx: &PoolContext<S>,
) -> Result<Action, Error>
where
    S: LiveView + Send + Sync + 'static,
{
    let now = unix_now();
    let policy = policy(pool);
    let snapshot = snapshot(pool, namespace, name, ctx, now).await?;
    let decision = decide(&policy, &snapshot.views, &snapshot.demand, now);
    let mut notes = Vec::new();
    let oversized = ctx.unplaced.oversized(policy.seats_per_shard);
    if !oversized.is_empty() && snapshot.general {
        notes.push(format!(
            "rooms larger than a shard ({} seats) wait for none: {}",
            policy.seats_per_shard,
            oversized.join(", ")
        ));
    }
    act(
        pool, namespace, name, ctx, &snapshot, &decision, now, &mut notes,
    )
    .await?;
    let status = pool_status(pool, &snapshot.views, &decision, &notes);
    patch_status(pools, name, &status)
        .await
        .map_err(at(PoolStep::Status))?;
    Ok(Action::requeue(ctx.period))
}

/// Carries out a decision: deletes, drains, starts, then keeps pods' annotations, labels
/// and the disruption budget true. Notes for the status are added to `notes`.
#[allow(clippy::too_many_arguments)]
async fn act<S>(
    pool: &ShardPool,
    namespace: &str,
    name: &str,
    ctx: &PoolContext<S>,
    snapshot: &PoolSnapshot,
    decision: &Decision,
    now: u64,
    notes: &mut Vec<String>,
) -> Result<(), Error>
where
    S: LiveView + Send + Sync + 'static,
{
    let policy = policy(pool);
    let PoolSnapshot {
        pods,
        records,
        live,
        taken_slots,
        views,
        ..
    } = snapshot;
    let mut removed: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
    for (shard, reason) in &decision.delete {
        // The record trails the shard by a heartbeat: a drained shard is asked itself
        // whether anyone joined since, before it goes.
        if *reason == DeleteReason::Drained
            && let Some(record) = records.get(shard)
            && ShardAdmin::new(&record.admin_url, &ctx.admin_token)
                .load()
                .await
                .is_ok_and(|load| load.participants > 0)
        {
            continue;
        }
        // A drained shard's preStop hook returns at once; one removed for another reason
        // gets a short grace, not a second drain deadline.
        let grace = (*reason != DeleteReason::Drained).then_some(30);
        let deleted = delete_shard(&ctx.client, pods, pool, shard, grace)
            .await
            .map_err(at(PoolStep::DeleteShard))?;
        if deleted {
            let why = match reason {
                DeleteReason::Drained => "drained",
                DeleteReason::DrainDeadline => "at the drain deadline, participants still on",
                DeleteReason::Failed => "failed",
                DeleteReason::NeverRegistered => "never registered",
            };
            removed.entry(why).or_default().push(shard);
        }
    }
    for (why, shards) in removed {
        let kind = if why == "drained" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let note = format!("removed ({why}): {}", shards.join(", "));
        publish(&ctx.recorder, pool, kind, "ShardsRemoved", note).await;
    }
    for shard in &decision.drain {
        drain_shard(ctx, pods, records, shard, now)
            .await
            .map_err(at(PoolStep::DrainShard))?;
    }
    if !decision.drain.is_empty() {
        let note = format!(
            "empty for {}s, draining: {}",
            policy.scale_down_delay,
            decision.drain.join(", ")
        );
        publish(
            &ctx.recorder,
            pool,
            EventType::Normal,
            "ShardsDraining",
            note,
        )
        .await;
    }
    // A shard the operator marked draining that came back without the flag (restarted)
    // is told again.
    for view in views {
        if matches!(view.phase, ShardPhase::Draining { .. })
            && let Some(record) = records.get(&view.name)
            && !record.draining
        {
            let _ = ShardAdmin::new(&record.admin_url, &ctx.admin_token)
                .drain()
                .await;
        }
    }
    let slots = free_slots(taken_slots, policy.max_shards, decision.create);
    let mut started = Vec::new();
    for slot in slots {
        match start_shard(ctx, pods, pool, namespace, slot)
            .await
            .map_err(at(PoolStep::StartShard))?
        {
            Started::Yes(shard) => started.push(shard),
            Started::Waiting(why) => notes.push(why),
        }
    }
    if !started.is_empty() {
        let note = format!("started: {}", started.join(", "));
        publish(
            &ctx.recorder,
            pool,
            EventType::Normal,
            "ShardsStarted",
            note,
        )
        .await;
    }
    let want_ip = pool.spec.template.networking.node_address == tutti_crds::NodeAddress::ExternalIP
        && pool.spec.template.networking.advertise_address.is_none()
        && pool.spec.template.networking.mode != NetworkingMode::LoadBalancer;
    let want_region = pool.spec.template.region.is_none();
    let live: Vec<&Pod> = live.iter().collect();
    publish_node_facts(ctx, pods, &live, want_ip, want_region, notes)
        .await
        .map_err(at(PoolStep::NodeFacts))?;
    let gone: BTreeSet<&str> = decision.delete.iter().map(|(s, _)| s.as_str()).collect();
    let registered: BTreeSet<&str> = records.keys().map(String::as_str).collect();
    mark_occupancy(pods, &live, views, &gone, &registered)
        .await
        .map_err(at(PoolStep::LabelOccupancy))?;
    apply_budget(ctx, namespace, name, pool, views)
        .await
        .map_err(at(PoolStep::DisruptionBudget))?;
    Ok(())
}

async fn delete_shard(
    client: &Client,
    pods: &Api<Pod>,
    pool: &ShardPool,
    shard: &str,
    grace_seconds: Option<u32>,
) -> Result<bool, Error> {
    let params = DeleteParams {
        grace_period_seconds: grace_seconds,
        ..DeleteParams::default()
    };
    let deleted = match pods.delete(shard, &params).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(err) => return Err(err.into()),
    };
    if matches!(
        pool.spec.template.networking.mode,
        NetworkingMode::NodePort | NetworkingMode::LoadBalancer
    ) {
        let services: Api<Service> =
            Api::namespaced(client.clone(), &pool.namespace().unwrap_or_default());
        match services
            .delete(&service_name(shard), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(deleted)
}

async fn drain_shard<S>(
    ctx: &PoolContext<S>,
    pods: &Api<Pod>,
    records: &BTreeMap<String, ShardRecord>,
    shard: &str,
    now: u64,
) -> Result<(), Error> {
    // The shard's own flag is what stops placement and joins; the annotation keeps the
    // deadline. An unreachable shard cannot take anyone either, so its pod is marked
    // anyway and the next pass tells it again.
    if let Some(record) = records.get(shard)
        && let Err(err) = ShardAdmin::new(&record.admin_url, &ctx.admin_token)
            .drain()
            .await
    {
        tracing::warn!(%shard, %err, "shard not told to drain; retried next pass");
    }
    pods.patch(
        shard,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {DRAINING_SINCE: now.to_string()}}})),
    )
    .await?;
    Ok(())
}

enum Started {
    Yes(String),
    Waiting(String),
}

async fn start_shard<S>(
    ctx: &PoolContext<S>,
    pods: &Api<Pod>,
    pool: &ShardPool,
    namespace: &str,
    slot: u32,
) -> Result<Started, Error> {
    let name = shard_name(&pool.name_any(), slot);
    let invalid = |message: String| Error::Retry {
        category: "invalid_object",
        message,
    };
    let (media_port, advertise_port) = slot_ports(pool, slot).map_err(invalid)?;
    let networking = &pool.spec.template.networking;
    let mut exposure = Exposure {
        media_port,
        advertise_ip: networking.advertise_address.clone(),
        advertise_port,
    };
    if matches!(
        networking.mode,
        NetworkingMode::NodePort | NetworkingMode::LoadBalancer
    ) {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
        let service = media_service(pool, &name, &exposure).map_err(invalid)?;
        let service = match services.get_opt(&service_name(&name)).await? {
            // The previous shard's Service, still going (its load balancer is being torn
            // down): advertising its address would send media nowhere.
            Some(existing) if existing.meta().deletion_timestamp.is_some() => {
                return Ok(Started::Waiting(format!(
                    "shard {name} waits for the previous media Service to go"
                )));
            }
            Some(existing) => existing,
            None => services.create(&PostParams::default(), &service).await?,
        };
        if networking.mode == NetworkingMode::LoadBalancer && exposure.advertise_ip.is_none() {
            match resolve(load_balancer_address(&service)).await {
                Some(ip) => exposure.advertise_ip = Some(ip),
                None => {
                    return Ok(Started::Waiting(format!(
                        "shard {name} waits for its load balancer's address"
                    )));
                }
            }
        }
    }
    let pod = shard_pod(pool, &name, slot, &exposure, &ctx.runtime).map_err(invalid)?;
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(Started::Yes(name)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Started::Waiting(format!("shard {name} already exists")))
        }
        Err(err) => Err(err.into()),
    }
}

/// An IP for a load balancer's address; a name that does not resolve yet (new AWS NLBs
/// take minutes) is `None`, tried again on the next pass.
async fn resolve(address: Option<BalancerAddress>) -> Option<String> {
    match address? {
        BalancerAddress::Ip(ip) => Some(ip),
        BalancerAddress::Host(host) => tokio::net::lookup_host((host.as_str(), 0))
            .await
            .ok()?
            .map(|addr| addr.ip())
            .find(|ip| ip.is_ipv4())
            .map(|ip| ip.to_string()),
    }
}

/// What shards learn from their node, through annotations the operator writes once the
/// pod has a node (the downward API offers neither): its ExternalIP, for shards that
/// advertise it, and its region (`topology.kubernetes.io/region`, `-` when it has none),
/// which latency placement and regional seating go by. One read of the node and one
/// patch per pod, once.
async fn publish_node_facts<S>(
    ctx: &PoolContext<S>,
    pods: &Api<Pod>,
    live: &[&Pod],
    want_ip: bool,
    want_region: bool,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    for pod in live {
        let need_ip = want_ip && !pod.annotations().contains_key(ADVERTISE_IP_ANNOTATION);
        let need_region = want_region && !pod.annotations().contains_key(REGION_ANNOTATION);
        if !need_ip && !need_region {
            continue;
        }
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let Some(node) = nodes.get_opt(&node_name).await? else {
            continue;
        };
        let mut annotations = serde_json::Map::new();
        if need_ip {
            match node_external_ip(&node) {
                Some(ip) => {
                    annotations.insert(ADVERTISE_IP_ANNOTATION.into(), json!(ip));
                }
                None => notes.push(format!(
                    "node {node_name} has no ExternalIP for shard {}",
                    pod.name_any()
                )),
            }
        }
        if need_region {
            annotations.insert(REGION_ANNOTATION.into(), json!(node_region(&node)));
        }
        if annotations.is_empty() {
            continue;
        }
        let patch = json!({"metadata": {"annotations": annotations}});
        match pods
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {}
            // Gone since the list: nothing to tell it.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Labels occupied shards (their disruption budget selects them), tells the cluster
/// autoscaler not to evict them, and marks shards seen registered; only pods where
/// something changed are patched.
async fn mark_occupancy(
    pods: &Api<Pod>,
    live: &[&Pod],
    views: &[ShardView],
    gone: &BTreeSet<&str>,
    registered: &BTreeSet<&str>,
) -> Result<(), Error> {
    for (pod, view) in live.iter().zip(views) {
        if gone.contains(view.name.as_str()) {
            continue;
        }
        let labelled = pod.labels().get(OCCUPIED_LABEL).map(String::as_str) == Some("true");
        let newly_registered =
            registered.contains(view.name.as_str()) && !pod.annotations().contains_key(REGISTERED);
        if labelled == view.occupied && !newly_registered {
            continue;
        }
        let (label, evict) = if view.occupied {
            (json!("true"), json!("false"))
        } else {
            (serde_json::Value::Null, serde_json::Value::Null)
        };
        let mut annotations = json!({"cluster-autoscaler.kubernetes.io/safe-to-evict": evict});
        if newly_registered {
            annotations[REGISTERED] = json!("true");
        }
        let patch = json!({"metadata": {
            "labels": {OCCUPIED_LABEL: label},
            "annotations": annotations,
        }});
        match pods
            .patch(&view.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The pool's PodDisruptionBudget: every occupied shard must stay up. Bare pods only
/// allow an integer `minAvailable`, so it is the number of occupied shards, applied when
/// it changes.
async fn apply_budget<S>(
    ctx: &PoolContext<S>,
    namespace: &str,
    name: &str,
    pool: &ShardPool,
    views: &[ShardView],
) -> Result<(), Error> {
    let occupied = views.iter().filter(|v| v.occupied).count() as u32;
    let key = format!("{namespace}/{name}");
    let known = ctx
        .memory
        .lock()
        .ok()
        .and_then(|m| m.budgets.get(&key).copied());
    if known == Some(occupied) {
        return Ok(());
    }
    let mut selector = pool_selector(name);
    selector.insert(OCCUPIED_LABEL.to_owned(), "true".to_owned());
    let budget = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": format!("{name}-occupied-shards"),
            "labels": pool_selector(name),
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": {
            "minAvailable": occupied,
            "selector": {"matchLabels": selector},
        },
    });
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    budgets
        .patch(
            &format!("{name}-occupied-shards"),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(budget),
        )
        .await?;
    if let Ok(mut memory) = ctx.memory.lock() {
        memory.budgets.insert(key, occupied);
    }
    Ok(())
}

/// The status a pass writes.
pub fn pool_status(
    pool: &ShardPool,
    views: &[ShardView],
    decision: &Decision,
    notes: &[String],
) -> ShardPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    let per_shard = pool.spec.capacity.participants;
    let ready: Vec<&ShardView> = views
        .iter()
        .filter(|v| v.phase == ShardPhase::Ready)
        .collect();
    let draining = views
        .iter()
        .filter(|v| matches!(v.phase, ShardPhase::Draining { .. }))
        .count() as u32;
    let starting = views
        .iter()
        .filter(|v| matches!(v.phase, ShardPhase::Starting { .. }))
        .count();
    let capacity = (ready.len() as u32).saturating_mul(per_shard);
    let used: u32 = ready.iter().map(|v| v.used_seats.min(per_shard)).sum();
    let participants = views
        .iter()
        .map(|v| v.used_seats)
        .fold(0u32, u32::saturating_add);
    let load = (capacity > 0).then(|| format!("{}%", u64::from(used) * 100 / u64::from(capacity)));
    let enough = ready.len() as u32 >= pool.spec.min_shards;
    let ready_condition = Wanted {
        kind: "Ready",
        status: enough,
        reason: if enough {
            "MinimumReady"
        } else {
            "ShardsStarting"
        },
        message: format!(
            "{} ready, {starting} starting, {draining} draining (minimum {})",
            ready.len(),
            pool.spec.min_shards
        ),
    };
    let (scaling, reason) = if decision.create > 0 {
        (true, "ScalingUp")
    } else if !decision.drain.is_empty() || !decision.delete.is_empty() || draining > 0 {
        (true, "ScalingDown")
    } else {
        (false, "Steady")
    };
    let mut message = format!(
        "{} free seats, {} wanted; {} to start, {} to drain, {} to remove",
        decision.free_seats,
        decision.wanted_seats,
        decision.create,
        decision.drain.len(),
        decision.delete.len()
    );
    for note in notes {
        message.push_str("; ");
        message.push_str(note);
    }
    let scaling_condition = Wanted {
        kind: "Scaling",
        status: scaling,
        reason,
        message,
    };
    ShardPoolStatus {
        ready: ready.len() as u32,
        draining,
        participants,
        capacity,
        load,
        conditions: merge(
            &previous.conditions,
            &[ready_condition, scaling_condition],
            &Time(Timestamp::now()),
            pool.meta().generation,
        ),
        observed_generation: pool.meta().generation,
    }
}

fn invalid_status(pool: &ShardPool, message: &str) -> ShardPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    ShardPoolStatus {
        conditions: merge(
            &previous.conditions,
            &[Wanted {
                kind: "Ready",
                status: false,
                reason: "InvalidSpec",
                message: message.to_owned(),
            }],
            &Time(Timestamp::now()),
            pool.meta().generation,
        ),
        observed_generation: pool.meta().generation,
        ..previous
    }
}

async fn patch_status(
    pools: &Api<ShardPool>,
    name: &str,
    status: &ShardPoolStatus,
) -> Result<(), Error> {
    pools
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "tutti.dev/v1alpha1",
                "kind": "ShardPool",
                "status": status,
            })),
        )
        .await?;
    Ok(())
}

async fn publish(
    recorder: &Recorder,
    pool: &ShardPool,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(%err, %reason, "event not recorded");
    }
}

/// Retries a failed pool after a short delay (the next pass redoes everything anyway).
pub fn pool_error_policy<S>(
    pool: Arc<ShardPool>,
    error: &Error,
    ctx: Arc<PoolContext<S>>,
) -> Action {
    ctx.metrics.failed(error.category());
    tracing::warn!(pool = %pool.name_any(), %error, "shard pool reconcile failed");
    Action::requeue(ctx.period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_store::{BroadcastRecord, LiveWriter, MemoryStore};

    #[tokio::test]
    async fn a_concert_bigger_than_the_fleet_asks_for_its_missing_shards() {
        let store = MemoryStore::new();
        for id in ["a", "b", "c"] {
            let record = ShardRecord::new(id, "http://127.0.0.1:1", 500);
            store
                .heartbeat(record, Duration::from_secs(60))
                .await
                .expect("heartbeat");
        }
        let params = CascadeParams::default();
        assert_eq!(cascade_shortfall(&store, &params), 0, "no broadcast");
        // 2,000 viewers at 500 per edge with 20 % headroom: 5 edges and the origin on 3
        // shards, so 3 more.
        store
            .put_broadcast(BroadcastRecord {
                name: "concert".into(),
                stage: "concert".into(),
                expected_audience: 2000,
                max_viewers_per_shard: 500,
                layers: 3,
                owner: None,
                hls: false,
                max_webrtc_viewers: None,
            })
            .await
            .expect("broadcast");
        assert_eq!(cascade_shortfall(&store, &params), 3);
    }
}
