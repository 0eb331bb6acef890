//! The Tutti SFU shard.
#![forbid(unsafe_code)]

pub mod demux;
pub mod media;
pub mod wire;
