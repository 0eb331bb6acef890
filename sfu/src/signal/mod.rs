//! The shard-side signaling endpoint the gateway relays to.

pub use tutti_shard_api::protocol;
pub mod session;
