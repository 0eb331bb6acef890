//! Finding the shard that holds a room, and — in local mode — placing rooms on shards.
//!
//! In a cluster the operator is the only writer of routes; a gateway just reads them. In
//! local mode there is no operator, so [`LocalPlacer`] does its job for the embedded shards
//! on the gateway's first join to a room: it chooses a shard, creates the room's pipeline
//! through the shard's admin API (the same HTTP call the operator makes) and writes the
//! route. Rooms are spread: the shard hosting the fewest rooms wins.

use crate::rooms::{Occupancy, OccupancyMap};
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::client::ShardAdmin;
use tutti_store::{
    AUTO_CREATED_OWNER, LatencyReport, LiveView, LiveWriter, MemoryStore, RoomRecord, ShardRecord,
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

/// Spreads rooms: among shards that are not draining and have a free seat, the one
/// hosting the fewest rooms, then the one with the fewest participants, then by id.
pub fn choose_shard<'a>(
    shards: &'a [ShardRecord],
    rooms_per_shard: &HashMap<String, usize>,
) -> Option<&'a ShardRecord> {
    shards
        .iter()
        .filter(|s| !s.draining && s.free_seats() > 0)
        .min_by_key(|s| {
            (
                rooms_per_shard.get(&s.id).copied().unwrap_or(0),
                s.load.participants,
                s.id.clone(),
            )
        })
}

/// Local mode's placement authority over the embedded shards.
pub struct LocalPlacer {
    store: MemoryStore,
    admin_token: String,
    /// Placement is rare and cheap (one loopback HTTP call); one at a time keeps two first
    /// joins from placing the same room twice.
    placing: tokio::sync::Mutex<()>,
}

impl LocalPlacer {
    /// A placer writing routes to `store` and calling shards with `admin_token`.
    pub fn new(store: MemoryStore, admin_token: String) -> Self {
        Self {
            store,
            admin_token,
            placing: tokio::sync::Mutex::new(()),
        }
    }

    fn routed_shard(&self, room: &str) -> Option<Placement> {
        let route = self.store.route(room)?;
        let shard = self.store.shard(&route.shard)?;
        Some(Placement {
            shard,
            epoch: route.epoch,
        })
    }

    async fn create_pipeline(
        &self,
        room: &RoomRecord,
        shard: &ShardRecord,
    ) -> Result<(), RouteError> {
        ShardAdmin::new(&shard.admin_url, &self.admin_token)
            .put_pipeline(&room.name, &room.pipeline_spec())
            .await
            .map(|_| ())
            .map_err(|err| RouteError::ShardFailed {
                room: room.name.clone(),
                shard: shard.id.clone(),
                why: err.to_string(),
            })
    }
}

#[async_trait]
impl RoomRouter for LocalPlacer {
    async fn shard_for(
        &self,
        room: &RoomRecord,
        failed: Option<&Placement>,
    ) -> Result<Placement, RouteError> {
        let repair = failed.is_some();
        if !repair
            && let Some(placement) = self.routed_shard(&room.name)
            && !placement.shard.draining
        {
            return Ok(placement);
        }
        let _placing = self.placing.lock().await;
        if let Some(placement) = self.routed_shard(&room.name)
            && !placement.shard.draining
        {
            // Placed by a concurrent join while we waited, or (repair) the shard dropped
            // the pipeline after it stood empty: create it again where the route points.
            if repair {
                self.create_pipeline(room, &placement.shard).await?;
            }
            return Ok(placement);
        }
        let shards = self.store.shards();
        let mut rooms_per_shard: HashMap<String, usize> = HashMap::new();
        for route in self.store.routes() {
            *rooms_per_shard.entry(route.shard).or_default() += 1;
        }
        let shard = choose_shard(&shards, &rooms_per_shard)
            .cloned()
            .ok_or_else(|| RouteError::NoShard(room.name.clone()))?;
        self.create_pipeline(room, &shard).await?;
        let epoch = self.store.route(&room.name).map_or(0, |r| r.epoch);
        let route = self
            .store
            .put_route(&room.name, &shard.id, epoch)
            .await
            .map_err(|err| RouteError::ShardFailed {
                room: room.name.clone(),
                shard: shard.id.clone(),
                why: err.to_string(),
            })?;
        tracing::info!(room = %room.name, shard = %shard.id, "room placed");
        Ok(Placement {
            shard,
            epoch: route.epoch,
        })
    }

