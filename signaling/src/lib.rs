//! The Tutti signaling gateway: client WebSocket protocol, admission rules, routing
//! to shards, TURN credentials, the web client and local all-in-one mode.
//!
//! It is built by the gateway issue; the shard-side signaling endpoint it relays to
//! lives in `tutti-sfu` (`tutti_sfu::signal`).
