//! The ShardPool reconciler against kube's mock API: the pods it creates (names, ports,
//! owner), when it drains a shard (through the shard's own admin API), and that a
//! draining shard is deleted only once nobody is left on it.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::{ApiServer, condition, finish};
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tutti_crds::ShardPool;
use tutti_operator::metrics::Metrics;
use tutti_operator::shard_pods::{DRAINING_SINCE, OCCUPIED_LABEL, REGISTERED, ShardRuntime};
use tutti_operator::shardpool::{PoolContext, reconcile_pool};
use tutti_shard_api::admin::ShardLoad;
use tutti_store::{LiveWriter, MemoryStore, ShardRecord};

const TOKEN: &str = "admin-token-for-mock-tests-0123";
const PODS: &str = "/api/v1/namespaces/media/pods";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/media/events";
const BUDGET: &str = "/apis/policy/v1/namespaces/media/poddisruptionbudgets/main-occupied-shards";
const STATUS: &str = "/apis/tutti.dev/v1alpha1/namespaces/media/shardpools/main/status";

fn context(store: MemoryStore) -> (Arc<PoolContext<MemoryStore>>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let context = PoolContext {
        client: client.clone(),
        store,
        admin_token: TOKEN.into(),
        runtime: ShardRuntime {
            store: "etcd://tutti-etcd:2379".into(),
            ..ShardRuntime::default()
        },
        unplaced: Default::default(),
        cascade: Default::default(),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "tutti-operator".into(),
                instance: Some("test".into()),
            },
        ),
        metrics: Arc::new(Metrics::new()),
        period: Duration::from_secs(5),
        memory: Default::default(),
    };
    (Arc::new(context), ApiServer(handle))
}

fn pool(spec: Value) -> ShardPool {
    serde_json::from_value(json!({
        "apiVersion": "tutti.dev/v1alpha1",
        "kind": "ShardPool",
        "metadata": {"name": "main", "namespace": "media", "uid": "uid-pool", "generation": 1},
        "spec": spec,
    }))
    .expect("pool")
}

fn pod_list(pods: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
        "items": pods})
}

/// A shard pod as the API server lists it: running, with its pool's labels.
/// (The operator has seen it registered before, unless the test says otherwise.)
fn pod(name: &str, slot: u32, labels: Value, annotations: Value) -> Value {
    let mut all = json!({"app.kubernetes.io/name": "tutti-sfu", "tutti.dev/pool": "main",
        "tutti.dev/shard": name, "tutti.dev/slot": slot.to_string()});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    let mut annotations = annotations;
    if let Some(map) = annotations.as_object_mut() {
        map.entry(REGISTERED).or_insert(json!("true"));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "media", "labels": all, "annotations": annotations},
        "spec": {"containers": [{"name": "sfu", "image": "tutti-sfu:test"}]},
        "status": {"phase": "Running"}})
}

/// A shard admin API that counts drain requests and reports its participants.
#[derive(Clone, Default)]
struct FakeShard {
    drains: Arc<Mutex<u32>>,
    participants: Arc<Mutex<u32>>,
}

