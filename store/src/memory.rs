//! The in-memory live state: local mode's embedded store, and the tests'.

use crate::{LiveView, LiveWriter, RoomRecord, Route, ShardRecord, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    shards: BTreeMap<String, (ShardRecord, Instant)>,
    routes: BTreeMap<String, Route>,
    rooms: BTreeMap<String, RoomRecord>,
}

/// Live state held in this process. Cloning shares it.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<RwLock<State>>,
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
}

impl LiveView for MemoryStore {
    fn route(&self, room: &str) -> Option<Route> {
        self.read().routes.get(room).cloned()
    }

    fn routes(&self) -> Vec<Route> {
        self.read().routes.values().cloned().collect()
    }

    fn shard(&self, id: &str) -> Option<ShardRecord> {
        let now = Instant::now();
        self.read()
            .shards
            .get(id)
            .filter(|(_, expires)| *expires > now)
            .map(|(record, _)| record.clone())
    }

    fn shards(&self) -> Vec<ShardRecord> {
        let now = Instant::now();
        self.read()
            .shards
            .values()
            .filter(|(_, expires)| *expires > now)
            .map(|(record, _)| record.clone())
            .collect()
    }

    fn room(&self, name: &str) -> Option<RoomRecord> {
        self.read().rooms.get(name).cloned()
    }

    fn rooms(&self) -> Vec<RoomRecord> {
        self.read().rooms.values().cloned().collect()
    }
}

impl LiveWriter for MemoryStore {
    async fn heartbeat(&self, record: ShardRecord, ttl: Duration) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        self.write()
            .shards
            .insert(record.id.clone(), (record, expires));
        Ok(())
    }

    async fn remove_shard(&self, id: &str) -> Result<(), StoreError> {
        self.write().shards.remove(id);
        Ok(())
    }

    async fn put_route(
        &self,
        room: &str,
        shard: &str,
        expected_epoch: u64,
    ) -> Result<Route, StoreError> {
        let mut state = self.write();
        let current = state.routes.get(room).map_or(0, |r| r.epoch);
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
        state.routes.insert(room.to_owned(), route.clone());
        Ok(route)
    }

    async fn delete_route(&self, room: &str) -> Result<(), StoreError> {
        self.write().routes.remove(room);
        Ok(())
    }

    async fn put_room(&self, record: RoomRecord) -> Result<(), StoreError> {
        self.write().rooms.insert(record.name.clone(), record);
        Ok(())
    }

    async fn delete_room(&self, name: &str) -> Result<(), StoreError> {
        self.write().rooms.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardLoadSummary;

    fn shard(id: &str) -> ShardRecord {
        ShardRecord {
            id: id.into(),
            signal_url: format!("ws://{id}/v1/signal"),
            admin_url: format!("http://{id}"),
            region: None,
            labels: Default::default(),
            capacity: 100,
            draining: false,
            load: ShardLoadSummary::default(),
        }
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
