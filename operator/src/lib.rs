//! The Tutti operator: it places Rooms on SFU shards and keeps them true, and reclaims
//! media pipelines that nothing owns.
//!
//! Pure logic first — [`placement`] (which shard), [`latency`] (which region),
//! [`validation`] (is the Room sound),
//! [`conditions`] (what the status says), [`backoff`] (when to retry), [`leader`]'s
//! decisions — then the I/O around it: [`placer`] (live state and shard admin APIs),
//! [`gc`] (orphaned pipelines), [`controller`] (the Kubernetes side), [`run`] (wiring).
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod backoff;
pub mod broadcasts;
pub mod conditions;
pub mod controller;
pub mod demand;
pub mod gc;
pub mod latency;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod placer;
pub mod records;
pub mod run;
pub mod shard_pods;
pub mod shardpool;

/// Cascade planning lives in its own crate (local mode drives cascades too).
pub use tutti_cascade as cascade;
pub mod validation;
