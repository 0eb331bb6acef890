//! Applies cascade plans: counts each edge's viewers through the shards' admin API, asks
//! the planner for the next tree, creates or updates the edge pipelines that differ,
//! releases the edges that left the tree, and publishes the tree in the live state
//! (where gateways read it to seat viewers).
//!
//! The origin is always the shard holding the broadcast's stage room: whoever places
//! rooms (the operator, or local mode's placer) places the stage, and the cascade follows
//! it when it moves.

use super::plan::{CascadeParams, Demand, Plan, PlanError, plan};
use std::collections::BTreeMap;
use tutti_shard_api::admin::{MediaPolicy, PipelineInfo, PipelineSpec, RelaySpec};
use tutti_shard_api::client::ShardAdmin;
use tutti_store::{
    BroadcastRecord, CascadeRecord, LiveView, LiveWriter, RoomRecord, ShardRecord, StoreError,
};

/// Edge pipelines are held by the driver, not by their audience: an edge left empty is
/// released when the plan drops it, so the shard's own empty timer is only a backstop for
/// an operator that vanished.
const EDGE_EMPTY_TIMEOUT_SECS: u64 = 3600;

/// Why a broadcast has no cascade now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriveError {
    /// The stage room is not placed on any shard yet.
    #[error("the stage room {0} is not placed yet")]
    StageNotPlaced(String),
    /// The planner found nothing to build on.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The live state refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did for one broadcast.
#[derive(Debug, Clone, PartialEq)]
pub struct Driven {
    /// The cascade as published.
    pub cascade: CascadeRecord,
    /// Edge pipelines created or changed on shards.
    pub applied: Vec<String>,
    /// Edge shards whose pipeline could not be created (unreachable, refused): retried on
    /// the next pass.
    pub failed: Vec<(String, String)>,
}

/// Drives every broadcast in the live state towards its plan.
pub struct Driver<S> {
    store: S,
    admin_token: String,
    params: CascadeParams,
}

impl<S: LiveView + LiveWriter> Driver<S> {
    /// A driver over `store` calling shards with `admin_token`.
    pub fn new(store: S, admin_token: String, params: CascadeParams) -> Self {
        Self {
            store,
            admin_token,
            params,
        }
    }

    fn admin(&self, shard: &ShardRecord) -> ShardAdmin {
        ShardAdmin::new(&shard.admin_url, &self.admin_token)
    }

    /// One pass over every broadcast, and the teardown of cascades whose broadcast is gone.
    pub async fn pass(&self) -> Vec<(String, Result<Driven, DriveError>)> {
        let mut outcomes = Vec::new();
        for broadcast in self.store.broadcasts() {
            let outcome = self.drive(&broadcast).await;
            outcomes.push((broadcast.name.clone(), outcome));
        }
        for cascade in self.store.cascades() {
            if self.store.broadcast(&cascade.broadcast).is_none() {
                self.tear_down(&cascade).await;
            }
        }
        outcomes
    }

