//! Finding the shard that holds a room.
//!
//! The control plane (the operator, or in local mode the same loops inside the gateway's
//! process) is the only writer of routes; a gateway reads them, and hands a room that may
//! be created on first join to the control plane as a record.

use async_trait::async_trait;
use std::time::Duration;
use tutti_store::{
    AUTO_CREATED_OWNER, LatencyReport, LiveView, LiveWriter, RoomRecord, ShardRecord,
};

/// Why no shard could be found for a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The live state cannot be reached.
    #[error("the cluster's live state cannot be reached: {0}")]
    Unavailable(String),
    /// Every shard is draining, full or gone.
    #[error("no shard can take room {0} now")]
    NoShard(String),
    /// The chosen shard refused or could not be reached.
    #[error("shard {shard} could not host room {room}: {why}")]
    ShardFailed {
        /// The room.
        room: String,
        /// The shard.
        shard: String,
        /// What went wrong.
        why: String,
    },
}

/// Where a room is: its shard and the route's epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The shard.
    pub shard: ShardRecord,
    /// The epoch of the route that named it.
    pub epoch: u64,
}

/// Finds the shard a room's participants are relayed to.
#[async_trait]
pub trait RoomRouter: Send + Sync {
    /// Where `room` is. `failed` is an answer that did not work (the shard no longer hosts
    /// the room, or is draining): the room must be placed again, or have moved.
    async fn shard_for(
        &self,
        room: &RoomRecord,
        failed: Option<&Placement>,
    ) -> Result<Placement, RouteError>;

    /// Publishes a participant's round trips to each region, which latency placement
    /// decides by; before it asks where the room is.
    async fn report_latency(&self, report: LatencyReport) -> Result<(), RouteError>;

    /// Forgets a participant's round trips (it left).
    async fn forget_latency(&self, room: &str, participant: &str);
}

async fn publish_report<W: LiveWriter>(store: &W, report: LatencyReport) -> Result<(), RouteError> {
    store
        .put_latency_report(report)
        .await
        .map_err(|e| RouteError::Unavailable(e.to_string()))
}

async fn forget_report<W: LiveWriter>(store: &W, room: &str, participant: &str) {
    if let Err(err) = store.delete_latency_report(room, participant).await {
        tracing::debug!(%room, %participant, %err, "latency report not removed");
    }
}

/// Finds rooms in a cluster's live state, where the operator places them. A room that
/// has no record yet and may be created on first join gets one (owner
/// [`AUTO_CREATED_OWNER`]), which the operator then places; the join waits for the route.
pub struct StoreRouter<S> {
    store: S,
    wait: Duration,
}

impl<S> StoreRouter<S> {
    /// A router over `store` that waits up to `wait` for a room to be placed.
    pub fn new(store: S, wait: Duration) -> Self {
        Self { store, wait }
    }
}

#[async_trait]
impl<S: LiveView + LiveWriter + Send + Sync> RoomRouter for StoreRouter<S> {
    async fn shard_for(
        &self,
        room: &RoomRecord,
        failed: Option<&Placement>,
    ) -> Result<Placement, RouteError> {
        let unavailable = || RouteError::Unavailable("etcd does not answer".into());
        if !self.store.synced() {
            return Err(unavailable());
        }
        if self.store.room(&room.name).is_none() {
            let record = RoomRecord {
                owner: Some(AUTO_CREATED_OWNER.into()),
                ..room.clone()
            };
            self.store
                .put_room(record)
                .await
                .map_err(|e| RouteError::Unavailable(e.to_string()))?;
        }
        let mut changes = self.store.watch_routes();
        let start = tokio::time::Instant::now();
        let deadline = start + self.wait;
        // After a failure, the same answer is given again only once the operator has had
        // a moment to repair it in place (an empty pipeline re-created on its shard).
        let retry_same_after = start + Duration::from_secs(2);
        loop {
            if let Some(route) = self.store.route(&room.name)
                && let Some(shard) = self.store.shard(&route.shard)
            {
                let fresh = match failed {
                    None => true,
                    Some(previous) => {
                        route.epoch > previous.epoch
                            || tokio::time::Instant::now() >= retry_same_after
                    }
                };
                if fresh {
                    return Ok(Placement {
                        shard,
                        epoch: route.epoch,
                    });
                }
            }
            if !self.store.synced() {
                return Err(unavailable());
            }
            // Routes arrive by watch; shards' records too, but without a notification of
            // their own, so look again every 200 ms as well.
            tokio::select! {
                _ = changes.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(RouteError::NoShard(format!(
                        "room {} is not placed on a live shard yet",
                        room.name
                    )));
                }
            }
        }
    }

    async fn report_latency(&self, report: LatencyReport) -> Result<(), RouteError> {
        publish_report(&self.store, report).await
    }

    async fn forget_latency(&self, room: &str, participant: &str) {
        forget_report(&self.store, room, participant).await;
    }
}
