//! etcd under a steady cluster: 200 rooms of 2 participants spread over 4 shards, routes
//! and room records held, every shard heartbeating at 1 Hz for 60 s (`TUTTI_STEADY_SECS`)
//! while participants come and go, the operator compacting the history every 10 s, a
//! gateway following it all. The keys and the revision history must stay bounded; the
//! test prints the write rate.
//!
//! The participants are the load the shards report (what etcd sees of them), not WebRTC
//! peers: this measures the live state, not media.

use anyhow::{Result, ensure};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tutti_store::{EtcdConfig, EtcdStore, LiveView, LiveWriter, RoomRecord, ShardRecord};
use tutti_tests::etcd::Etcd;

const SHARDS: usize = 4;
const ROOMS: usize = 200;
/// Small enough that a minute's writes compact away the setup's revisions.
const KEEP_REVISIONS: i64 = 100;

async fn connect(etcd: &Etcd) -> Result<EtcdStore> {
    let config = EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?;
    Ok(EtcdStore::connect(&config, Duration::from_secs(10)).await?)
}

fn record(id: &str, participants: u32) -> ShardRecord {
    let mut record = ShardRecord::new(id, &format!("http://{id}:7880"), 500);
    record.load.participants = participants;
    record.load.pipelines = (ROOMS / SHARDS) as u32;
    record
}

/// `etcdctl endpoint status`: (revision, db size in bytes).
async fn status(etcd: &Etcd) -> Result<(i64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&etcd.etcdctl(&["endpoint", "status", "-w", "json"]).await?)?;
    let status = &json[0]["Status"];
    Ok((
        status["header"]["revision"].as_i64().unwrap_or(0),
        status["dbSize"].as_u64().unwrap_or(0),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_history_stay_bounded_under_steady_heartbeats() -> Result<()> {
    let seconds: u64 = std::env::var("TUTTI_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let etcd = Etcd::start().await?;
    let operator = connect(&etcd).await?;
    let gateway = connect(&etcd).await?;

    // The operator's steady state: every room recorded and routed.
    for room in 0..ROOMS {
        let name = format!("room-{room:03}");
        operator.put_room(RoomRecord::with_defaults(&name)).await?;
        operator
            .put_route(&name, &format!("shard-{}", room % SHARDS), 0)
            .await?;
    }
    let (start_revision, start_db) = status(&etcd).await?;

    let running = Arc::new(AtomicBool::new(true));
    let mut shard_tasks = Vec::new();
    for shard in 0..SHARDS {
        let store = connect(&etcd).await?;
        let running = running.clone();
        shard_tasks.push(tokio::spawn(async move {
            let id = format!("shard-{shard}");
            // 50 rooms of 2 on this shard; every few seconds someone leaves or comes back.
            let mut participants: u32 = (ROOMS / SHARDS * 2) as u32;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut second = 0u64;
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                second += 1;
                if second % 5 == shard as u64 % 5 {
                    participants = if participants.is_multiple_of(2) {
                        participants - 1
                    } else {
                        participants + 1
                    };
                }
                let mut beat = record(&id, participants);
                beat.load.egress_bps = 2_000_000 + second * 1000;
                beat.load.cpu_cores = 0.2 + (second % 7) as f64 / 100.0;
                if let Err(err) = store.heartbeat(beat, Duration::from_secs(5)).await {
                    eprintln!("{id}: heartbeat failed: {err}");
                }
            }
            store.writes()
        }));
    }
    let started = Instant::now();
    let mut compactions = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds))).await;
        if operator.compact(KEEP_REVISIONS).await?.is_some() {
            compactions += 1;
        }
        ensure!(gateway.synced(), "the gateway's copy follows etcd");
    }
    running.store(false, Ordering::Relaxed);
    let mut shard_writes = 0;
    for task in shard_tasks {
        shard_writes += task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (end_revision, end_db) = status(&etcd).await?;

    // Keys: exactly the shards, routes and rooms; nothing accumulates.
    let keys = etcd
        .etcdctl(&["get", "/tutti/", "--prefix", "--keys-only"])
        .await?;
    let count = keys.lines().filter(|l| !l.trim().is_empty()).count();
    ensure!(count == SHARDS + 2 * ROOMS, "{count} keys");
    // History: old revisions are compacted away, so what etcd keeps is bounded by the
    // retention plus what one compaction period writes.
    ensure!(compactions > 0, "the history was compacted");
    let first = etcd
        .etcdctl(&["get", "/tutti/rooms/room-000", "--rev=2"])
        .await;
    ensure!(
        first
            .as_ref()
            .is_err_and(|e| e.to_string().contains("compacted")),
        "the setup's revisions are compacted away: {first:?}"
    );
    ensure!(
        gateway.shards().len() == SHARDS && gateway.routes().len() == ROOMS,
        "the gateway's copy holds the cluster"
    );
    let per_second = shard_writes as f64 / elapsed;
    println!(
        "steady state: {ROOMS} rooms x 2 participants on {SHARDS} shards, 1 Hz heartbeats for {elapsed:.0} s: \
         {shard_writes} heartbeat writes = {per_second:.2} writes/s ({:.3} per shard per second; \
         the other beats only renew leases, which make no revision), \
         revisions {start_revision} -> {end_revision}, {compactions} compactions, {count} keys, \
         db {start_db} -> {end_db} bytes, gateway resyncs {}",
        per_second / SHARDS as f64,
        gateway.resyncs()
    );
    ensure!(
        per_second <= SHARDS as f64,
        "at most one write per shard per second"
    );
    Ok(())
}