impl FakeShard {
    async fn serve(self) -> String {
        let app = Router::new()
            .route(
                "/v1/drain",
                post(|State(shard): State<FakeShard>| async move {
                    *shard.drains.lock().unwrap() += 1;
                    let load = ShardLoad {
                        draining: true,
                        ..ShardLoad::default()
                    };
                    axum::Json(load)
                }),
            )
            .route(
                "/v1/load",
                axum::routing::get(|State(shard): State<FakeShard>| async move {
                    let load = ShardLoad {
                        participants: *shard.participants.lock().unwrap(),
                        draining: true,
                        ..ShardLoad::default()
                    };
                    axum::Json(load)
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
}

async fn heartbeat(store: &MemoryStore, id: &str, url: &str, participants: u32, draining: bool) {
    let mut record = ShardRecord::new(id, url, 100);
    record.load.participants = participants;
    record.draining = draining;
    store
        .heartbeat(record, Duration::from_secs(60))
        .await
        .expect("heartbeat");
}

/// Answers the status patch with the pool carrying that status; returns the status.
async fn answer_status(api: &mut ApiServer, pool: &ShardPool) -> Value {
    let (body, respond) = api.expect("PATCH", STATUS).await;
    let mut object = serde_json::to_value(pool).expect("pool");
    object["status"] = body["status"].clone();
    respond.send_response(
        Response::builder()
            .body(Body::from(object.to_string().into_bytes()))
            .expect("response"),
    );
    body["status"].clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn scaling_up_creates_host_port_pods_each_on_its_own_port() {
    let (ctx, mut api) = context(MemoryStore::new());
    let main = pool(json!({"minShards": 2, "maxShards": 5, "buffer": 50,
        "capacity": {"participants": 100},
        "template": {"image": "tutti-sfu:test", "networking": {"mode": "HostPort", "port": 40000}}}));
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    api.answer("GET", PODS, pod_list(&[])).await;
    for slot in 0..2 {
        let created = api.echo("POST", PODS).await;
        let name = format!("main-shard-{slot}");
        assert_eq!(created["metadata"]["name"], name);
        assert_eq!(created["metadata"]["ownerReferences"][0]["name"], "main");
        assert_eq!(
            created["metadata"]["labels"]["tutti.dev/slot"],
            slot.to_string()
        );
        let container = &created["spec"]["containers"][0];
        assert_eq!(container["image"], "tutti-sfu:test");
        let ports = &container["ports"];
        assert_eq!(ports[0]["protocol"], "UDP");
        assert_eq!(ports[0]["containerPort"], 40000 + slot);
        assert_eq!(ports[0]["hostPort"], 40000 + slot);
        assert_eq!(ports[1]["protocol"], "TCP");
        assert_eq!(ports[1]["hostPort"], 40000 + slot);
        assert_eq!(
            container["lifecycle"]["preStop"]["exec"]["command"],
            json!(["/usr/local/bin/tutti-sfu", "drain", "--wait"])
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        let env = container["env"].as_array().expect("env");
        let store = env
            .iter()
            .find(|e| e["name"] == "TUTTI_STORE")
            .expect("store");
        assert_eq!(store["value"], "etcd://tutti-etcd:2379");
    }
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "ShardsStarted");
    assert_eq!(event["note"], "started: main-shard-0, main-shard-1");
    let budget = api.echo("PATCH", BUDGET).await;
    assert_eq!(budget["spec"]["minAvailable"], 0);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"][OCCUPIED_LABEL],
        "true"
    );
    let status = answer_status(&mut api, &main).await;
    let scaling = condition(&status, "Scaling");
    assert_eq!(scaling["status"], "True");
    assert_eq!(scaling["reason"], "ScalingUp");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(
        finish(reconcile).await.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );
    api.done().await;
}

#[tokio::test]
async fn a_draining_shard_is_deleted_only_once_it_is_empty() {
    let shard = FakeShard::default();
    let url = shard.clone().serve().await;
    let store = MemoryStore::new();
    heartbeat(&store, "main-shard-0", &url, 3, true).await;
    heartbeat(&store, "main-shard-1", &url, 0, false).await;
    let (ctx, mut api) = context(store.clone());
    let main = Arc::new(pool(json!({"minShards": 1, "maxShards": 5, "buffer": 50,
        "capacity": {"participants": 100},
        "template": {"image": "tutti-sfu:test"}})));
    let draining = json!({DRAINING_SINCE: (unix_now() - 10).to_string()});

    // Three participants are still on the draining shard: it stays, and is protected.
    let reconcile = tokio::spawn(reconcile_pool(main.clone(), ctx.clone()));
    api.answer(
        "GET",
        PODS,
        pod_list(&[
            pod("main-shard-0", 0, json!({}), draining.clone()),
            pod("main-shard-1", 1, json!({}), json!({})),
        ]),
    )
    .await;
    let labelled = api.echo("PATCH", &format!("{PODS}/main-shard-0")).await;
    assert_eq!(labelled["metadata"]["labels"][OCCUPIED_LABEL], "true");
    assert_eq!(
        labelled["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    let budget = api.echo("PATCH", BUDGET).await;
    assert_eq!(budget["spec"]["minAvailable"], 1);
    let status = answer_status(&mut api, &main).await;
    assert_eq!(status["draining"], 1);
    assert_eq!(status["ready"], 1);
    assert_eq!(status["participants"], 3);
    finish(reconcile).await.expect("reconcile");
    api.done().await;

    // The last participant left: now it goes, and its protection with it.
    heartbeat(&store, "main-shard-0", &url, 0, true).await;
    let (ctx, mut api) = context(store.clone());
    let reconcile = tokio::spawn(reconcile_pool(main.clone(), ctx.clone()));
    api.answer(
        "GET",
        PODS,
        pod_list(&[
            pod(
                "main-shard-0",
                0,
                json!({OCCUPIED_LABEL: "true"}),
                draining.clone(),
            ),
            pod("main-shard-1", 1, json!({}), json!({})),
        ]),
    )
    .await;
    api.answer(
        "DELETE",
        &format!("{PODS}/main-shard-0"),
        pod("main-shard-0", 0, json!({}), draining),
    )
    .await;
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "ShardsRemoved");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["note"], "removed (drained): main-shard-0");
    let budget = api.echo("PATCH", BUDGET).await;
    assert_eq!(budget["spec"]["minAvailable"], 0);
    answer_status(&mut api, &main).await;
    finish(reconcile).await.expect("reconcile");
    api.done().await;
    assert_eq!(*shard.drains.lock().unwrap(), 0, "already draining");
}

#[tokio::test]
async fn an_idle_shard_past_the_delay_is_told_to_drain_and_the_minimum_stays() {
    let first = FakeShard::default();
    let second = FakeShard::default();
    let store = MemoryStore::new();
    heartbeat(
        &store,
        "main-shard-0",
        &first.clone().serve().await,
        0,
        false,
    )
    .await;
    heartbeat(
        &store,
        "main-shard-1",
        &second.clone().serve().await,
        0,
        false,
    )
    .await;
    let (ctx, mut api) = context(store);
    let main = pool(json!({"minShards": 1, "maxShards": 5, "buffer": 50,
        "scaleDownDelay": "0s", "capacity": {"participants": 100},
        "template": {"image": "tutti-sfu:test"}}));
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    api.answer(
        "GET",
        PODS,
        pod_list(&[
            pod("main-shard-0", 0, json!({}), json!({})),
            pod("main-shard-1", 1, json!({}), json!({})),
        ]),
    )
    .await;
    let marked = api
        .answer(
            "PATCH",
            &format!("{PODS}/main-shard-0"),
            pod("main-shard-0", 0, json!({}), json!({})),
        )
        .await;
    assert!(
        marked["metadata"]["annotations"][DRAINING_SINCE]
            .as_str()
            .is_some_and(|t| t.parse::<u64>().is_ok())
    );
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["reason"], "ShardsDraining");
    api.echo("PATCH", BUDGET).await;
    let status = answer_status(&mut api, &main).await;
    assert_eq!(condition(&status, "Scaling")["reason"], "ScalingDown");
    finish(reconcile).await.expect("reconcile");
    api.done().await;
    assert_eq!(*first.drains.lock().unwrap(), 1);
    assert_eq!(
        *second.drains.lock().unwrap(),
        0,
        "the minimum of one stays"
    );
}

#[tokio::test]
async fn an_impossible_pool_is_refused_in_its_status_and_nothing_starts() {
    let (ctx, mut api) = context(MemoryStore::new());
    let main = pool(json!({"minShards": 1, "maxShards": 10,
        "template": {"image": "tutti-sfu:test", "networking": {"mode": "NodePort", "port": 7882}}}));
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    let status = answer_status(&mut api, &main).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"].as_str().unwrap_or("").contains("30000"));
    let event = api.echo("POST", EVENTS).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        finish(reconcile).await.expect("reconcile"),
        Action::await_change()
    );
    api.done().await;
}

#[tokio::test]
async fn a_shard_on_a_public_node_is_told_its_nodes_external_ip_and_region() {
    let (ctx, mut api) = context(MemoryStore::new());
    let main = pool(json!({"minShards": 1, "maxShards": 5, "buffer": 50,
        "capacity": {"participants": 100},
        "template": {"image": "tutti-sfu:test",
            "networking": {"mode": "HostPort", "nodeAddress": "ExternalIP"}}}));
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    let mut scheduled = pod("main-shard-0", 0, json!({}), json!({}));
    scheduled["spec"]["nodeName"] = json!("node-a");
    // Just created: never registered yet.
    if let Some(annotations) = scheduled["metadata"]["annotations"].as_object_mut() {
        annotations.remove(REGISTERED);
    }
    api.answer("GET", PODS, pod_list(&[scheduled.clone()]))
        .await;
    api.answer(
        "GET",
        "/api/v1/nodes/node-a",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
                "labels": {"topology.kubernetes.io/region": "me-central-1"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.1.7"},
                {"type": "ExternalIP", "address": "198.51.100.23"}]}}),
    )
    .await;
    let patch = api
        .answer("PATCH", &format!("{PODS}/main-shard-0"), scheduled)
        .await;
    assert_eq!(
        patch["metadata"]["annotations"]["tutti.dev/advertise-ip"],
        "198.51.100.23"
    );
    // One patch tells the shard both: latency placement needs the region.
    assert_eq!(
        patch["metadata"]["annotations"]["tutti.dev/region"],
        "me-central-1"
    );
    api.echo("PATCH", BUDGET).await;
    let status = answer_status(&mut api, &main).await;
    assert_eq!(condition(&status, "Ready")["reason"], "ShardsStarting");
    finish(reconcile).await.expect("reconcile");
    api.done().await;
}

