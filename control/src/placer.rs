//! Making the live state match a Room: a shard chosen, the pipeline created or updated on
//! it through the shard's admin API, the room's record and route written to the store; and
//! undoing all of it when the Room goes.
//!
//! Nothing here touches the Kubernetes API, so the integration tests drive it with real
//! shards and the in-memory store.

use crate::latency::{best_region, should_move, uses_latency};
use crate::outcome::RoomOutcome;
use crate::placement::{Candidate, Strategy, candidates, place};
use std::collections::BTreeMap;
use tutti_shard_api::client::ShardAdmin;
use tutti_store::password::{hash_password, verify_password};
use tutti_store::{LiveView, LiveWriter, RoomRecord};

/// Places rooms on shards and keeps their pipelines, records and routes.
pub struct Placer<S> {
    store: S,
    admin_token: String,
    strategy: Strategy,
    /// Rooms latency placement has moved once. Kept in memory: a new leader may move a
    /// room a second time.
    moved: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Why a release did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The shard holding the pipeline is alive but did not release it.
    #[error("shard {shard} did not release the pipeline: {message}")]
    Shard {
        /// The shard.
        shard: String,
        /// What it said.
        message: String,
    },
    /// The store refused a write.
    #[error("{0}")]
    Store(String),
}

impl<S: LiveView + LiveWriter> Placer<S> {
    /// A placer over `store`, calling shards with `admin_token`.
    pub fn new(store: S, admin_token: String, strategy: Strategy) -> Self {
        Self {
            store,
            admin_token,
            strategy,
            moved: Default::default(),
        }
    }

    /// The live state it writes.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The admin client of a shard.
    pub fn admin(&self, admin_url: &str) -> ShardAdmin {
        ShardAdmin::new(admin_url, &self.admin_token)
    }

    /// Makes the live state host a declared room (its `record`, placed on a shard carrying
    /// `selector`), whose password (from its Secret) is `password`.
    pub async fn apply(
        &self,
        declared: &RoomRecord,
        selector: &BTreeMap<String, String>,
        password: Option<String>,
    ) -> RoomOutcome {
        let name = declared.name.clone();
        let existing = self.store.room(&name);
        // A room someone created by joining it may be declared afterwards: the Room takes
        // it over (same name, its settings from now on). Only another resource's room is
        // a conflict, so nobody can squat a name a teacher is about to declare.
        if let Some(other) = &existing
            && other.owner != declared.owner
            && other.owner.as_deref() != Some(tutti_store::AUTO_CREATED_OWNER)
        {
            return RoomOutcome::NameConflict(format!(
                "the room name {name} is taken by {}",
                other.owner.as_deref().unwrap_or("another room")
            ));
        }
        let mut record = declared.clone();
        record.password_hash = match password {
            None => None,
            Some(password) => match reuse_or_hash(existing.as_ref(), password).await {
                Some(hash) => Some(hash),
                None => {
                    return RoomOutcome::SecretMissing("the password could not be hashed".into());
                }
            },
        };
        self.place(record, selector).await
    }