    /// Plans and applies one broadcast's cascade.
    pub async fn drive(&self, broadcast: &BroadcastRecord) -> Result<Driven, DriveError> {
        let route = self
            .store
            .route(&broadcast.stage)
            .ok_or_else(|| DriveError::StageNotPlaced(broadcast.stage.clone()))?;
        let stage = self
            .store
            .room(&broadcast.stage)
            .unwrap_or_else(|| RoomRecord::with_defaults(&broadcast.stage));
        let shards: BTreeMap<String, ShardRecord> = self
            .store
            .shards()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let previous = self
            .store
            .cascade(&broadcast.name)
            .filter(|c| c.stage == broadcast.stage);
        // What the edges hold now: their viewers, and the spec they run.
        let mut hosted: BTreeMap<String, PipelineInfo> = BTreeMap::new();
        for edge in previous.iter().flat_map(|c| &c.edges) {
            let Some(shard) = shards.get(&edge.shard) else {
                continue;
            };
            match self.admin(shard).pipelines().await {
                Ok(pipelines) => {
                    if let Some(info) = pipelines.into_iter().find(|p| p.name == broadcast.stage) {
                        hosted.insert(edge.shard.clone(), info);
                    }
                }
                Err(err) => {
                    tracing::debug!(shard = %edge.shard, %err, "edge not counted");
                }
            }
        }
        let viewers = hosted
            .iter()
            .map(|(shard, info)| (shard.clone(), info.participants))
            .collect();
        let alive = candidates(&shards, &route.shard);
        let previous_plan = previous.as_ref().map(|c| moved_origin(c, &route.shard));
        let next = plan(
            previous_plan.as_ref(),
            &Demand {
                expected_audience: broadcast.expected_audience,
                viewers,
                max_viewers_per_shard: broadcast.max_viewers_per_shard,
            },
            &alive,
            self.params,
        )?;
        let mut applied = Vec::new();
        let mut failed = Vec::new();
        for edge in &next.edges {
            let (Some(shard), Some(parent)) = (shards.get(&edge.shard), shards.get(&edge.parent))
            else {
                continue;
            };
            let spec = edge_spec(broadcast, &stage, parent);
            if hosted
                .get(&edge.shard)
                .is_some_and(|info| info.spec == spec)
            {
                continue;
            }
            match self
                .admin(shard)
                .put_pipeline(&broadcast.stage, &spec)
                .await
            {
                Ok(_) => applied.push(edge.shard.clone()),
                Err(err) => failed.push((edge.shard.clone(), err.to_string())),
            }
        }
        // Edges that left the tree: their viewers were moved off (the planner removes only
        // empty edges) or their shard is gone. Never touch the origin's stage pipeline.
        for edge in previous.iter().flat_map(|c| &c.edges) {
            let kept = next.edges.iter().any(|e| e.shard == edge.shard);
            if kept || edge.shard == next.origin {
                continue;
            }
            if let Some(shard) = shards.get(&edge.shard)
                && let Err(err) = self.admin(shard).release(&broadcast.stage).await
                && !err.is_not_found()
            {
                tracing::warn!(shard = %edge.shard, %err, "edge pipeline not released");
            }
        }
        let cascade = CascadeRecord {
            broadcast: broadcast.name.clone(),
            stage: broadcast.stage.clone(),
            origin: next.origin,
            edges: next.edges,
        };
        if previous.as_ref() != Some(&cascade) {
            self.store.put_cascade(cascade.clone()).await?;
        }
        Ok(Driven {
            cascade,
            applied,
            failed,
        })
    }

    /// Releases a deleted broadcast's edges and forgets its cascade.
    async fn tear_down(&self, cascade: &CascadeRecord) {
        for edge in &cascade.edges {
            if let Some(shard) = self.store.shard(&edge.shard)
                && let Err(err) = self.admin(&shard).release(&cascade.stage).await
                && !err.is_not_found()
            {
                tracing::warn!(shard = %edge.shard, %err, "edge pipeline not released");
                return;
            }
        }
        if let Err(err) = self.store.delete_cascade(&cascade.broadcast).await {
            tracing::warn!(broadcast = %cascade.broadcast, %err, "cascade not forgotten");
        }
    }
}

/// Shards that may take part, preferred first: the origin, then shards that are not
/// draining, the least loaded first.
/// The tree as it was, after its stage moved to `origin`: edges that relayed from the old
/// origin relay from the new one, and the new origin is no longer an edge (the stage's
/// pipeline replaced its edge pipeline), its children relaying from it as the origin.
/// Without this the planner kept every parent and could leave an edge relaying from its
/// own shard.
fn moved_origin(previous: &CascadeRecord, origin: &str) -> Plan {
    let edges = previous
        .edges
        .iter()
        .filter(|edge| edge.shard != origin)
        .map(|edge| {
            let mut edge = edge.clone();
            if edge.parent == previous.origin {
                edge.parent = origin.to_owned();
            }
            edge
        })
        .collect();
    Plan {
        origin: origin.to_owned(),
        edges,
    }
}

fn candidates(shards: &BTreeMap<String, ShardRecord>, origin: &str) -> Vec<String> {
    let mut others: Vec<&ShardRecord> = shards
        .values()
        .filter(|s| !s.draining && s.id != origin)
        .collect();
    others.sort_by_key(|s| (s.load.participants, s.id.clone()));
    shards
        .get(origin)
        .map(|s| s.id.clone())
        .into_iter()
        .chain(others.into_iter().map(|s| s.id.clone()))
        .collect()
}

