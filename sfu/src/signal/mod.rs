//! The shard-side signaling endpoint the gateway relays to.

pub mod protocol;
pub mod session;
