//! Live cluster state: what changes every second and must be seen by every replica.
//!
//! * **Shard records**: each shard's addresses, load and draining flag, refreshed by its
//!   heartbeat. A record that is not refreshed expires, so a dead shard disappears by
//!   itself.
//! * **Routes**: which shard holds a room, with an epoch that grows each time the room is
//!   placed again.
//! * **Room records**: the settings gateways admit by (capacity, password hash, media).
//!
//! Readers (gateways) use [`LiveView`], answered from memory without I/O; the placement
//! authority (the operator, or local mode's placer) and the shards write through
//! [`LiveWriter`]. [`MemoryStore`] is the embedded implementation for local mode and tests;
//! `EtcdStore` (with the `etcd` feature) keeps the state in etcd, under one key prefix (default `/tutti/`):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `{prefix}shards/{id}` | [`ShardRecord`] (JSON), bound to the shard's lease | the shard (heartbeat) |
//! | `{prefix}routes/{room}` | [`Route`] (JSON), epoch checked on every write | the operator |
//! | `{prefix}rooms/{room}` | [`RoomRecord`] (JSON) | the operator; a gateway for rooms created on first join |
//!
//! Each process keeps a copy fed by a watch on the prefix; the copy is rebuilt from a full
//! read after a reconnect or when the watch falls behind a compaction.
#![forbid(unsafe_code)]

mod args;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub mod etcd_auth;
mod etcd_config;
mod memory;
pub mod password;
mod records;
pub mod snapshot;

pub use args::StoreArgs;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use etcd_config::EtcdConfig;

/// Whether this build can keep the live state in etcd (the `etcd` feature: etcd-client,
/// whose build needs `protoc`). Local mode does not need it.
pub const ETCD_SUPPORTED: bool = cfg!(feature = "etcd");
pub use memory::MemoryStore;
pub use records::{
    AUTO_CREATED_OWNER, AudioProfile, AudioSettings, BroadcastRecord, CascadeEdge, CascadeRecord,
    LatencyReport, MAX_REPORTED_REGIONS, MAX_REPORTED_RTT_MS, PlacementPolicy, RecordingRecord,
    RecordingSegment, RecordingStateRecord, RoomRecord, Route, ShardLoadSummary, ShardRecord,
    SvcCodec, valid_region,
};
pub use snapshot::RouteChange;

use std::time::Duration;

/// Reads of the live state, from a local copy: cheap enough to call per message.
pub trait LiveView: Send + Sync {
    /// The shard holding a room.
    fn route(&self, room: &str) -> Option<Route>;
    /// Every route, ordered by room.
    fn routes(&self) -> Vec<Route>;
    /// A live (unexpired) shard record.
    fn shard(&self, id: &str) -> Option<ShardRecord>;
    /// Every live shard record, ordered by id.
    fn shards(&self) -> Vec<ShardRecord>;
    /// A room's settings.
    fn room(&self, name: &str) -> Option<RoomRecord>;
    /// Every room record, ordered by name.
    fn rooms(&self) -> Vec<RoomRecord>;
    /// A broadcast.
    fn broadcast(&self, name: &str) -> Option<BroadcastRecord>;
    /// Every broadcast, ordered by name.
    fn broadcasts(&self) -> Vec<BroadcastRecord>;
    /// A broadcast's cascade, as applied.
    fn cascade(&self, broadcast: &str) -> Option<CascadeRecord>;
    /// Every cascade, ordered by broadcast.
    fn cascades(&self) -> Vec<CascadeRecord>;
    /// A recording asked for.
    fn recording(&self, name: &str) -> Option<RecordingRecord>;
    /// Every recording asked for, ordered by name.
    fn recordings(&self) -> Vec<RecordingRecord>;
    /// A recording as the control loop last saw it.
    fn recording_state(&self, name: &str) -> Option<RecordingStateRecord>;
    /// Every recording's state, ordered by name.
    fn recording_states(&self) -> Vec<RecordingStateRecord>;
    /// The latency reports of a room's participants, ordered by participant.
    fn latency_reports(&self, room: &str) -> Vec<LatencyReport>;
    /// Whether the local copy follows the source now. While it does not (etcd is
    /// unreachable), reads answer from the last known state.
    fn synced(&self) -> bool;
    /// Every route change from now on (a lagging receiver skips to the newest).
    fn watch_routes(&self) -> tokio::sync::broadcast::Receiver<RouteChange>;
    /// A counter that grows whenever a room record or a latency report changes: what
    /// placement of record-only rooms wakes on.
    fn watch_rooms(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be reached.
    Unavailable(String),
    /// A conditional write lost a race (the epoch moved).
    Conflict(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "live state store unavailable: {why}"),
            Self::Conflict(why) => write!(f, "conflicting write: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Writes of the live state.
pub trait LiveWriter: Send + Sync {
    /// Publishes (or refreshes) a shard's record; it expires `ttl` after the last refresh.
    fn heartbeat(
        &self,
        record: ShardRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Removes a shard's record at once (a graceful stop).
    fn remove_shard(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Points a room at a shard. `expected_epoch` is the epoch the writer last saw (`0` for
    /// none); the write fails with [`StoreError::Conflict`] if the route moved since.
    fn put_route(
        &self,
        room: &str,
        shard: &str,
        expected_epoch: u64,
    ) -> impl Future<Output = Result<Route, StoreError>> + Send;
    /// Forgets a room's route.
    fn delete_route(&self, room: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publishes a room's settings.
    fn put_room(&self, record: RoomRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a room's settings.
    fn delete_room(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publishes a broadcast.
    fn put_broadcast(
        &self,
        record: BroadcastRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a broadcast (its cascade is torn down by the operator).
    fn delete_broadcast(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publishes the cascade a broadcast runs on.
    fn put_cascade(
        &self,
        record: CascadeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a broadcast's cascade.
    fn delete_cascade(
        &self,
        broadcast: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Asks for a recording (or changes it: `stopped` stops it).
    fn put_recording(
        &self,
        record: RecordingRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a recording (the loop stops it where it runs and forgets its state).
    fn delete_recording(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publishes a recording's state.
    fn put_recording_state(
        &self,
        record: RecordingStateRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a recording's state.
    fn delete_recording_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Publishes a participant's round trips to each region.
    fn put_latency_report(
        &self,
        report: LatencyReport,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a participant's round trips.
    fn delete_latency_report(
        &self,
        room: &str,
        participant: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Drops history older than `keep` revisions (etcd); the revision compacted to.
    fn compact(&self, keep: i64) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}
