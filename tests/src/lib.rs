//! Test peers, shard harnesses and synthetic media shared by Tutti's cross-component
//! tests and the `tutti-bench` load generator.

pub mod admin;
pub mod aiortc;
pub mod bench;
pub mod coturn;
pub mod eventually;
pub mod gateway;
pub mod participant;
pub mod raw_peer;
pub mod shard;
pub mod signal_client;
pub mod synth;
