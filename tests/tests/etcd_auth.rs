//! etcd with authentication on and one identity per component, in a real etcd: each
//! component may write only its own keys, strangers read nothing, and setting it up again
//! (every chart upgrade does) changes nothing but the passwords it is given.

use anyhow::{Result, ensure};
use std::time::Duration;
use tutti_store::etcd_auth::{ComponentPasswords, GATEWAY, OPERATOR, SHARD, bootstrap};
use tutti_store::{
    CascadeRecord, EtcdConfig, EtcdStore, LatencyReport, LiveView, LiveWriter, RoomRecord,
    ShardRecord,
};
use tutti_tests::etcd::Etcd;

const WAIT: Duration = Duration::from_secs(10);
const ROOT: &str = "root-password-0123456789";

fn passwords(gateway: &str) -> ComponentPasswords {
    ComponentPasswords {
        operator: "operator-password-0123456789".into(),
        gateway: gateway.into(),
        shard: "shard-password-0123456789".into(),
    }
}

fn config(etcd: &Etcd, user: Option<(&str, &str)>) -> Result<EtcdConfig> {
    let mut config = EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?;
    config.user = user.map(|(u, p)| (u.to_owned(), p.to_owned()));
    Ok(config)
}

async fn connect(etcd: &Etcd, user: &str, password: &str) -> Result<EtcdStore> {
    let store = EtcdStore::connect(&config(etcd, Some((user, password)))?, WAIT).await?;
    ensure!(store.synced(), "{user} reads the live state");
    Ok(store)
}

fn allowed<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<()> {
    result
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{what} should be allowed: {e}"))
}

fn denied<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<String> {
    match result {
        Ok(_) => anyhow::bail!("{what} should be denied"),
        Err(err) if err.to_string().contains("permission denied") => Ok(err.to_string()),
        Err(err) => anyhow::bail!("{what} failed, but not for permission: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_writes_only_its_own_keys() -> Result<()> {
    let etcd = Etcd::start().await?;
    let gateway_password = "gateway-password-0123456789";
    // On a first install the components start while the setup Job runs: one that comes
    // with its credentials before authentication is on waits for it.
    let early = tokio::spawn({
        let config = config(&etcd, Some((GATEWAY, gateway_password)))?;
        async move { EtcdStore::connect(&config, WAIT).await }
    });
    bootstrap(&config(&etcd, None)?, ROOT, &passwords(gateway_password))
        .await
        .map_err(anyhow::Error::msg)?;

    let operator = connect(&etcd, OPERATOR, "operator-password-0123456789").await?;
    let gateway = early.await??;
    ensure!(gateway.synced(), "the early gateway reads once auth is on");
    let shard = connect(&etcd, SHARD, "shard-password-0123456789").await?;
    let record = ShardRecord::new("s1", "http://10.0.0.5:7880", 500);
    let report = LatencyReport {
        room: "lesson".into(),
        participant: "p1".into(),
        rtt_ms: Default::default(),
    };

    // The shard: its heartbeat, nothing else.
    allowed(
        "a shard's heartbeat",
        shard.heartbeat(record.clone(), WAIT).await,
    )?;
    let shard_route = denied(
        "a shard writing a route",
        shard.put_route("lesson", "s1", 0).await,
    )?;
    denied(
        "a shard writing a room",
        shard.put_room(RoomRecord::with_defaults("lesson")).await,
    )?;
    // The gateway: rooms, broadcasts' rooms file entries and latency reports.
    allowed(
        "a gateway writing a room",
        gateway.put_room(RoomRecord::with_defaults("lesson")).await,
    )?;
    allowed(
        "a gateway writing a latency report",
        gateway.put_latency_report(report.clone()).await,
    )?;
    denied(
        "a gateway writing a route",
        gateway.put_route("lesson", "s1", 0).await,
    )?;
    denied(
        "a gateway writing a shard record",
        gateway
            .heartbeat(ShardRecord::new("s2", "http://10.0.0.6:7880", 500), WAIT)
            .await,
    )?;
    // The operator: everything.
    allowed(
        "the operator placing a room",
        operator.put_route("lesson", "s1", 0).await,
    )?;
    allowed(
        "the operator writing a cascade",
        operator
            .put_cascade(CascadeRecord {
                broadcast: "concert".into(),
                stage: "concert".into(),
                origin: "s1".into(),
                edges: Vec::new(),
            })
            .await,
    )?;
    allowed(
        "the operator clearing a report",
        operator.delete_latency_report("lesson", "p1").await,
    )?;
    // Everyone reads everything: the gateway sees the route the operator wrote.
    let gateway_view = &gateway;
    tutti_tests::eventually::eventually(
        WAIT,
        "the gateway to read the operator's route",
        || async move {
            Ok(gateway_view
                .route("lesson")
                .is_some_and(|r| r.shard == "s1"))
        },
    )
    .await?;

    // Without a user, or with a wrong password, nothing at all.
    let stranger = EtcdStore::connect(&config(&etcd, None)?, Duration::from_secs(2)).await;
    let stranger_reads = match stranger {
        Ok(store) => store.synced(),
        Err(_) => false,
    };
    ensure!(!stranger_reads, "a client without a user reads nothing");
    let wrong = EtcdStore::connect(
        &config(&etcd, Some((GATEWAY, "not-the-password")))?,
        Duration::from_secs(2),
    )
    .await;
    ensure!(
        wrong.as_ref().map_or(true, |s| !s.synced()),
        "a wrong password reads nothing"
    );

    // Set up again, with a new gateway password: the old one stops working.
    bootstrap(
        &config(&etcd, None)?,
        ROOT,
        &passwords("gateway-password-rotated-987"),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let rotated = connect(&etcd, GATEWAY, "gateway-password-rotated-987").await?;
    allowed(
        "the rotated gateway writing a room",
        rotated.put_room(RoomRecord::with_defaults("again")).await,
    )?;
    let old = EtcdStore::connect(
        &config(&etcd, Some((GATEWAY, gateway_password)))?,
        Duration::from_secs(2),
    )
    .await;
    ensure!(
        old.as_ref().map_or(true, |s| !s.synced()),
        "the old gateway password reads nothing"
    );
    println!("etcd auth: a shard writing a route is refused with: {shard_route}");
    Ok(())
}
