//! Rooms that have a record in the live state but no Room resource: rooms a gateway
//! created on first join (owner `Gateway/...`), or any record written without Kubernetes
//! (a standalone operator, a hand-run cluster). The operator stays the one writer of
//! their routes: it places them, places them again when their shard goes, creates a
//! declared room's pipeline again when its shard let it go (it stood empty past its
//! timeout), and forgets rooms created on first join once their shard has released them.

use crate::outcome::RoomOutcome;
use crate::placer::Placer;
use std::collections::{BTreeMap, HashMap, HashSet};
use tutti_store::{LatencyReport, LiveView, LiveWriter, RoomRecord};

/// The owner of rooms created on first join.
pub use tutti_store::AUTO_CREATED_OWNER as AUTO_OWNER;

/// Whether a record belongs to a Room resource (the Room controller places those).
pub fn from_resource(record: &RoomRecord) -> bool {
    record
        .owner
        .as_deref()
        .is_some_and(|owner| owner.starts_with("Room/"))
}

/// Remembers, between passes, which auto-created rooms their shard no longer hosts.
#[derive(Debug, Default)]
pub struct RecordKeeper {
    missing: HashMap<String, u64>,
    /// The latency reports each latency-placed room was last placed with.
    reported: HashMap<String, Vec<LatencyReport>>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    /// Rooms placed (or placed again), with the outcome.
    pub placed: Vec<(String, RoomOutcome)>,
    /// Auto-created rooms forgotten.
    pub forgotten: Vec<String>,
}

impl RecordKeeper {
    /// Places every record-only room that lacks a live route, and forgets auto-created
    /// rooms their shard released (seen missing twice at the same route epoch).
    pub async fn pass<S: LiveView + LiveWriter>(&mut self, placer: &Placer<S>) -> Pass {
        let store = placer.store();
        let mut pass = Pass::default();
        let mut hosted: HashMap<String, Option<HashSet<String>>> = HashMap::new();
        let mut still_missing = HashMap::new();
        let mut reported = HashMap::new();
        for record in store.rooms() {
            if from_resource(&record) {
                continue;
            }
            let name = record.name.clone();
            let route = store.route(&name);
            let shard = route.as_ref().and_then(|r| store.shard(&r.shard));
            let latency = crate::latency::uses_latency(&record, &store.shards());
            let reports = if latency {
                store.latency_reports(&name)
            } else {
                Vec::new()
            };
            let Some(shard) = shard else {
                let outcome = placer.place(record, &BTreeMap::new()).await;
                if latency {
                    reported.insert(name.clone(), reports);
                }
                pass.placed.push((name, outcome));
                continue;
            };
            if latency {
                // Someone arrived or left: placement may want the room elsewhere.
                let mut placed_with_these = true;
                if self.reported.get(&name) != Some(&reports) {
                    let outcome = placer.place(record.clone(), &BTreeMap::new()).await;
                    match outcome {
                        RoomOutcome::Placed { moved: false, .. } => {}
                        RoomOutcome::Placed { moved: true, .. } => {
                            pass.placed.push((name.clone(), outcome));
                        }
                        // Not placed with these reports (a shard did not answer): the
                        // next pass tries again rather than taking them as handled.
                        failed => {
                            placed_with_these = false;
                            pass.placed.push((name.clone(), failed));
                        }
                    }
                }
                match (placed_with_these, self.reported.get(&name)) {
                    (true, _) => {
                        reported.insert(name.clone(), reports);
                    }
                    (false, Some(before)) => {
                        reported.insert(name.clone(), before.clone());
                    }
                    (false, None) => {}
                }
            }
            let pipelines = match hosted.get(&shard.id) {
                Some(known) => known.clone(),
                None => {
                    let listed = placer
                        .admin(&shard.admin_url)
                        .pipelines()
                        .await
                        .ok()
                        .map(|list| list.into_iter().map(|p| p.name).collect::<HashSet<_>>());
                    hosted.insert(shard.id.clone(), listed.clone());
                    listed
                }
            };
            let epoch = route.map_or(0, |r| r.epoch);
            let gone = pipelines.is_some_and(|names| !names.contains(&name));
            if gone && record.owner.as_deref() != Some(AUTO_OWNER) {
                // A declared room (rooms file, hand-written record) whose shard let it go
                // after it stood empty: it is created again where its route points, as
                // the Room controller does for a Room resource.
                let outcome = placer.place(record, &BTreeMap::new()).await;
                pass.placed.push((name, outcome));
            } else if gone {
                if self.missing.get(&name) == Some(&epoch) {
                    if placer.forget(&name, AUTO_OWNER).await.is_ok() {
                        pass.forgotten.push(name);
                    }
                } else {
                    still_missing.insert(name, epoch);
                }
            }
        }
        self.missing = still_missing;
        self.reported = reported;
        pass
    }
}
