//! The live state in etcd, with a local copy kept current by a watch.
//!
//! Reads never touch the network: they answer from the copy. A background task reads the
//! whole prefix, then watches it from the next revision; when the watch ends (etcd went
//! away, or it fell behind a compaction) the copy is marked stale and rebuilt from a fresh
//! full read as soon as etcd answers, reporting the routes that changed meanwhile. While
//! stale, reads still answer from the last known state, which is what keeps established
//! calls going during an etcd outage.
//!
//! Shard records are bound to a lease per shard. A heartbeat renews the lease (no write,
//! no new revision) and rewrites the record only when what placement looks at changed, or
//! every [`RECORD_REFRESH`] for the rest of the load, so a steady cluster costs etcd few
//! revisions.

use crate::snapshot::{Kind, RouteChange, Snapshot};
use crate::{
    BroadcastRecord, CascadeRecord, EtcdConfig, LatencyReport, LiveView, LiveWriter,
    RecordingRecord, RecordingStateRecord, RoomRecord, Route, ShardRecord, StoreError,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How often a heartbeat rewrites a record whose placement-relevant fields did not change.
pub const RECORD_REFRESH: Duration = Duration::from_secs(10);
/// Deadline of one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest value read from etcd; a larger one is ignored.
const MAX_VALUE_BYTES: usize = 64 * 1024;

impl EtcdConfig {
    /// The client options for this configuration (TLS, user), for direct etcd calls.
    pub fn connect_options(&self) -> Result<ConnectOptions, String> {
        self.options().map_err(|e| e.to_string())
    }

    fn options(&self) -> Result<ConnectOptions, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // HTTP/2 pings notice a dead connection within seconds, so a watch on a
            // vanished etcd ends promptly instead of hanging.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let tls_wanted = self.endpoints.iter().any(|e| e.starts_with("https://"))
            || self.ca_file.is_some()
            || self.identity_files.is_some();
        if tls_wanted {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &self.identity_files {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// What the watch task and the store share.
struct Shared {
    copy: RwLock<Snapshot>,
    synced: AtomicBool,
    revision: AtomicI64,
    resyncs: AtomicU64,
    changes: broadcast::Sender<RouteChange>,
    /// Counts changes of room records and latency reports.
    rooms_changed: tokio::sync::watch::Sender<u64>,
}

/// A shard lease this process holds.
struct Leased {
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
    written: ShardRecord,
    written_at: Instant,
}

struct Inner {
    client: Client,
    prefix: String,
    shared: Arc<Shared>,
    leases: tokio::sync::Mutex<HashMap<String, Leased>>,
    writes: AtomicU64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Live state in etcd. Cloning shares the connection and the local copy.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl EtcdStore {
    /// Connects and starts following the prefix. It returns once the copy is first built, or
    /// after `first_sync` with a stale (empty) copy if etcd does not answer yet; the watch
    /// task keeps trying either way.
    pub async fn connect(config: &EtcdConfig, first_sync: Duration) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints".into()));
        }
        let client = connect_client(config).await?;
        let shared = Arc::new(Shared {
            copy: RwLock::new(Snapshot::default()),
            synced: AtomicBool::new(false),
            revision: AtomicI64::new(0),
            resyncs: AtomicU64::new(0),
            changes: broadcast::channel(1024).0,
            rooms_changed: tokio::sync::watch::channel(0).0,
        });
        let watcher = tokio::spawn(follow(
            client.clone(),
            config.prefix.clone(),
            shared.clone(),
        ));
        let store = Self {
            inner: Arc::new(Inner {
                client,
                prefix: config.prefix.clone(),
                shared,
                leases: tokio::sync::Mutex::new(HashMap::new()),
                writes: AtomicU64::new(0),
                watcher,
            }),
        };
        let deadline = Instant::now() + first_sync;
        while !store.synced() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(store)
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}{name}", self.inner.prefix, kind.segment())
    }

    fn client(&self) -> Client {
        self.inner.client.clone()
    }

    fn wrote(&self) {
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes (puts, deletes, transactions) this process made to etcd.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Times the local copy was rebuilt from a full read (first sync included).
    pub fn resyncs(&self) -> u64 {
        self.inner.shared.resyncs.load(Ordering::Relaxed)
    }

    /// The etcd revision the local copy reflects.
    pub fn revision(&self) -> i64 {
        self.inner.shared.revision.load(Ordering::Relaxed)
    }

    async fn compact_history(&self, keep: i64) -> Result<Option<i64>, StoreError> {
        let mut client = self.client();
        let status = client.status().await.map_err(unavailable)?;
        let current = status.header().map_or(0, |h| h.revision());
        let target = current - keep.max(1);
        if target <= 0 {
            return Ok(None);
        }
        match client.compact(target, None).await {
            Ok(_) => Ok(Some(target)),
            // Someone (another replica, or etcd's own auto-compaction) got there first.
            Err(err) if err.to_string().contains("compacted") => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn put(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.client()
            .put(self.key(kind, name), value, None)
            .await
            .map_err(unavailable)?;
        self.wrote();
        Ok(())
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        self.client()
            .delete(self.key(kind, name), None)
            .await
            .map_err(unavailable)?;
        self.wrote();
        Ok(())
    }
}

/// What placement looks at in a record; the rest (bit rate, CPU) may lag by up to
/// [`RECORD_REFRESH`].
fn placement_view(record: &ShardRecord) -> ShardRecord {
    let mut view = record.clone();
    view.load.egress_bps = 0;
    view.load.cpu_cores = 0.0;
    view
}

/// How long a component with credentials waits for etcd's authentication to be turned on
/// (on a first install the chart's setup Job does it while the components start).
const AUTH_SETUP_WAIT: Duration = Duration::from_secs(300);

/// A client for `config`; with a user, waits while etcd has authentication off still.
async fn connect_client(config: &EtcdConfig) -> Result<Client, StoreError> {
    let started = Instant::now();
    loop {
        match Client::connect(&config.endpoints, Some(config.options()?)).await {
            Ok(client) => return Ok(client),
            Err(err)
                if config.user.is_some()
                    && err.to_string().contains("authentication is not enabled")
                    && started.elapsed() < AUTH_SETUP_WAIT =>
            {
                tracing::warn!("etcd has authentication off still; waiting for its setup");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(err) => return Err(unavailable(err)),
        }
    }
}

/// Follows the prefix until the store is dropped, rebuilding after every interruption.
async fn follow(client: Client, prefix: String, shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match sync_and_watch(client.clone(), &prefix, &shared).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(err) => {
                if shared.synced.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%err, "lost etcd; serving the last known live state");
                }
            }
        }
        shared.synced.store(false, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One full read, then a watch from the revision after it, until the watch ends.
async fn sync_and_watch(mut client: Client, prefix: &str, shared: &Shared) -> Result<(), String> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut next = Snapshot::default();
    for kv in response.kvs() {
        if kv.value().len() > MAX_VALUE_BYTES {
            continue;
        }
        if let Some((kind, name)) = kv
            .key_str()
            .ok()
            .and_then(|key| key.strip_prefix(prefix))
            .and_then(Kind::parse)
        {
            next.apply(kind, name, Some(kv.value()));
        }
    }
    let changes = {
        let mut copy = shared.copy.write().unwrap_or_else(|e| e.into_inner());
        let changes = copy.route_changes(&next);
        *copy = next;
        changes
    };
    for change in changes {
        let _ = shared.changes.send(change);
    }
    shared.rooms_changed.send_modify(|n| *n += 1);
    shared.revision.store(revision, Ordering::Relaxed);
    shared.resyncs.fetch_add(1, Ordering::Relaxed);
    shared.synced.store(true, Ordering::Relaxed);
    tracing::info!(revision, "live state synced from etcd");
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(prefix, Some(options))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(response) = stream.message().await.map_err(|e| e.to_string())? else {
            return Err("the watch ended".into());
        };
        if response.canceled() || response.compact_revision() > 0 {
            // Behind a compaction: the events in between are gone; read everything again.
            return Err(format!(
                "watch canceled (compacted to {}): {}",
                response.compact_revision(),
                response.cancel_reason()
            ));
        }
        let mut changes = Vec::new();
        let mut rooms_changed = false;
        {
            let mut copy = shared.copy.write().unwrap_or_else(|e| e.into_inner());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Some((kind, name)) = kv
                    .key_str()
                    .ok()
                    .and_then(|key| key.strip_prefix(prefix))
                    .and_then(Kind::parse)
                else {
                    continue;
                };
                let value = match event.event_type() {
                    EventType::Put if kv.value().len() <= MAX_VALUE_BYTES => Some(kv.value()),
                    _ => None,
                };
                rooms_changed |= matches!(kind, Kind::Room | Kind::Latency);
                changes.extend(copy.apply(kind, name, value));
            }
        }
        if rooms_changed {
            shared.rooms_changed.send_modify(|n| *n += 1);
        }
        if let Some(header) = response.header() {
            shared.revision.store(header.revision(), Ordering::Relaxed);
        }
        for change in changes {
            let _ = shared.changes.send(change);
        }
    }
}

impl LiveView for EtcdStore {
    fn route(&self, room: &str) -> Option<Route> {
        self.read(|s| s.routes.get(room).cloned())
    }

    fn routes(&self) -> Vec<Route> {
        self.read(|s| s.routes.values().cloned().collect())
    }

    fn shard(&self, id: &str) -> Option<ShardRecord> {
        self.read(|s| s.shards.get(id).cloned())
    }

    fn shards(&self) -> Vec<ShardRecord> {
        self.read(|s| s.shards.values().cloned().collect())
    }

    fn room(&self, name: &str) -> Option<RoomRecord> {
        self.read(|s| s.rooms.get(name).cloned())
    }

    fn rooms(&self) -> Vec<RoomRecord> {
        self.read(|s| s.rooms.values().cloned().collect())
    }

    fn broadcast(&self, name: &str) -> Option<BroadcastRecord> {
        self.read(|s| s.broadcasts.get(name).cloned())
    }

    fn broadcasts(&self) -> Vec<BroadcastRecord> {
        self.read(|s| s.broadcasts.values().cloned().collect())
    }

    fn cascade(&self, broadcast: &str) -> Option<CascadeRecord> {
        self.read(|s| s.cascades.get(broadcast).cloned())
    }

    fn cascades(&self) -> Vec<CascadeRecord> {
        self.read(|s| s.cascades.values().cloned().collect())
    }

    fn recording(&self, name: &str) -> Option<RecordingRecord> {
        self.read(|s| s.recordings.get(name).cloned())
    }

    fn recordings(&self) -> Vec<RecordingRecord> {
        self.read(|s| s.recordings.values().cloned().collect())
    }

    fn recording_state(&self, name: &str) -> Option<RecordingStateRecord> {
        self.read(|s| s.recording_states.get(name).cloned())
    }

    fn recording_states(&self) -> Vec<RecordingStateRecord> {
        self.read(|s| s.recording_states.values().cloned().collect())
    }

    fn latency_reports(&self, room: &str) -> Vec<LatencyReport> {
        self.read(|s| s.latency_reports(room))
    }

    fn synced(&self) -> bool {
        self.inner.shared.synced.load(Ordering::Relaxed)
    }

    fn watch_routes(&self) -> broadcast::Receiver<RouteChange> {
        self.inner.shared.changes.subscribe()
    }

    fn watch_rooms(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.rooms_changed.subscribe()
    }
}

impl EtcdStore {
    fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(&self
            .inner
            .shared
            .copy
            .read()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// Renews a held lease; whether it is still alive.
    async fn renew(leased: &mut Leased) -> bool {
        if leased.keeper.keep_alive().await.is_err() {
            return false;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, leased.responses.message()).await {
            Ok(Ok(Some(response))) => response.ttl() > 0,
            _ => false,
        }
    }
}

impl LiveWriter for EtcdStore {
    async fn heartbeat(&self, record: ShardRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key(Kind::Shard, &record.id);
        let mut leases = self.inner.leases.lock().await;
        if let Some(leased) = leases.get_mut(&record.id) {
            if Self::renew(leased).await {
                let stale = leased.written_at.elapsed() >= RECORD_REFRESH;
                if !stale && placement_view(&leased.written) == placement_view(&record) {
                    return Ok(());
                }
                let value = serde_json::to_vec(&record).map_err(unavailable)?;
                let options = PutOptions::new().with_lease(leased.id);
                self.client()
                    .put(key, value, Some(options))
                    .await
                    .map_err(unavailable)?;
                self.wrote();
                leased.written = record;
                leased.written_at = Instant::now();
                return Ok(());
            }
            // Expired (a long outage) or the keep-alive stream broke: start over.
            leases.remove(&record.id);
        }
        let mut client = self.client();
        let seconds = ttl.as_secs().max(2) as i64;
        let grant = client
            .lease_grant(seconds, None)
            .await
            .map_err(unavailable)?;
        let (keeper, responses) = client
            .lease_keep_alive(grant.id())
            .await
            .map_err(unavailable)?;
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        client
            .put(key, value, Some(PutOptions::new().with_lease(grant.id())))
            .await
            .map_err(unavailable)?;
        self.wrote();
        leases.insert(
            record.id.clone(),
            Leased {
                id: grant.id(),
                keeper,
                responses,
                written: record,
                written_at: Instant::now(),
            },
        );
        Ok(())
    }

    async fn remove_shard(&self, id: &str) -> Result<(), StoreError> {
        let held = self.inner.leases.lock().await.remove(id);
        match held {
            // Revoking deletes the record with it.
            Some(leased) => {
                self.client()
                    .lease_revoke(leased.id)
                    .await
                    .map_err(unavailable)?;
                self.wrote();
                Ok(())
            }
            None => self.delete(Kind::Shard, id).await,
        }
    }

    async fn put_route(
        &self,
        room: &str,
        shard: &str,
        expected_epoch: u64,
    ) -> Result<Route, StoreError> {
        let key = self.key(Kind::Route, room);
        let mut client = self.client();
        // Read the current route at its revision, then write only if nobody moved it since.
        let current = client.get(key.clone(), None).await.map_err(unavailable)?;
        let (epoch, revision) = match current.kvs().first() {
            Some(kv) => {
                let route: Route = serde_json::from_slice(kv.value()).map_err(unavailable)?;
                (route.epoch, kv.mod_revision())
            }
            None => (0, 0),
        };
        if epoch != expected_epoch {
            return Err(StoreError::Conflict(format!(
                "route of {room} is at epoch {epoch}, not {expected_epoch}"
            )));
        }
        let route = Route {
            room: room.to_owned(),
            shard: shard.to_owned(),
            epoch: epoch + 1,
        };
        let value = serde_json::to_vec(&route).map_err(unavailable)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let response = client.txn(txn).await.map_err(unavailable)?;
        self.wrote();
        if !response.succeeded() {
            return Err(StoreError::Conflict(format!(
                "route of {room} moved meanwhile"
            )));
        }
        Ok(route)
    }

    async fn delete_route(&self, room: &str) -> Result<(), StoreError> {
        self.delete(Kind::Route, room).await
    }

    async fn put_room(&self, record: RoomRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.put(Kind::Room, &record.name, value).await
    }

    async fn delete_room(&self, name: &str) -> Result<(), StoreError> {
        self.delete(Kind::Room, name).await
    }

    async fn put_broadcast(&self, record: BroadcastRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.put(Kind::Broadcast, &record.name, value).await
    }

    async fn delete_broadcast(&self, name: &str) -> Result<(), StoreError> {
        self.delete(Kind::Broadcast, name).await
    }

    async fn put_cascade(&self, record: CascadeRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.put(Kind::Cascade, &record.broadcast, value).await
    }

    async fn delete_cascade(&self, broadcast: &str) -> Result<(), StoreError> {
        self.delete(Kind::Cascade, broadcast).await
    }

    async fn put_recording(&self, record: RecordingRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.put(Kind::Recording, &record.name, value).await
    }

    async fn delete_recording(&self, name: &str) -> Result<(), StoreError> {
        self.delete(Kind::Recording, name).await
    }

    async fn put_recording_state(&self, record: RecordingStateRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.put(Kind::RecordingState, &record.name, value).await
    }

    async fn delete_recording_state(&self, name: &str) -> Result<(), StoreError> {
        self.delete(Kind::RecordingState, name).await
    }

    async fn put_latency_report(&self, report: LatencyReport) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&report).map_err(unavailable)?;
        let key = LatencyReport::key(&report.room, &report.participant);
        self.put(Kind::Latency, &key, value).await
    }

    async fn delete_latency_report(&self, room: &str, participant: &str) -> Result<(), StoreError> {
        self.delete(Kind::Latency, &LatencyReport::key(room, participant))
            .await
    }

    /// Compacts etcd's history older than `keep` revisions before the current one; the
    /// revision compacted to, if anything was. Watchers that fall behind it resync.
    async fn compact(&self, keep: i64) -> Result<Option<i64>, StoreError> {
        self.compact_history(keep).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_endpoints_scheme_and_prefix() {
        let config = EtcdConfig::parse("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(
            config.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(config.prefix, "/tutti/");
        let tls = EtcdConfig::parse("etcds://etcd.example:2379/prod/tutti").unwrap();
        assert_eq!(tls.endpoints, ["https://etcd.example:2379"]);
        assert_eq!(tls.prefix, "/prod/tutti/");
        for bad in [
            "http://x:1",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://h:99999",
        ] {
            assert!(EtcdConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placement_view_ignores_the_fast_moving_load() {
        let mut record = ShardRecord::new("s", "http://s", 10);
        let before = placement_view(&record);
        record.load.egress_bps = 5_000_000;
        record.load.cpu_cores = 0.7;
        assert_eq!(placement_view(&record), before);
        record.load.participants = 3;
        assert_ne!(placement_view(&record), before);
    }
}
