//! The room list's counts in local mode, read from the embedded shards.

use crate::rooms::{Occupancy, OccupancyMap};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_shard_api::client::ShardAdmin;
use tutti_store::{LiveView, MemoryStore};

/// Keeps `occupancy` (the room list's counts) in step with what the shards host, polling
/// their admin APIs every `period` until `stop`.
pub(super) async fn refresh_occupancy(
    store: MemoryStore,
    admin_token: String,
    occupancy: OccupancyMap,
    period: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut hosted: HashMap<String, Occupancy> = HashMap::new();
        for shard in store.shards() {
            match ShardAdmin::new(&shard.admin_url, &admin_token)
                .pipelines()
                .await
            {
                // A broadcast's edges are pipelines named after its stage on other shards:
                // only pipelines that relay nothing are where a room lives.
                Ok(pipelines) => hosted.extend(
                    pipelines
                        .into_iter()
                        .filter(|p| p.spec.relay.is_none())
                        .map(|p| {
                            let occupancy = Occupancy {
                                participants: p.participants,
                                max_participants: p.spec.max_participants,
                            };
                            (p.name, occupancy)
                        }),
                ),
                Err(err) => tracing::debug!(shard = %shard.id, %err, "pipelines not listed"),
            }
        }
        if let Ok(mut map) = occupancy.write() {
            *map = hosted;
        }
    }
}
