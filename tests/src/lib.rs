//! Test peers, shard harnesses and synthetic media shared by Tutti's cross-component
//! tests and the `tutti-bench` load generator.

pub mod admin;
pub mod aiortc;
pub mod bench;
pub mod coturn;
pub mod etcd;
pub mod eventually;
pub mod gateway;
pub mod janus;
pub mod lean_viewer;
pub mod netsim;
pub mod participant;
pub mod raw_peer;
pub mod receiver_feedback;
pub mod s3;
pub mod shard;
pub mod signal_client;
/// Synthetic media (it lives with the shard's virtual-clock harness).
pub use tutti_sfu::sim::synth;

/// Installs test logging: `RUST_LOG`, else warnings without the WebRTC stack's noise.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "warn,rtc=error,rtc_ice=error,rtc_dtls=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One series' value in a Prometheus text exposition (`name{labels}` exactly as exposed).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}
