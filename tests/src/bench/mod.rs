//! `tutti-bench`: what forwarding costs on this machine, next to what the machine can do.
//!
//! * `fanout` starts a shard as a child process (this same executable, `serve-shard`),
//!   so the shard's CPU time is its own, and connects P publishers and N subscribers as
//!   real WebRTC peers (the async `webrtc` crate: ICE, DTLS-SRTP). Publishers send
//!   synthetic Opus (50 packets/s) and VP8 (1 Mbit/s, 30 fps, key frame every 2 s);
//!   every payload carries its send time, so latency is publisher send to subscriber
//!   receive.
//!   With `--sfu janus` the same peers and load go through Janus VideoRoom instead
//!   (Debian's package as a child process, see [`crate::janus`]).
//! * `baseline` moves the same packet sizes at the same rates through a plain UDP relay
//!   child process (`relay`, with the same `recvmmsg`/`sendmmsg`/GSO I/O as the shard
//!   but no WebRTC), printing the same keys.
//!
//! * `side-by-side` runs `fanout` (lean subscribers) and `baseline` at the same time,
//!   both children on one core, and reports both with the ratio of their CPU per packet
//!   (see [`side_by_side`]).
//! * `broadcast` runs an origin and edge shards in this process, relaying a presenter to
//!   viewers seated over the edges (see [`broadcast`]).
//!
//! The window starts once every subscriber receives every track; packets sent during it
//! count. With `--pin`, the child runs on CPU 1 and the load generator on CPU 0.

pub mod baseline;
pub mod broadcast;
pub mod fanout;
pub mod report;
pub mod side_by_side;

use anyhow::{Context, Result};
use std::time::Duration;

/// Parameters shared by both modes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Publishers, each sending one Opus and one VP8 track.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers, each receiving every publisher's tracks.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Length of the measurement window.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Run the child on CPU 1 and the load generator on CPU 0.
    #[arg(long)]
    pub pin: bool,
    /// Video bitrate per publisher, bit/s.
    #[arg(long, default_value_t = 1_000_000)]
    pub video_bitrate: u64,
    /// The executable whose `serve-shard` runs the shard (default: this one): another
    /// build of the shard measured under this load generator, as in an A/B comparison.
    #[arg(long)]
    pub shard_exe: Option<std::path::PathBuf>,
}

impl RunArgs {
    /// The measurement window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }
}

/// Where runs meant to be measured together open their windows at once: each says it is
/// ready (every subscriber receiving), and all start when the last is.
pub struct WindowStart {
    barrier: tokio::sync::Barrier,
}

/// How long a run waits for the others to be ready before it gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

impl WindowStart {
    /// A start for `parties` runs.
    pub fn new(parties: usize) -> Self {
        Self {
            barrier: tokio::sync::Barrier::new(parties),
        }
    }

    /// This run is ready; returns when every run is.
    pub async fn ready(&self) -> Result<()> {
        tokio::time::timeout(READY_TIMEOUT, self.barrier.wait())
            .await
            .map(|_| ())
            .context("the other run never got ready")
    }
}

/// Pins every thread of this process to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) is needed for --pin")?;
    anyhow::ensure!(status.success(), "taskset failed");
    Ok(())
}

/// Waits until packets still in flight have arrived: until `count` (packets received so
/// far) stops growing between two looks 100 ms apart, for at most 3 s.
pub async fn until_arrivals_settle<F, Fut>(mut count: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut last = count().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count().await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Pins every thread of process `pid` to `cpu`.
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-cp", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) is needed for --pin")?;
    anyhow::ensure!(status.success(), "taskset failed");
    Ok(())
}

/// Sets the niceness of every thread of this process (`renice` from util-linux; threads
/// started later inherit it from their creator, as do processes started later).
pub fn renice_self(nice: i32) -> Result<()> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("/proc/self/task")? {
        threads.push(entry?.file_name().to_string_lossy().into_owned());
    }
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&threads)
        .stdout(std::process::Stdio::null())
        .status()
        .context("renice (util-linux)")?;
    anyhow::ensure!(
        status.success(),
        "cannot set the load generator's niceness to {nice}"
    );
    Ok(())
}

/// CPU seconds this process has used.
pub fn own_cpu_seconds() -> f64 {
    tutti_sfu::procstat::cpu_seconds().unwrap_or(0.0)
}