    /// Makes the live state host the room `record` describes, on a shard carrying
    /// `selector`: where it is while that shard lives, elsewhere once it is gone.
    pub async fn place(
        &self,
        record: RoomRecord,
        selector: &BTreeMap<String, String>,
    ) -> RoomOutcome {
        let name = record.name.clone();
        let existing = self.store.room(&name);
        let route = self.store.route(&name);
        // A room stays where it is while its shard lives: moving it would cut every
        // participant off. A shard that is gone sends it elsewhere, and so does a draining
        // shard while the room is empty there (nobody is cut off, and the next to join
        // would be refused by the draining shard).
        let mut current = route.as_ref().and_then(|r| self.store.shard(&r.shard));
        let mut left_behind = None;
        if let Some(shard) = current.as_ref().filter(|s| s.draining)
            && self.is_empty_on(shard, &name).await
        {
            left_behind = current.take();
        }
        let shards = self.store.shards();
        let list = candidates(&shards, &self.store.routes(), &self.store.rooms(), &name);
        let latency = uses_latency(&record, &shards);
        let reports = if latency {
            self.store.latency_reports(&name)
        } else {
            Vec::new()
        };
        // A small room whose participants would hear each other sooner elsewhere moves
        // there, once; everyone on it reconnects by themselves (the route's epoch grows).
        let mut moved_from = None;
        if latency
            && let Some(shard) = &current
            && let Some(region) = shard.region.as_deref()
        {
            let regions = self.regions_that_fit(&list, &record, selector);
            let moved_before = self.has_moved(&name);
            if let Some(better) = should_move(region, &regions, &reports, moved_before)
                && let Ok(target) = place(
                    &in_region(&list, &better.region),
                    record.max_participants,
                    selector,
                    self.strategy,
                )
                && let Some(target) = shards.iter().find(|s| s.id == target.id)
            {
                tracing::info!(room = %name, from = %shard.id, to = %target.id,
                    region = %better.region, worst_rtt_ms = better.worst_rtt_ms,
                    "moving the room nearer its participants");
                moved_from = current.replace(target.clone());
            }
        }
        let (shard, moved) = match current {
            Some(shard) => (shard, moved_from.is_some()),
            None => {
                if latency && reports.is_empty() {
                    return RoomOutcome::AwaitingParticipants;
                }
                let regions = self.regions_that_fit(&list, &record, selector);
                let nearest = best_region(&regions, &reports).map(|best| best.region);
                let pool = match &nearest {
                    Some(region) if latency => in_region(&list, region),
                    _ => list.clone(),
                };
                match place(&pool, record.max_participants, selector, self.strategy) {
                    Ok(chosen) => match shards.into_iter().find(|s| s.id == chosen.id) {
                        Some(shard) => (shard, route.is_some()),
                        None => return RoomOutcome::NoShard("the chosen shard vanished".into()),
                    },
                    // Nowhere else to go: an empty room may as well wait on its draining
                    // shard.
                    Err(no_fit) => match left_behind.take() {
                        Some(draining) => (draining, false),
                        None => return RoomOutcome::NoShard(no_fit.to_string()),
                    },
                }
            }
        };
        let info = match self
            .admin(&shard.admin_url)
            .put_pipeline(&name, &record.pipeline_spec())
            .await
        {
            Ok(info) => info,
            Err(err) => {
                return RoomOutcome::ShardUnreachable {
                    shard: shard.id,
                    message: err.to_string(),
                };
            }
        };
        if existing.as_ref() != Some(&record)
            && let Err(err) = self.store.put_room(record).await
        {
            return RoomOutcome::ShardUnreachable {
                shard: shard.id,
                message: format!("room record not written: {err}"),
            };
        }
        if route.as_ref().map(|r| r.shard.as_str()) != Some(shard.id.as_str()) {
            let epoch = route.as_ref().map_or(0, |r| r.epoch);
            if let Err(err) = self.store.put_route(&name, &shard.id, epoch).await {
                return RoomOutcome::ShardUnreachable {
                    shard: shard.id,
                    message: format!("route not written: {err}"),
                };
            }
        }
        // Marked only once the room is there: a move that failed half-way (the target
        // shard did not answer) is tried again on the next pass, not given up for good.
        if moved_from.is_some() {
            self.mark_moved(&name);
        }
        if let Some(old) = moved_from
            && old.id != shard.id
            && let Err(err) = self.admin(&old.admin_url).release(&name).await
            && !err.is_not_found()
        {
            tracing::warn!(room = %name, shard = %old.id, %err, "pipeline left where the room moved from");
        }
        if let Some(old) = left_behind
            && old.id != shard.id
            && let Err(err) = self.admin(&old.admin_url).release(&name).await
            && !err.is_not_found()
        {
            // Garbage collection releases it later: the route no longer points there.
            tracing::warn!(room = %name, shard = %old.id, %err, "pipeline left on the draining shard");
        }
        RoomOutcome::Placed {
            shard: shard.id,
            participants: info.participants,
            moved,
        }
    }

