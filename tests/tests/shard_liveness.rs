//! A shard whose media thread hangs fails its liveness probe and is restarted. No kubelet
//! runs here: the test plays its part with the probe the operator writes into every shard
//! pod (path, period, timeout, failure threshold), against a real shard process whose
//! media thread is hung through the test-only `fault-injection` feature.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tutti_crds::{ShardPool, ShardPoolSpec};
use tutti_operator::shard_pods::{Exposure, ShardRuntime, shard_name, shard_pod, slot_ports};
use tutti_tests::gateway::http_get;
use tutti_tests::shard::{ADMIN_TOKEN, ChildShard};

/// The liveness probe of a shard pod as the operator writes it.
struct Probe {
    path: String,
    period: Duration,
    timeout: Duration,
    failures: u32,
}

fn operator_probe() -> Result<Probe> {
    let spec: ShardPoolSpec = serde_json::from_value(json!({
        "minShards": 1, "maxShards": 1,
        "template": {"image": "tutti-sfu:test", "networking": {"mode": "HostPort", "port": 7882}},
    }))?;
    let mut pool = ShardPool::new("main", spec);
    pool.metadata.namespace = Some("media".into());
    pool.metadata.uid = Some("uid-1".into());
    let (media_port, advertise_port) = slot_ports(&pool, 0).map_err(anyhow::Error::msg)?;
    let exposure = Exposure {
        media_port,
        advertise_ip: None,
        advertise_port,
    };
    let runtime = ShardRuntime {
        store: "etcd://tutti-etcd:2379".into(),
        token_secret: "tutti-tokens".into(),
        etcd_secret: None,
        etcd_ca_secret: None,
        service_account: None,
    };
    let pod = shard_pod(&pool, &shard_name("main", 0), 0, &exposure, &runtime)
        .map_err(anyhow::Error::msg)?;
    let pod = serde_json::to_value(pod)?;
    let probe = &pod["spec"]["containers"][0]["livenessProbe"];
    let seconds = |field: &str| -> Result<u64> {
        probe[field]
            .as_u64()
            .with_context(|| format!("livenessProbe.{field}"))
    };
    Ok(Probe {
        path: probe["httpGet"]["path"]
            .as_str()
            .context("livenessProbe.httpGet.path")?
            .to_owned(),
        period: Duration::from_secs(seconds("periodSeconds")?),
        timeout: Duration::from_secs(seconds("timeoutSeconds")?),
        failures: u32::try_from(seconds("failureThreshold")?)?,
    })
}

async fn spawn_shard() -> Result<ChildShard> {
    ChildShard::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_tutti-bench")),
        &["serve-shard"],
        None,
    )
    .await
}

/// One probe, as the kubelet makes it: success is a 2xx or 3xx within the timeout.
async fn probe_once(shard: &ChildShard, probe: &Probe) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, http_get(shard.http, &probe.path)).await {
        Ok(Ok((status, _))) if (200..400).contains(&status) => Ok(()),
        Ok(Ok((status, body))) => Err(format!("{status} {}", body.trim())),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
    }
}

/// The shard passes the probe and takes a pipeline.
async fn serving(shard: &ChildShard, probe: &Probe) -> Result<()> {
    probe_once(shard, probe).await.map_err(anyhow::Error::msg)?;
    shard
        .admin
        .put_pipeline("lesson", &Default::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_media_thread_hangs_is_restarted_by_its_liveness_probe() -> Result<()> {
    let probe = operator_probe()?;
    let shard = spawn_shard().await?;
    serving(&shard, &probe)
        .await
        .context("a fresh shard is alive")?;

    // Hang the media thread; HTTP keeps being served by the other threads.
    let (status, _) = tutti_tests::gateway::http_post_with(
        shard.http,
        "/v1/fault/stall-media",
        Some(ADMIN_TOKEN),
    )
    .await?;
    ensure!(status == 202, "the fault was injected: {status}");
    let hung = Instant::now();
    let (metrics_status, _) = http_get(shard.http, "/metrics").await?;

    // The kubelet's loop: a probe every period; after `failures` failures in a row, a
    // restart.
    let mut failures = Vec::new();
    let mut ticker = tokio::time::interval(probe.period);
    while (failures.len() as u32) < probe.failures {
        ticker.tick().await;
        match probe_once(&shard, &probe).await {
            Ok(()) => failures.clear(),
            Err(why) => failures.push(why),
        }
        ensure!(
            hung.elapsed() < probe.period * (probe.failures + 3),
            "the probe never failed {} times in a row: {failures:?}",
            probe.failures
        );
    }
    let detected = hung.elapsed();
    shard.stop().await;
    let restarted = spawn_shard().await?;
    serving(&restarted, &probe)
        .await
        .context("the restarted shard is alive")?;
    let pipelines: Value = serde_json::to_value(restarted.admin.pipelines().await?)?;
    println!(
        "liveness: media thread hung; HTTP still answered (/metrics {metrics_status}); the probe ({} every {:?}, timeout {:?}) failed {} times in a row ({failures:?}); restart after {:.1} s; the new shard took a pipeline: {}",
        probe.path,
        probe.period,
        probe.timeout,
        failures.len(),
        detected.as_secs_f64(),
        pipelines[0]["name"]
    );
    ensure!(metrics_status == 200);
    restarted.stop().await;
    Ok(())
}
