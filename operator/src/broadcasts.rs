//! The Broadcast controller: a Broadcast resource becomes a broadcast record (and, without
//! `roomRef`, a stage room record of its own) in the live state, where the cascade loop
//! plans and applies its relay tree; the tree as applied comes back as the status.
//!
//! Deletion goes through a finalizer: the records go first, so the cascade loop releases
//! the edges and the stage is released like any room.

use crate::controller::{Context, Error, MANAGER};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizing, finalizer};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tutti_crds::{Broadcast, BroadcastPhase, BroadcastSpec, BroadcastStatus, EdgeStatus};
use tutti_store::{BroadcastRecord, CascadeRecord, LiveView, LiveWriter, RoomRecord};

/// The finalizer that makes deletion tear the cascade down first.
pub const FINALIZER: &str = "tutti.dev/broadcast-cascade";
/// How often a broadcast's status is refreshed (viewer counts move all the time).
const REFRESH: Duration = Duration::from_secs(10);

/// The owner string records and pipelines of a Broadcast carry.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("Broadcast/{namespace}/{name}")
}

/// The records a Broadcast stands for: the broadcast, and its own stage unless it
/// broadcasts an existing Room's.
pub fn records(
    namespace: &str,
    name: &str,
    spec: &BroadcastSpec,
) -> (BroadcastRecord, Option<RoomRecord>) {
    let owner = owner(namespace, name);
    let own_stage = spec.room_ref.is_none().then(|| {
        let mut stage = RoomRecord::with_defaults(name);
        // The pipeline API's floor is two seats.
        stage.max_participants = spec.presenters.max(2);
        stage.video = !spec.audio_only;
        stage.audience = true;
        stage.empty_timeout_seconds = tutti_shard_api::admin::MAX_EMPTY_TIMEOUT_SECS;
        stage.owner = Some(owner.clone());
        stage
    });
    let stage_name = spec
        .room_ref
        .as_ref()
        .map_or_else(|| name.to_owned(), |r| r.name.clone());
    let broadcast = BroadcastRecord {
        name: name.to_owned(),
        stage: stage_name,
        expected_audience: spec.expected_audience,
        max_viewers_per_shard: spec.max_viewers_per_shard,
        layers: if spec.audio_only { 1 } else { 3 },
        owner: Some(owner),
        hls: spec.hls,
        max_webrtc_viewers: spec.max_webrtc_viewers.filter(|_| spec.hls),
    };
    (broadcast, own_stage)
}

/// The status a Broadcast shows for its cascade as applied (`None`: not planned yet).
pub fn broadcast_status(
    cascade: Option<&CascadeRecord>,
    problem: Option<&str>,
    generation: Option<i64>,
) -> BroadcastStatus {
    let Some(cascade) = cascade else {
        return BroadcastStatus {
            phase: if problem.is_some() {
                BroadcastPhase::Failed
            } else {
                BroadcastPhase::Pending
            },
            observed_generation: generation,
            ..BroadcastStatus::default()
        };
    };
    let plan = tutti_control::cascade::Plan {
        origin: cascade.origin.clone(),
        edges: cascade.edges.clone(),
    };
    BroadcastStatus {
        phase: BroadcastPhase::Placed,
        origin: Some(cascade.origin.clone()),
        edges: cascade
            .edges
            .iter()
            .map(|e| EdgeStatus {
                shard: e.shard.clone(),
                viewers: e.viewers,
                parent: e.parent.clone(),
            })
            .collect(),
        edge_count: cascade.edges.len() as u32,
        viewers: cascade.edges.iter().map(|e| e.viewers).sum(),
        cascade_depth: plan.depth() as u32,
        conditions: Vec::new(),
        observed_generation: generation,
    }
}

