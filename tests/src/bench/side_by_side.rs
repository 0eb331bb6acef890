//! The shard and the plain relay measured at the same time, side by side: each under the
//! same load as in `fanout` (lean subscribers) and `baseline`, both children on the same
//! core (CPU 1 with `--pin`, the load generator on CPU 0), their windows opened together.
//!
//! This machine's speed drifts by up to 2× between days and by a quarter between runs a
//! minute apart, as much as the difference being measured. Run one after the other, the
//! shard and the relay meet different machines; run together, the same slow or fast
//! minute weighs on both, and the ratio of their CPU per packet is what is left. Sharing a
//! core, each is sometimes delayed by the other, which shows in latency (not compared
//! here) more than in CPU time.

use super::fanout::{SubscribersAs, run_tutti};
use super::report::Report;
use super::{RunArgs, WindowStart, baseline, pin_self};
use anyhow::Result;
use serde::Serialize;

/// What `side-by-side` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    /// `side-by-side`.
    pub mode: &'static str,
    /// The shard's report, as `fanout --subscribers-as lean` prints it.
    pub tutti: Report,
    /// The relay's report, as `baseline` prints it.
    pub relay: Report,
    /// The shard's CPU per forwarded packet over the relay's.
    pub cpu_ratio: f64,
}

/// Runs both and returns their reports.
pub async fn run(args: &RunArgs) -> Result<SideBySide> {
    if args.pin {
        pin_self(0)?;
    }
    let start = WindowStart::new(2);
    let (tutti, relay) = tokio::join!(
        run_tutti(args, SubscribersAs::Lean, Some(&start)),
        baseline::run_with(args, Some(&start)),
    );
    let (tutti, relay) = (tutti?, relay?);
    Ok(SideBySide {
        mode: "side-by-side",
        cpu_ratio: ratio(
            tutti.sfu_cpu_us_per_forwarded_packet,
            relay.sfu_cpu_us_per_forwarded_packet,
        ),
        tutti,
        relay,
    })
}

/// `a / b`, or 0 when `b` is not positive (a run that forwarded nothing).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_of_nothing_is_zero_not_infinite() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert_eq!(ratio(3.0, 0.0), 0.0);
    }
}
