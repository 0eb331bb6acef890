//! The control plane without Kubernetes: where rooms go, when pipelines are orphaned,
//! how broadcasts cascade, how many shards a pool needs. The operator wraps it in
//! Kubernetes controllers; a standalone operator and the gateway's local mode run its
//! [`loops`] over the live state directly, so local mode places and cascades exactly as a
//! cluster does.
//!
//! Pure decisions first — [`placement`] (which shard), [`latency`] (which region),
//! [`autoscale`] (how many shards), [`cascade::plan`] (which edges), [`demand`] (what found
//! no shard), [`outcome`] (what placing came to) — then the I/O around them: [`placer`]
//! (live state and shard admin APIs), [`records`] (rooms without a resource),
//! [`cascade::driver`], [`recordings`] (recorders on the rooms' shards), [`gc`] (orphaned
//! pipelines) and [`loops`] (running them).

pub mod autoscale;
pub mod cascade;
pub mod demand;
pub mod gc;
pub mod hls;
pub mod latency;
pub mod loops;
pub mod outcome;
pub mod placement;
pub mod placer;
pub mod recordings;
pub mod records;
