//! Probing a subscriber's downlink before moving it up: for a tenth of a second the shard
//! adds padding to what it sends, a tenth past the rate the next layer needs. If the
//! estimate saw no congestion, little was lost and the subscriber received the packets at
//! least at that rate, the path is proven to carry it and the allocation may count on it;
//! if not, the viewer saw nothing change, and the next probe waits twice as long.

use std::time::{Duration, Instant};

/// How long a probe sends padding: long enough to measure a rate from the arrivals, short
/// enough that a bottleneck it overshoots queues little (libwebrtc's clusters are shorter
/// still, at precisely paced rates).
pub const PROBE_DURATION: Duration = Duration::from_millis(100);
/// A probe sends this much more than its goal, and succeeds only if its packets arrive at
/// the goal's rate or faster: a margin for the noise of measuring a tenth of a second of
/// small packets, taken above the goal rather than below it. (Judged at 80 % of the goal,
/// a 300 kbit/s hotel link passed a 330 kbit/s probe, and the layer it let in overloaded
/// the path.)
pub const PROBE_OVERSHOOT: f64 = 1.1;
/// How long after a probe its feedback is waited for.
pub const FEEDBACK_GRACE: Duration = Duration::from_millis(300);
/// Between probes at first, and again after one succeeds.
pub const FIRST_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait between probes, after failures.
pub const MAX_INTERVAL: Duration = Duration::from_secs(32);
/// Loss during a probe above which it failed.
pub const MAX_PROBE_LOSS: f64 = 0.05;
/// Padding below this rate is not worth a probe.
pub const MIN_PADDING_BPS: f64 = 20_000.0;
/// Padding bytes released per call at most (the shard calls every few tens of ms).
pub const MAX_BURST_BYTES: usize = 8 * 1024;

/// What the estimate has seen so far, as counts a probe compares before and after.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// Times the estimate went down (congestion).
    pub decreases: u64,
    /// Packets the subscriber reported arrived.
    pub arrived: u64,
    /// Packets it reported lost.
    pub lost: u64,
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeResult {
    /// The path carried this rate without congestion.
    Succeeded {
        /// The rate proven.
        proven_bps: f64,
    },
    /// It did not.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    started: Instant,
    goal_bps: f64,
    padding_bps: f64,
    padding_sent: u64,
    before: Evidence,
}

/// One subscriber's prober.
#[derive(Debug)]
pub struct Prober {
    interval: Duration,
    next_allowed: Instant,
    active: Option<Active>,
}

