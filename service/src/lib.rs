//! What every Tutti process shares and none owns: logging and signals ([`process`]), the
//! HTTP server with header timeouts and a connection cap ([`http`]), token buckets
//! ([`ratelimit`]), random tokens ([`token`]) and the default advertised address
//! ([`net`]). It depends on no media or control-plane crate, so the gateway, the shard and
//! the operator can all take it.

pub mod http;
pub mod net;
pub mod process;
pub mod ratelimit;
pub mod token;
