//! The Tutti signaling gateway: the client WebSocket protocol, room admission, relaying
//! each client to the shard that holds its room, TURN credentials, the web client, and
//! local all-in-one mode.
//!
//! Module map: [`protocol`] (what clients send and receive), [`admission`] (who may
//! join), [`rooms`] (which rooms exist), [`routing`] (which shard holds a room),
//! [`shard_link`] (a participant's channel to its shard), [`session`] (one client's
//! session), [`turn`] (ICE servers), [`server`] (HTTP routes), [`web`] (the client),
//! [`wish`] (WHIP and WHEP over HTTP), [`metrics`], [`config`], [`local`] (the one-process system), [`cluster`] (a gateway
//! among several, over etcd).
#![forbid(unsafe_code)]

pub mod admission;
#[cfg(feature = "etcd")]
pub mod cluster;
pub mod config;
pub mod guesses;
pub mod hls;
#[cfg(feature = "local")]
pub mod local;
pub mod metrics;
pub mod password_queue;
pub mod protocol;
pub mod read_budget;
pub mod recordings;
pub mod rooms;
pub mod routing;
pub mod seating;
pub mod server;
pub mod session;
pub mod shard_link;
pub mod shard_urls;
pub mod sockets;
pub mod turn;
pub mod web;
pub mod wish;
