//! What the SFU shard and the programs that talk to it share: the shard's signaling
//! protocol (gateways, test clients), its admin API types and an HTTP client for them
//! (operator, local mode). Kept apart from the shard itself so that the operator and the
//! gateway do not build a WebRTC stack to speak to one.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audio;
pub mod client;
pub mod hls;
pub mod nickname;
pub mod protocol;
pub mod recording;
pub mod simulcast;
