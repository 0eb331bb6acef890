//! The Tutti operator: the Kubernetes side of the control plane. Placement, garbage
//! collection, cascades, recordings and scaling decisions are `tutti_control`'s; here they
//! meet Room, Broadcast, Recording and ShardPool resources, Secrets, Pods and Events.
//!
//! Pure logic first — [`validation`] (is the Room sound), [`conditions`] (what the status
//! says), [`backoff`] (when to retry), [`leader`]'s decisions — then the I/O around it:
//! [`controller`] (Rooms), [`broadcasts`], [`recordings`], [`shardpool`] and
//! [`shard_pods`] (pools and their pods), [`run`] (wiring).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod broadcasts;
pub mod conditions;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod recordings;
pub mod run;
pub mod shard_pods;
pub mod shardpool;
pub mod validation;