    /// Regions with a shard that can take `record`.
    fn regions_that_fit(
        &self,
        list: &[Candidate],
        record: &RoomRecord,
        selector: &BTreeMap<String, String>,
    ) -> std::collections::BTreeSet<String> {
        list.iter()
            .filter_map(|c| c.region.clone())
            .filter(|region| {
                place(
                    &in_region(list, region),
                    record.max_participants,
                    selector,
                    self.strategy,
                )
                .is_ok()
            })
            .collect()
    }

    fn has_moved(&self, room: &str) -> bool {
        self.moved
            .lock()
            .map(|set| set.contains(room))
            .unwrap_or(true)
    }

    fn mark_forgotten(&self, room: &str) {
        if let Ok(mut set) = self.moved.lock() {
            set.remove(room);
        }
    }

    fn mark_moved(&self, room: &str) {
        if let Ok(mut set) = self.moved.lock() {
            set.insert(room.to_owned());
        }
    }

    /// Whether `shard` answers that nobody is in `room` there.
    async fn is_empty_on(&self, shard: &tutti_store::ShardRecord, room: &str) -> bool {
        match self.admin(&shard.admin_url).pipelines().await {
            Ok(pipelines) => pipelines
                .iter()
                .find(|p| p.name == room)
                .is_none_or(|p| p.participants == 0),
            // Unknown: leave the room where it is.
            Err(_) => false,
        }
    }

    /// Releases a room's pipeline and forgets its route and record. A shard that is gone
    /// has nothing left to release; a live shard that refuses is an error to retry.
    pub async fn release(&self, name: &str, owner: &str) -> Result<Option<String>, ReleaseError> {
        let owned = self
            .store
            .room(name)
            .is_none_or(|r| r.owner.as_deref() == Some(owner));
        if !owned {
            // The name belongs to another Room; this one never held anything.
            return Ok(None);
        }
        let mut released_on = None;
        if let Some(route) = self.store.route(name)
            && let Some(shard) = self.store.shard(&route.shard)
        {
            match self.admin(&shard.admin_url).release(name).await {
                Ok(()) => released_on = Some(shard.id.clone()),
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    return Err(ReleaseError::Shard {
                        shard: shard.id,
                        message: err.to_string(),
                    });
                }
            }
        }
        self.forget_records(name).await?;
        Ok(released_on)
    }
}

impl<S: LiveView + LiveWriter> Placer<S> {
    /// Forgets a room's route and record without asking its shard: for a shard that keeps
    /// refusing past the deletion deadline. Garbage collection releases the pipeline if the
    /// shard ever answers again.
    pub async fn forget(&self, name: &str, owner: &str) -> Result<(), ReleaseError> {
        let owned = self
            .store
            .room(name)
            .is_none_or(|r| r.owner.as_deref() == Some(owner));
        if owned {
            self.forget_records(name).await?;
        }
        Ok(())
    }

    async fn forget_records(&self, name: &str) -> Result<(), ReleaseError> {
        let store_error = |e: tutti_store::StoreError| ReleaseError::Store(e.to_string());
        // Reports a gateway could not remove (it stopped first) go with the room.
        for report in self.store.latency_reports(name) {
            self.store
                .delete_latency_report(name, &report.participant)
                .await
                .map_err(store_error)?;
        }
        self.mark_forgotten(name);
        self.store.delete_route(name).await.map_err(store_error)?;
        self.store.delete_room(name).await.map_err(store_error)
    }
}

/// The stored hash if it still matches the Secret's password, else a new one. argon2 runs
/// on the blocking pool.
async fn reuse_or_hash(existing: Option<&RoomRecord>, password: String) -> Option<String> {
    let stored = existing.and_then(|r| r.password_hash.clone());
    tokio::task::spawn_blocking(move || match stored {
        Some(hash) if verify_password(&hash, &password) => Some(hash),
        _ => hash_password(&password).ok(),
    })
    .await
    .ok()
    .flatten()
}

/// The candidates in `region`.
fn in_region(list: &[Candidate], region: &str) -> Vec<Candidate> {
    list.iter()
        .filter(|c| c.region.as_deref() == Some(region))
        .cloned()
        .collect()
}