impl Prober {
    /// A prober whose first probe may start [`FIRST_INTERVAL`] after `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            interval: FIRST_INTERVAL,
            next_allowed: now + FIRST_INTERVAL,
            active: None,
        }
    }

    /// Whether a probe is running (or waiting for its feedback).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether a probe is in its sending tenth of a second at `now`.
    pub fn is_padding(&self, now: Instant) -> bool {
        self.active
            .is_some_and(|p| now.saturating_duration_since(p.started) < PROBE_DURATION)
    }

    /// Starts a probe towards `goal_bps` while `sending_bps` goes out, if none runs, the
    /// wait since the last is over and the padding needed is worth it.
    pub fn start(
        &mut self,
        now: Instant,
        goal_bps: f64,
        sending_bps: f64,
        before: Evidence,
    ) -> bool {
        let padding_bps = goal_bps * PROBE_OVERSHOOT - sending_bps;
        if self.active.is_some() || now < self.next_allowed || padding_bps < MIN_PADDING_BPS {
            return false;
        }
        self.active = Some(Active {
            started: now,
            goal_bps,
            padding_bps,
            padding_sent: 0,
            before,
        });
        true
    }

    /// Padding bytes to send now to keep the probe at its rate: what its sending tenth of
    /// a second owes so far, then nothing.
    pub fn padding_due(&self, now: Instant) -> usize {
        let Some(probe) = &self.active else {
            return 0;
        };
        let elapsed = now
            .saturating_duration_since(probe.started)
            .min(PROBE_DURATION);
        let owed = (probe.padding_bps * elapsed.as_secs_f64() / 8.0) as u64;
        (owed.saturating_sub(probe.padding_sent) as usize).min(MAX_BURST_BYTES)
    }

    /// `bytes` of padding went out.
    pub fn sent(&mut self, bytes: usize) {
        if let Some(probe) = &mut self.active {
            probe.padding_sent += bytes as u64;
        }
    }

    /// When a running probe's padding stops.
    pub fn padding_until(&self) -> Option<Instant> {
        self.active.map(|p| p.started + PROBE_DURATION)
    }

    /// Ends a probe whose feedback has had time to come, judging it by what the estimate
    /// has seen since it started and the rate its packets were received at.
    pub fn finish(
        &mut self,
        now: Instant,
        after: Evidence,
        received_bps: Option<f64>,
    ) -> Option<ProbeResult> {
        let probe = self.active?;
        if now.saturating_duration_since(probe.started) < PROBE_DURATION + FEEDBACK_GRACE {
            return None;
        }
        self.active = None;
        let arrived = after.arrived.saturating_sub(probe.before.arrived);
        let lost = after.lost.saturating_sub(probe.before.lost);
        let lossy = lost as f64 > MAX_PROBE_LOSS * (arrived + lost) as f64;
        let congested = after.decreases != probe.before.decreases;
        let narrow = received_bps.is_none_or(|bps| bps < probe.goal_bps);
        let result = if congested || lossy || narrow || arrived == 0 {
            self.interval = (self.interval * 2).min(MAX_INTERVAL);
            ProbeResult::Failed
        } else {
            self.interval = FIRST_INTERVAL;
            ProbeResult::Succeeded {
                proven_bps: probe.goal_bps,
            }
        };
        self.next_allowed = now + self.interval;
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(decreases: u64, arrived: u64, lost: u64) -> Evidence {
        Evidence {
            decreases,
            arrived,
            lost,
        }
    }

    #[test]
    fn a_probe_pads_past_its_goal_for_a_tenth_of_a_second() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        assert!(
            !prober.start(t0, 900_000.0, 300_000.0, Evidence::default()),
            "too soon"
        );
        let t1 = t0 + FIRST_INTERVAL;
        assert!(
            !prober.start(t1, 300_000.0, 318_000.0, Evidence::default()),
            "12 kbit/s of padding is not worth a probe"
        );
        assert!(prober.start(t1, 900_000.0, 300_000.0, Evidence::default()));
        assert!(
            !prober.start(t1, 900_000.0, 300_000.0, Evidence::default()),
            "one at a time"
        );
        // 990 kbit/s (the goal and the overshoot) over the 300 sent: 690 kbit/s of padding,
        // 862 bytes per 10 ms tick, 8,625 bytes in 100 ms.
        let mut sent = 0;
        for tick in 1..=12u32 {
            let now = t1 + Duration::from_millis(10) * tick;
            let due = prober.padding_due(now);
            prober.sent(due);
            sent += due;
        }
        assert!((8_550..=8_625).contains(&sent), "{sent} bytes in 100 ms");
        assert_eq!(prober.padding_until(), Some(t1 + PROBE_DURATION));
        assert_eq!(prober.padding_due(t1 + Duration::from_secs(1)), 0);
    }

    #[test]
    fn success_proves_the_goal_and_failure_backs_off() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        let mut at = t0 + FIRST_INTERVAL;
        assert!(prober.start(at, 900_000.0, 300_000.0, evidence(0, 100, 0)));
        assert_eq!(
            prober.finish(at + PROBE_DURATION, evidence(0, 150, 0), Some(900_000.0)),
            None,
            "feedback pending"
        );
        at += PROBE_DURATION + FEEDBACK_GRACE;
        // Received at the goal, below what was sent: the path carries the goal.
        assert_eq!(
            prober.finish(at, evidence(0, 200, 1), Some(910_000.0)),
            Some(ProbeResult::Succeeded {
                proven_bps: 900_000.0
            })
        );
        // Next one 2 s later; it meets congestion: 4 s, then 8 s.
        let mut waits = Vec::new();
        for _ in 0..3 {
            let mut wait = Duration::ZERO;
            while !prober.start(at + wait, 900_000.0, 300_000.0, evidence(0, 200, 1)) {
                wait += Duration::from_millis(100);
            }
            waits.push(wait);
            at += wait + PROBE_DURATION + FEEDBACK_GRACE;
            assert_eq!(
                prober.finish(at, evidence(1, 300, 1), Some(900_000.0)),
                Some(ProbeResult::Failed)
            );
        }
        assert_eq!(
            waits,
            [FIRST_INTERVAL, FIRST_INTERVAL * 2, FIRST_INTERVAL * 4]
        );
    }

    #[test]
    fn a_probe_received_slower_than_sent_found_a_narrower_path() {
        let t0 = Instant::now();
        // 300 kbit/s of a 330 kbit/s goal reads as 91 %: narrower.
        for received in [Some(500_000.0), Some(0.91 * 900_000.0), None] {
            let mut prober = Prober::new(t0);
            let at = t0 + FIRST_INTERVAL;
            assert!(prober.start(at, 900_000.0, 300_000.0, evidence(0, 100, 0)));
            assert_eq!(
                prober.finish(at + Duration::from_secs(1), evidence(0, 200, 0), received),
                Some(ProbeResult::Failed),
                "{received:?}"
            );
        }
    }

    #[test]
    fn loss_or_silence_during_a_probe_is_a_failure() {
        let t0 = Instant::now();
        for after in [evidence(0, 190, 10), evidence(0, 100, 0)] {
            let mut prober = Prober::new(t0);
            let at = t0 + FIRST_INTERVAL;
            assert!(prober.start(at, 900_000.0, 300_000.0, evidence(0, 100, 0)));
            assert_eq!(
                prober.finish(at + Duration::from_secs(1), after, Some(900_000.0)),
                Some(ProbeResult::Failed),
                "{after:?}"
            );
        }
    }

    #[test]
    fn waits_never_exceed_the_maximum() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        let mut at = t0;
        for _ in 0..20 {
            at += MAX_INTERVAL;
            assert!(prober.start(at, 900_000.0, 0.0, Evidence::default()));
            at += Duration::from_secs(1);
            prober.finish(at, evidence(1, 0, 0), None);
        }
        assert!(prober.interval <= MAX_INTERVAL);
    }
}
