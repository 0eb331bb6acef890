//! The Tutti SFU shard.
#![deny(unsafe_code)]

pub mod demux;
pub mod media;
pub mod peer;
pub mod signal;
pub mod udp;
pub mod wire;
