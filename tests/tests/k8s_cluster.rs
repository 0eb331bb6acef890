//! The operator against a real Kubernetes cluster. Ignored by default, so that it counts
//! as not run (no API server can be installed on the CI machines); `tests/run-all.sh` runs
//! it when `KUBECONFIG` is set, and it fails when asked to run without one.
//!
//! It applies the generated CRDs, runs the operator in this process against the cluster
//! with a real shard (also in this process, so the operator can reach its admin API),
//! applies the example Room, and checks that `kubectl get rooms` would show it Placed on
//! that shard; then deletes it and checks the pipeline is released; then applies a
//! ShardPool and checks the shard pods the API server accepted. Everything it creates
//! lives in a namespace of its own, removed at the end.
//!
//!     KUBECONFIG=~/.kube/config cargo test -p tutti-tests --test k8s_cluster -- --ignored --nocapture

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::placement::Strategy;
use tutti_crds::{Room, RoomPhase};
use tutti_operator::metrics::Metrics;
use tutti_operator::run::{Settings, run};
use tutti_store::MemoryStore;
use tutti_tests::shard::{ADMIN_TOKEN, TestShard};

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Kubernetes cluster: set KUBECONFIG and pass --ignored"]
async fn a_room_applied_to_a_real_cluster_is_placed_and_released() -> Result<()> {
    ensure!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: this test needs a real Kubernetes cluster"
    );
    let client = Client::try_default()
        .await
        .context("cluster from KUBECONFIG")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in tutti_crds::crds() {
        let name = crd.metadata.name.clone().context("CRD name")?;
        crds.patch(
            &name,
            &PatchParams::apply("tutti-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apply CRD {name}"))?;
        wait_for(
            &format!("CRD {name} to be established"),
            Duration::from_secs(60),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    let namespace = format!("tutti-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))?,
        )
        .await?;

    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let shard = TestShard::start().await?;
    shard.heartbeat_into(
        store.clone(),
        "e2e-shard",
        Duration::from_secs(1),
        Duration::from_secs(5),
        stop.clone(),
    );
    let operator = tokio::spawn(run(
        client.clone(),
        store,
        Settings {
            admin_token: ADMIN_TOKEN.into(),
            strategy: Strategy::Packed,
            gc_period: Duration::from_secs(10),
            gc_grace: Duration::from_secs(30),
            shard_poll: Duration::from_secs(1),
            identity: "tutti-e2e".into(),
            namespace: namespace.clone(),
            controller: Default::default(),
            compact_every: Duration::from_secs(300),
            cascade: Default::default(),
            shards: Default::default(),
            pool_period: Duration::from_secs(5),
        },
        std::sync::Arc::new(Metrics::new()),
        stop.clone(),
    ));

    let example = include_str!("../../crds/examples/ensemble.yaml");
    let mut room: Room = serde_norway::from_str(example)?;
    room.spec.shard_selector.clear();
    room.metadata.namespace = Some(namespace.clone());
    let rooms: Api<Room> = Api::namespaced(client.clone(), &namespace);
    rooms
        .create(&PostParams::default(), &room)
        .await
        .context("create the Room")?;
    let placed = wait_for("the Room to be placed", Duration::from_secs(60), || {
        let rooms = rooms.clone();
        async move {
            let room = rooms.get("ensemble").await?;
            Ok(room
                .status
                .filter(|s| s.phase == RoomPhase::Placed)
                .map(|s| s.shard))
        }
    })
    .await?;
    ensure!(
        placed.as_deref() == Some("e2e-shard"),
        "placed on {placed:?}"
    );
    ensure!(
        shard
            .admin
            .pipelines()
            .await?
            .iter()
            .any(|p| p.name == "ensemble")
    );

    rooms.delete("ensemble", &DeleteParams::default()).await?;
    wait_for("the Room to be gone", Duration::from_secs(60), || {
        let rooms = rooms.clone();
        async move { Ok(rooms.get_opt("ensemble").await?.is_none().then_some(())) }
    })
    .await?;
    ensure!(
        shard.admin.pipelines().await?.is_empty(),
        "pipeline released on deletion"
    );

    // A ShardPool: the API server accepts the shard pods the operator builds, each on its
    // own host port and owned by the pool, and the pool's status says it is scaling up.
    // (The pods start only if the cluster can pull TUTTI_E2E_SFU_IMAGE; what is checked
    // here is what the API server stores.)
    let image = std::env::var("TUTTI_E2E_SFU_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/tutti-dev/tutti-sfu:0.1.0".into());
    let pool: tutti_crds::ShardPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "tutti.dev/v1alpha1", "kind": "ShardPool",
        "metadata": {"name": "e2e", "namespace": namespace},
        "spec": {"minShards": 2, "maxShards": 4, "buffer": 0,
            "template": {"image": image, "networking": {"mode": "HostPort", "port": 41000}}},
    }))?;
    let pools: Api<tutti_crds::ShardPool> = Api::namespaced(client.clone(), &namespace);
    pools.create(&PostParams::default(), &pool).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    let started = wait_for("two shard pods", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels("tutti.dev/pool=e2e"))
                .await?;
            Ok((list.items.len() == 2).then_some(list.items))
        }
    })
    .await?;
    let mut host_ports: Vec<i32> = started
        .iter()
        .filter_map(|pod| {
            let container = pod.spec.as_ref()?.containers.first()?;
            container.ports.as_ref()?.first()?.host_port
        })
        .collect();
    host_ports.sort_unstable();
    ensure!(host_ports == [41000, 41001], "host ports {host_ports:?}");
    ensure!(
        started.iter().all(|pod| pod
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|owners| owners
                .iter()
                .any(|o| o.kind == "ShardPool" && o.name == "e2e")))
    );
    wait_for("the pool's status", Duration::from_secs(60), || {
        let pools = pools.clone();
        async move {
            let pool = pools.get("e2e").await?;
            Ok(pool
                .status
                .filter(|s| s.conditions.iter().any(|c| c.type_ == "Scaling"))
                .map(|_| ()))
        }
    })
    .await?;
    pools.delete("e2e", &DeleteParams::default()).await?;

    stop.cancel();
    let _ = operator.await;
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}
