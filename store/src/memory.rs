//! The in-memory live state: local mode's embedded store, and the tests'.

use crate::snapshot::{Kind, RouteChange, Snapshot};
use crate::{
    BroadcastRecord, CascadeRecord, LatencyReport, LiveView, LiveWriter, RecordingRecord,
    RecordingStateRecord, RoomRecord, Route, ShardRecord, StoreError,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

struct State {
    records: Snapshot,
    expiry: HashMap<String, Instant>,
}

/// Live state held in this process. Cloning shares it.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<RouteChange>,
    /// Counts changes of room records and latency reports.
    rooms_changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                records: Snapshot::default(),
                expiry: HashMap::new(),
            })),
            changes: broadcast::channel(1024).0,
            rooms_changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave these maps half-updated (every write is
    // one insert or remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, kind: Kind, name: &str, value: Option<Vec<u8>>) {
        let change = self.write().records.apply(kind, name, value.as_deref());
        if let Some(change) = change {
            let _ = self.changes.send(change);
        }
        if matches!(kind, Kind::Room | Kind::Latency) {
            self.rooms_changed.send_modify(|n| *n += 1);
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl LiveView for MemoryStore {
    fn route(&self, room: &str) -> Option<Route> {
        self.read().records.routes.get(room).cloned()
    }

    fn routes(&self) -> Vec<Route> {
        self.read().records.routes.values().cloned().collect()
    }

    fn shard(&self, id: &str) -> Option<ShardRecord> {
        let now = Instant::now();
        let state = self.read();
        state
            .records
            .shards
            .get(id)
            .filter(|_| state.expiry.get(id).is_some_and(|at| *at > now))
            .cloned()
    }

    fn shards(&self) -> Vec<ShardRecord> {
        let now = Instant::now();
        let state = self.read();
        state
            .records
            .shards
            .values()
            .filter(|s| state.expiry.get(&s.id).is_some_and(|at| *at > now))
            .cloned()
            .collect()
    }

    fn room(&self, name: &str) -> Option<RoomRecord> {
        self.read().records.rooms.get(name).cloned()
    }

    fn rooms(&self) -> Vec<RoomRecord> {
        self.read().records.rooms.values().cloned().collect()
    }

    fn broadcast(&self, name: &str) -> Option<BroadcastRecord> {
        self.read().records.broadcasts.get(name).cloned()
    }

    fn broadcasts(&self) -> Vec<BroadcastRecord> {
        self.read().records.broadcasts.values().cloned().collect()
    }

    fn cascade(&self, broadcast: &str) -> Option<CascadeRecord> {
        self.read().records.cascades.get(broadcast).cloned()
    }

    fn cascades(&self) -> Vec<CascadeRecord> {
        self.read().records.cascades.values().cloned().collect()
    }

    fn recording(&self, name: &str) -> Option<RecordingRecord> {
        self.read().records.recordings.get(name).cloned()
    }

    fn recordings(&self) -> Vec<RecordingRecord> {
        self.read().records.recordings.values().cloned().collect()
    }

    fn recording_state(&self, name: &str) -> Option<RecordingStateRecord> {
        self.read().records.recording_states.get(name).cloned()
    }

    fn recording_states(&self) -> Vec<RecordingStateRecord> {
        self.read()
            .records
            .recording_states
            .values()
            .cloned()
            .collect()
    }

    fn latency_reports(&self, room: &str) -> Vec<LatencyReport> {
        self.read().records.latency_reports(room)
    }

    fn synced(&self) -> bool {
        true
    }

    fn watch_routes(&self) -> broadcast::Receiver<RouteChange> {
        self.changes.subscribe()
    }

    fn watch_rooms(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rooms_changed.subscribe()
    }
}

impl LiveWriter for MemoryStore {
    async fn heartbeat(&self, record: ShardRecord, ttl: Duration) -> Result<(), StoreError> {
        let value = encode(&record)?;
        self.write()
            .expiry
            .insert(record.id.clone(), Instant::now() + ttl);
        self.set(Kind::Shard, &record.id, Some(value));
        Ok(())
    }

    async fn remove_shard(&self, id: &str) -> Result<(), StoreError> {
        self.write().expiry.remove(id);
        self.set(Kind::Shard, id, None);
        Ok(())
    }

    async fn put_route(
        &self,
        room: &str,
        shard: &str,
        expected_epoch: u64,
    ) -> Result<Route, StoreError> {
        let route = {
            let mut state = self.write();
            let current = state.records.routes.get(room).map_or(0, |r| r.epoch);
            if current != expected_epoch {
                return Err(StoreError::Conflict(format!(
                    "route of {room} is at epoch {current}, not {expected_epoch}"
                )));
            }
            let route = Route {
                room: room.to_owned(),
                shard: shard.to_owned(),
                epoch: current + 1,
            };
            state.records.routes.insert(room.to_owned(), route.clone());
            route
        };
        let _ = self.changes.send(RouteChange {
            room: room.to_owned(),
            route: Some(route.clone()),
        });
        Ok(route)
    }

    async fn delete_route(&self, room: &str) -> Result<(), StoreError> {
        self.set(Kind::Route, room, None);
        Ok(())
    }

    async fn put_room(&self, record: RoomRecord) -> Result<(), StoreError> {
        let value = encode(&record)?;
        self.set(Kind::Room, &record.name, Some(value));
        Ok(())
    }

    async fn delete_room(&self, name: &str) -> Result<(), StoreError> {
        self.set(Kind::Room, name, None);
        Ok(())
    }

    async fn put_broadcast(&self, record: BroadcastRecord) -> Result<(), StoreError> {
        self.set(Kind::Broadcast, &record.name, Some(encode(&record)?));
        Ok(())
    }

    async fn delete_broadcast(&self, name: &str) -> Result<(), StoreError> {
        self.set(Kind::Broadcast, name, None);
        Ok(())
    }

    async fn put_cascade(&self, record: CascadeRecord) -> Result<(), StoreError> {
        self.set(Kind::Cascade, &record.broadcast, Some(encode(&record)?));
        Ok(())
    }

    async fn delete_cascade(&self, broadcast: &str) -> Result<(), StoreError> {
        self.set(Kind::Cascade, broadcast, None);
        Ok(())
    }

    async fn put_recording(&self, record: RecordingRecord) -> Result<(), StoreError> {
        self.set(Kind::Recording, &record.name, Some(encode(&record)?));
        Ok(())
    }

    async fn delete_recording(&self, name: &str) -> Result<(), StoreError> {
        self.set(Kind::Recording, name, None);
        Ok(())
    }

    async fn put_recording_state(&self, record: RecordingStateRecord) -> Result<(), StoreError> {
        self.set(Kind::RecordingState, &record.name, Some(encode(&record)?));
        Ok(())
    }

    async fn delete_recording_state(&self, name: &str) -> Result<(), StoreError> {
        self.set(Kind::RecordingState, name, None);
        Ok(())
    }

    async fn put_latency_report(&self, report: LatencyReport) -> Result<(), StoreError> {
        let key = LatencyReport::key(&report.room, &report.participant);
        self.set(Kind::Latency, &key, Some(encode(&report)?));
        Ok(())
    }

    async fn delete_latency_report(&self, room: &str, participant: &str) -> Result<(), StoreError> {
        self.set(Kind::Latency, &LatencyReport::key(room, participant), None);
        Ok(())
    }

    async fn compact(&self, _keep: i64) -> Result<Option<i64>, StoreError> {
        // No history is kept in memory.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str) -> ShardRecord {
        ShardRecord::new(id, &format!("http://{id}"), 100)
    }

    #[tokio::test(start_paused = true)]
    async fn shard_records_expire_unless_refreshed() {
        let store = MemoryStore::new();
        store
            .heartbeat(shard("a"), Duration::from_secs(3))
            .await
            .unwrap();
        store
            .heartbeat(shard("b"), Duration::from_secs(3))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        store
            .heartbeat(shard("b"), Duration::from_secs(3))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.shard("a").is_none(), "a missed its heartbeat");
        assert_eq!(
            store
                .shards()
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[tokio::test]
    async fn routes_move_only_from_the_epoch_the_writer_saw() {
        let store = MemoryStore::new();
        let first = store.put_route("lesson", "a", 0).await.unwrap();
        assert_eq!(first.epoch, 1);
        assert!(matches!(
            store.put_route("lesson", "b", 0).await,
            Err(StoreError::Conflict(_))
        ));
        let moved = store.put_route("lesson", "b", 1).await.unwrap();
        assert_eq!((moved.shard.as_str(), moved.epoch), ("b", 2));
        assert_eq!(store.route("lesson"), Some(moved));
        store.delete_route("lesson").await.unwrap();
        assert!(store.route("lesson").is_none());
    }
}