/// Reconciles one Broadcast.
pub async fn reconcile_broadcast<S>(
    broadcast: Arc<Broadcast>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let namespace = broadcast.namespace().ok_or(Error::Unnamed)?;
    let name = broadcast.meta().name.clone().ok_or(Error::Unnamed)?;
    let api: Api<Broadcast> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, broadcast, |event| async {
        match event {
            Finalizing::Apply(b) => apply(&b, &namespace, &name, &api, &ctx).await,
            Finalizing::Cleanup(_) => cleanup(&namespace, &name, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled("broadcast", if result.is_ok() { "ok" } else { "error" });
    result
}

async fn apply<S>(
    broadcast: &Broadcast,
    namespace: &str,
    name: &str,
    api: &Api<Broadcast>,
    ctx: &Context<S>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let store = ctx.placer.store();
    let (record, stage) = records(namespace, name, &broadcast.spec);
    let mut problem = None;
    if let Some(stage) = stage {
        match store.room(name) {
            Some(existing) if existing.owner != stage.owner => {
                problem = Some(format!("a room called {name} exists; rename the Broadcast"));
            }
            Some(existing) if existing == stage => {}
            _ => store.put_room(stage).await.map_err(retry)?,
        }
    }
    if problem.is_none() && store.broadcast(name).as_ref() != Some(&record) {
        store.put_broadcast(record).await.map_err(retry)?;
    }
    let status = broadcast_status(
        store.cascade(name).as_ref(),
        problem.as_deref(),
        broadcast.meta().generation,
    );
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "tutti.dev/v1alpha1",
            "kind": "Broadcast",
            "status": status,
        })),
    )
    .await?;
    Ok(Action::requeue(REFRESH))
}

async fn cleanup<S>(namespace: &str, name: &str, ctx: &Context<S>) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let store = ctx.placer.store();
    let owner = owner(namespace, name);
    if store
        .broadcast(name)
        .is_some_and(|b| b.owner.as_deref() == Some(owner.as_str()))
    {
        store.delete_broadcast(name).await.map_err(retry)?;
    }
    ctx.placer
        .release(name, &owner)
        .await
        .map_err(|e| Error::Retry {
            category: "release",
            message: e.to_string(),
        })?;
    Ok(Action::await_change())
}

fn retry(err: tutti_store::StoreError) -> Error {
    Error::Retry {
        category: "store",
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_crds::LocalObjectRef;
    use tutti_store::CascadeEdge;

    fn spec() -> BroadcastSpec {
        serde_json::from_value(serde_json::json!({"expectedAudience": 1200})).unwrap()
    }

    #[test]
    fn a_broadcast_has_its_own_stage_unless_it_names_a_room() {
        let (record, stage) = records("music", "concert", &spec());
        let stage = stage.unwrap();
        assert_eq!((record.stage.as_str(), record.layers), ("concert", 3));
        assert_eq!(record.owner.as_deref(), Some("Broadcast/music/concert"));
        assert!(stage.audience);
        assert_eq!(stage.max_participants, 2);
        assert_eq!(stage.owner, record.owner);
        let mut of_room = spec();
        of_room.room_ref = Some(LocalObjectRef {
            name: "ensemble".into(),
        });
        of_room.audio_only = true;
        let (record, stage) = records("music", "live", &of_room);
        assert!(stage.is_none());
        assert_eq!((record.stage.as_str(), record.layers), ("ensemble", 1));
    }

    #[test]
    fn the_status_shows_the_tree_as_applied() {
        let edge = |shard: &str, parent: &str, viewers| CascadeEdge {
            shard: shard.into(),
            parent: parent.into(),
            viewers,
            draining: false,
        };
        let cascade = CascadeRecord {
            broadcast: "concert".into(),
            stage: "concert".into(),
            origin: "o".into(),
            edges: vec![edge("a", "o", 400), edge("b", "a", 120)],
        };
        let status = broadcast_status(Some(&cascade), None, Some(3));
        assert_eq!(status.phase, BroadcastPhase::Placed);
        assert_eq!(status.origin.as_deref(), Some("o"));
        assert_eq!((status.edge_count, status.viewers), (2, 520));
        assert_eq!(status.cascade_depth, 2);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            broadcast_status(None, None, None).phase,
            BroadcastPhase::Pending
        );
        assert_eq!(
            broadcast_status(None, Some("taken"), None).phase,
            BroadcastPhase::Failed
        );
    }
}