/// The pipeline an edge runs: the stage's media policy, seats for its viewers, hidden
/// viewers, and the relay from its parent.
pub fn edge_spec(
    broadcast: &BroadcastRecord,
    stage: &RoomRecord,
    parent: &ShardRecord,
) -> PipelineSpec {
    let (_, most) = tutti_shard_api::admin::PARTICIPANT_BOUNDS;
    PipelineSpec {
        max_participants: broadcast.max_viewers_per_shard.clamp(2, most),
        empty_timeout_seconds: EDGE_EMPTY_TIMEOUT_SECS,
        media: MediaPolicy {
            audio: stage.audio,
            video: stage.video,
            max_video_bitrate_kbps: stage.max_video_bitrate_kbps,
            simulcast: stage.simulcast,
        },
        owner: broadcast
            .owner
            .clone()
            .or_else(|| Some(format!("Broadcast/-/{}", broadcast.name))),
        audience: true,
        relay: Some(RelaySpec {
            from: parent.signal_url.clone(),
            room: broadcast.stage.clone(),
            layers: if broadcast.layers >= 3 { 3 } else { 1 },
        }),
        // Viewers hear the stage as its players hear each other.
        audio: stage.audio_settings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cascade::plan::Edge;

    fn edge(shard: &str, parent: &str) -> Edge {
        Edge {
            shard: shard.into(),
            parent: parent.into(),
            viewers: 3,
            draining: false,
        }
    }

    #[test]
    fn a_stage_that_moved_onto_an_edge_leads_the_tree_from_there() {
        // a is the origin; b relays from a, c from b, d from a. The stage moves to b.
        let previous = CascadeRecord {
            broadcast: "concert".into(),
            stage: "stage".into(),
            origin: "a".into(),
            edges: vec![edge("b", "a"), edge("c", "b"), edge("d", "a")],
        };
        let moved = moved_origin(&previous, "b");
        assert_eq!(moved.origin, "b");
        assert_eq!(moved.edges, vec![edge("c", "b"), edge("d", "b")]);
        assert!(moved.edges.iter().all(|e| e.parent != e.shard));
        // Moving to a shard outside the tree re-parents the old origin's children only.
        let elsewhere = moved_origin(&previous, "z");
        assert_eq!(
            elsewhere.edges,
            vec![edge("b", "z"), edge("c", "b"), edge("d", "z")]
        );
    }

    #[test]
    fn the_origin_leads_and_draining_shards_take_no_part() {
        let mut shards = BTreeMap::new();
        for (id, participants, draining) in [
            ("a", 50, false),
            ("b", 10, false),
            ("c", 0, true),
            ("d", 10, false),
            ("o", 99, false),
        ] {
            let mut record = ShardRecord::new(id, &format!("http://{id}:1"), 100);
            record.load.participants = participants;
            record.draining = draining;
            shards.insert(id.to_owned(), record);
        }
        assert_eq!(candidates(&shards, "o"), ["o", "b", "d", "a"]);
        assert_eq!(
            candidates(&shards, "gone"),
            ["b", "d", "a", "o"],
            "a stage on a vanished shard leaves the planner to pick"
        );
    }

    #[test]
    fn an_edge_relays_its_parent_with_the_stage_policy() {
        let broadcast = BroadcastRecord {
            name: "concert".into(),
            stage: "stage".into(),
            expected_audience: 1000,
            max_viewers_per_shard: 500,
            layers: 3,
            owner: None,
            hls: false,
            max_webrtc_viewers: None,
        };
        let mut stage = RoomRecord::with_defaults("stage");
        stage.video = false;
        let parent = ShardRecord::new("p", "http://10.0.0.1:7880", 100);
        let spec = edge_spec(&broadcast, &stage, &parent);
        assert!(spec.audience);
        assert!(!spec.media.video);
        assert_eq!(spec.max_participants, 500);
        assert_eq!(spec.owner.as_deref(), Some("Broadcast/-/concert"));
        let relay = spec.relay.clone().unwrap();
        assert_eq!(relay.from, "ws://10.0.0.1:7880/v1/signal");
        assert_eq!((relay.room.as_str(), relay.layers), ("stage", 3));
        assert!(spec.validate().is_ok());
    }
}