    // Local mode's shards have no region, so no room is placed by latency and nothing
    // reports; were it asked, the report would be kept like a cluster's.
    async fn report_latency(&self, report: LatencyReport) -> Result<(), RouteError> {
        publish_report(&self.store, report).await
    }

    async fn forget_latency(&self, room: &str, participant: &str) {
        forget_report(&self.store, room, participant).await;
    }
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

/// Keeps `occupancy` in step with what the shards host, polling their admin APIs every
/// `period` until `stop`. Routes of rooms a shard released are forgotten.
pub async fn refresh_occupancy(
    store: MemoryStore,
    admin_token: String,
    occupancy: OccupancyMap,
    period: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Routes whose shard did not list the room at the last poll, with the epoch seen then.
    // A route is forgotten only when two polls in a row miss it at the same epoch, so a
    // room placed between a shard's answer and the route's write is never lost.
    let mut missing: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut hosted: HashMap<String, Occupancy> = HashMap::new();
        // A broadcast's edges are pipelines named after its stage on other shards: only
        // pipelines that relay nothing are where a room lives (taking an edge for the
        // stage once deleted the stage's route every few seconds and moved the stage).
        let mut hosted_by: HashMap<String, Vec<String>> = HashMap::new();
        for shard in store.shards() {
            match ShardAdmin::new(&shard.admin_url, &admin_token)
                .pipelines()
                .await
            {
                Ok(pipelines) => {
                    for pipeline in pipelines {
                        if pipeline.spec.relay.is_some() {
                            continue;
                        }
                        hosted_by
                            .entry(pipeline.name.clone())
                            .or_default()
                            .push(shard.id.clone());
                        hosted.insert(
                            pipeline.name,
                            Occupancy {
                                participants: pipeline.participants,
                                max_participants: pipeline.spec.max_participants,
                            },
                        );
                    }
                }
                Err(err) => tracing::debug!(shard = %shard.id, %err, "pipelines not listed"),
            }
        }
        let mut still_missing = HashMap::new();
        for route in store.routes() {
            if hosted_by
                .get(&route.room)
                .is_some_and(|shards| shards.contains(&route.shard))
                || store.shard(&route.shard).is_none()
            {
                continue;
            }
            if missing.get(&route.room) == Some(&route.epoch) {
                let _ = store.delete_route(&route.room).await;
            } else {
                still_missing.insert(route.room, route.epoch);
            }
        }
        missing = still_missing;
        if let Ok(mut map) = occupancy.write() {
            *map = hosted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, participants: u32, draining: bool) -> ShardRecord {
        let mut record = ShardRecord::new(id, "http://shard", 10);
        record.draining = draining;
        record.load.participants = participants;
        record
    }

    #[test]
    fn rooms_spread_over_shards_that_can_take_them() {
        let shards = vec![
            shard("a", 3, false),
            shard("b", 0, false),
            shard("c", 0, true),
            shard("d", 10, false),
        ];
        let none = HashMap::new();
        // Equal rooms: fewer participants wins; draining and full shards never do.
        assert_eq!(choose_shard(&shards, &none).unwrap().id, "b");
        let b_busy = HashMap::from([("b".to_owned(), 2usize), ("a".to_owned(), 1)]);
        assert_eq!(choose_shard(&shards, &b_busy).unwrap().id, "a");
        let only_bad = vec![shard("c", 0, true), shard("d", 10, false)];
        assert!(choose_shard(&only_bad, &none).is_none());
        // Ties fall to the id, so the choice is repeatable.
        let twins = vec![shard("y", 1, false), shard("x", 1, false)];
        assert_eq!(choose_shard(&twins, &none).unwrap().id, "x");
    }
}
