//! The Tutti SFU shard: every WebRTC peer of the shard on one UDP port, rooms
//! (pipelines), forwarding, the admin API and the shard-side signaling endpoint.
#![deny(unsafe_code)]

#[cfg(any(test, feature = "sim"))]
pub mod alloc_count;
pub mod cli;
pub mod config;
pub mod demux;
pub mod drain;
pub mod heartbeat;
pub mod hls;
pub mod media;
pub mod media_socket;
pub mod metrics;
pub mod peer;
pub mod pipe_end;
pub mod procstat;
pub mod recorder;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod signal;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod srtp;
pub mod tcp;
pub mod udp;
pub mod wire;

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_count::CountingAllocator = alloc_count::CountingAllocator;

/// A map the forwarding path reads for every packet or every copy (connections, tracks,
/// SSRCs, peers' addresses). foldhash, randomly seeded per process, hashes a key in a few
/// nanoseconds where the standard SipHash took tens: 1.5 % of the shard's CPU at 50
/// subscribers. Its keys are the core's own ids and addresses of authenticated peers,
/// never something an unauthenticated sender can fill.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The admin API client (it lives in `tutti-shard-api`).
pub use tutti_shard_api::client as admin_client;