#[tokio::test]
async fn a_drained_shard_someone_joined_since_its_last_heartbeat_stays() {
    let shard = FakeShard::default();
    *shard.participants.lock().unwrap() = 1;
    let url = shard.clone().serve().await;
    let store = MemoryStore::new();
    // The record (a heartbeat old) says empty; the shard itself says one participant.
    heartbeat(&store, "main-shard-0", &url, 0, true).await;
    heartbeat(&store, "main-shard-1", &url, 0, false).await;
    let (ctx, mut api) = context(store);
    let main = pool(json!({"minShards": 1, "maxShards": 5, "buffer": 50,
        "capacity": {"participants": 100}, "template": {"image": "tutti-sfu:test"}}));
    let draining = json!({DRAINING_SINCE: (unix_now() - 10).to_string()});
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    api.answer(
        "GET",
        PODS,
        pod_list(&[
            pod("main-shard-0", 0, json!({}), draining),
            pod("main-shard-1", 1, json!({}), json!({})),
        ]),
    )
    .await;
    // No DELETE: straight to the budget and the status.
    api.echo("PATCH", BUDGET).await;
    let status = answer_status(&mut api, &main).await;
    assert_eq!(status["draining"], 1);
    finish(reconcile).await.expect("reconcile");
    api.done().await;
}

#[tokio::test]
async fn a_failed_step_is_named_in_the_error_and_counted_by_its_category() {
    let (ctx, mut api) = context(MemoryStore::new());
    let main = pool(json!({"minShards": 1, "maxShards": 5, "buffer": 50,
        "capacity": {"participants": 100},
        "template": {"image": "tutti-sfu:test", "networking": {"mode": "HostPort", "port": 40000}}}));
    let reconcile = tokio::spawn(reconcile_pool(Arc::new(main.clone()), ctx.clone()));
    api.answer("GET", PODS, pod_list(&[])).await;
    api.fail("POST", PODS, 500).await;
    let error = finish(reconcile)
        .await
        .expect_err("the pod was not created");
    assert_eq!(error.category(), "pool_start_shard");
    assert!(
        error.to_string().starts_with("starting a shard: "),
        "{error}"
    );
    // The shared policy counts it under that category and retries after a period.
    let action = tutti_operator::shardpool::pool_error_policy(Arc::new(main), &error, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("category=\"pool_start_shard\"} 1"),
        "{metrics}"
    );
    // Nothing after the failed step ran: no status, no budget.
    api.done().await;
}
