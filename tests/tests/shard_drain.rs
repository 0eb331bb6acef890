//! How a shard leaves a cluster gracefully: readiness follows its record in a real etcd
//! (Kubernetes counts a shard ready exactly when gateways and the operator can see it),
//! and the preStop drain refuses newcomers and returns only when the last participant
//! has left.

use anyhow::{Context, Result, ensure};
use hyper::Method;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_sfu::drain::{self, DrainArgs};
use tutti_sfu::heartbeat::{self, HeartbeatConfig, Registration};
use tutti_sfu::shard::api::PipelineSpec;
use tutti_store::{EtcdConfig, EtcdStore, LiveView};
use tutti_tests::etcd::Etcd;
use tutti_tests::eventually::eventually;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(20);

async fn readyz(shard: &TestShard) -> Result<(u16, String)> {
    let (status, body) = shard
        .admin
        .request(Method::GET, "/readyz", None, None)
        .await?;
    Ok((status.as_u16(), body))
}

fn listener(room: &str, id: &str) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, id);
    config.audio = false;
    config.video = false;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_shards_record_in_a_real_etcd() -> Result<()> {
    tutti_tests::init_logs();
    let mut etcd = Etcd::start().await?;
    let config = EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?;
    let store = EtcdStore::connect(&config, Duration::from_secs(10)).await?;
    let ttl = Duration::from_secs(2);
    let registration = Registration::new(ttl);
    let shard = TestShard::start_registered(registration.clone()).await?;

    // Serving HTTP, media thread up, but not in the live state yet: not ready.
    let (status, body) = readyz(&shard).await?;
    ensure!(status == 503, "ready before registering: {status} {body}");
    ensure!(body.contains("not registered"), "{body}");

    let stop = CancellationToken::new();
    tokio::spawn(heartbeat::run(
        HeartbeatConfig {
            id: "drain-test".into(),
            http_base: format!("http://{}", shard.shard.http_addr),
            region: None,
            probe: None,
            region_file: None,
            labels: Default::default(),
            capacity: 100,
            interval: Duration::from_millis(200),
            ttl,
        },
        shard.shard.handle.clone(),
        store.clone(),
        registration,
        stop.clone(),
    ));
    eventually(WAIT, "ready once registered", || async {
        Ok(readyz(&shard).await?.0 == 200)
    })
    .await?;
    ensure!(
        store.shard("drain-test").is_some(),
        "ready, and the record is in etcd"
    );

    // etcd goes away: the record cannot be renewed, so the shard stops being ready.
    etcd.kill().await;
    eventually(WAIT, "not ready without etcd", || async {
        Ok(readyz(&shard).await?.0 == 503)
    })
    .await?;
    etcd.resume().await?;
    eventually(WAIT, "ready again once etcd is back", || async {
        Ok(readyz(&shard).await?.0 == 200)
    })
    .await?;
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prestop_drain_refuses_newcomers_and_waits_for_the_last_participant() -> Result<()> {
    tutti_tests::init_logs();
    let shard = TestShard::start().await?;
    shard
        .admin
        .put_pipeline("lesson", &PipelineSpec::default())
        .await?;
    let url = shard.signal_url();
    let student = Participant::join(&url, SIGNAL_TOKEN, listener("lesson", "student")).await?;
    eventually(WAIT, "the student is seated", || async {
        Ok(shard.admin.load().await?.participants == 1)
    })
    .await?;

    let args = DrainArgs {
        http: shard.shard.http_addr,
        admin_token: ADMIN_TOKEN.into(),
        wait: true,
        timeout: 120,
    };
    let drain = tokio::spawn(async move { drain::run(&args).await });
    eventually(WAIT, "the shard drains", || async {
        Ok(shard.admin.load().await?.draining)
    })
    .await?;
    let (status, body) = readyz(&shard).await?;
    ensure!(
        status == 503 && body.contains("draining"),
        "{status} {body}"
    );
    let late = Participant::join(&url, SIGNAL_TOKEN, listener("lesson", "latecomer")).await;
    ensure!(late.is_err(), "a draining shard takes no one new");
    ensure!(
        !drain.is_finished(),
        "the drain returned with a participant still on the shard"
    );

    student.leave().await;
    let left = tokio::time::timeout(WAIT, drain)
        .await
        .context("the drain did not return after the last participant left")??
        .map_err(anyhow::Error::msg)?;
    ensure!(left == 0, "{left} participants left");
    Ok(())
}
