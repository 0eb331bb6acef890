//! The shard's heartbeat: its record in the live state, refreshed while it runs.
//!
//! Shards write only their own record. It carries the load placement looks at and the
//! draining flag; it is bound to a time-to-live, so a shard that dies without a word
//! disappears from the live state by itself once its last heartbeat expires.

use crate::shard::api::{CoreHandle, ShardLoad};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tutti_store::{LiveWriter, ShardLoadSummary, ShardRecord};

/// How a shard describes itself in the live state.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The shard's id.
    pub id: String,
    /// The base URL of its HTTP server as gateways and the operator reach it (the admin
    /// API there, the signaling WebSocket at `/v1/signal`).
    pub http_base: String,
    /// Region or zone label.
    pub region: Option<String>,
    /// A file the region is read from at each heartbeat when `region` is not given.
    pub region_file: Option<std::path::PathBuf>,
    /// The advertised media address (`ip:port`), which answers round-trip probes.
    pub probe: Option<String>,
    /// Labels rooms select shards by.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Participants it accepts at most.
    pub capacity: u32,
    /// Time between heartbeats.
    pub interval: Duration,
    /// How long a record lives without a refresh (a few intervals).
    pub ttl: Duration,
}

/// Whether the shard's record is in the live state now: the readiness probe answers
/// "ready" only then, so Kubernetes counts a shard ready exactly when gateways and the
/// operator can see it.
#[derive(Debug, Clone)]
pub struct Registration {
    last_written: Arc<Mutex<Option<Instant>>>,
    ttl: Duration,
}

impl Registration {
    /// Not registered yet; a write counts for `ttl` (the record's time-to-live).
    pub fn new(ttl: Duration) -> Self {
        Self {
            last_written: Arc::new(Mutex::new(None)),
            ttl,
        }
    }

    fn written(&self) {
        if let Ok(mut last) = self.last_written.lock() {
            *last = Some(Instant::now());
        }
    }

    fn withdrawn(&self) {
        if let Ok(mut last) = self.last_written.lock() {
            *last = None;
        }
    }

    /// Whether the last heartbeat write is younger than the record's time-to-live.
    pub fn is_current(&self) -> bool {
        self.last_written
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|t| t.elapsed() < self.ttl)
    }
}

/// The region a region file names: its trimmed content, when it is a region name (`-`,
/// empty, missing or malformed: none).
pub fn region_from_file(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let region = text.trim();
    tutti_store::valid_region(region).then(|| region.to_owned())
}

/// The record for a load report.
pub fn record(config: &HeartbeatConfig, load: &ShardLoad) -> ShardRecord {
    let mut record = ShardRecord::new(&config.id, &config.http_base, config.capacity);
    record.region = config
        .region
        .clone()
        .or_else(|| config.region_file.as_deref().and_then(region_from_file));
    record.probe = config.probe.clone();
    record.labels = config.labels.clone();
    record.draining = load.draining;
    record.load = ShardLoadSummary {
        pipelines: load.pipelines,
        participants: load.participants,
        forwarded_streams: load.forwarded_streams,
        egress_bps: load.egress_bps,
        cpu_cores: load.cpu_cores,
    };
    record
}

/// Publishes the shard's record every interval until `stop`, then removes it; every
/// write that lands renews `registration`.
pub async fn run<W: LiveWriter>(
    config: HeartbeatConfig,
    core: CoreHandle,
    store: W,
    registration: Registration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(load) = core.load().await else {
            // The media thread is gone: stop refreshing, and let the record expire.
            break;
        };
        match store.heartbeat(record(&config, &load), config.ttl).await {
            Ok(()) => registration.written(),
            Err(err) => tracing::warn!(shard = %config.id, %err, "heartbeat not written"),
        }
    }
    registration.withdrawn();
    if let Err(err) = store.remove_shard(&config.id).await {
        tracing::warn!(shard = %config.id, %err, "shard record not removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_file_names_a_region_or_none() {
        let dir = std::env::temp_dir().join(format!("tutti-region-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("region");
        for (content, region) in [
            ("eu-west-1\n", Some("eu-west-1")),
            ("-", None),
            ("", None),
            ("Eu West", None),
        ] {
            std::fs::write(&file, content).unwrap();
            assert_eq!(region_from_file(&file).as_deref(), region, "{content:?}");
        }
        assert_eq!(region_from_file(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
