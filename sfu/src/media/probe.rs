//! Probing a subscriber's downlink before moving it up: for a tenth of a second the shard
//! tops up what it sends with padding, to a tenth past the rate the next layer needs. If the
//! estimate saw no congestion, little was lost and the subscriber received the packets at
//! least at that rate, the path is proven to carry it and the allocation may count on it;
//! if not, the viewer saw nothing change, and the next probe waits twice as long. A layer
//! far above what the path has carried is reached in steps, each at most twice that.

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
/// The longest wait between probes after failures: how late a viewer notices that its
/// path has widened. libwebrtc probes an application-limited path every 5 s; at 32 s a
/// viewer behind 130 kbit/s took 20–53 s to climb to its next temporal layer once the link
/// widened to 170. A failed probe fills the bottleneck's queue with what it sent beyond
/// the path's rate, which may cost sound; in steps of at most [`MAX_STEP`] that is at most
/// about a tenth of a second of the path's time. (Straight at a layer three times the path,
/// as before the steps, it was about a third of a second, and such probes waited up to
/// 32 s.)
pub const MAX_INTERVAL: Duration = Duration::from_secs(8);
/// Loss during a probe above which it failed.
pub const MAX_PROBE_LOSS: f64 = 0.05;
/// Padding below this rate is not worth a probe.
pub const MIN_PADDING_BPS: f64 = 20_000.0;
/// Padding bytes released per call at most (the shard calls every few tens of ms).
pub const MAX_BURST_BYTES: usize = 8 * 1024;
/// A probe aims at most this many times what the path has carried, as libwebrtc's
/// exponential probes do. A probe that fails fills the bottleneck's queue with what it sent
/// beyond the path's rate, and the sound queued behind that may arrive too late or not at
/// all: straight at 640-pixel SVC (about 850 kbit/s) behind 300 kbit/s, each failure cost
/// AV1 SVC's sound up to 1.7 % of its packets in a measured ten seconds.
pub const MAX_STEP: f64 = 2.0;

/// What a probe is asked to reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The rate sent now, which the probe tops up with padding.
    pub sending_bps: f64,
    /// The rate the allocation needs to give more.
    pub goal_bps: f64,
    /// The most the path has shown it carries (the usable estimate); the probe aims at no
    /// more than [`MAX_STEP`] times it.
    pub carried_bps: f64,
}

impl Target {
    /// What this probe aims at: the goal, or a step towards it.
    pub fn aim_bps(&self) -> f64 {
        self.goal_bps.min(self.carried_bps * MAX_STEP)
    }
}

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
        /// The rate proven: what the probe's window arrived at, up to what it sent (its
        /// goal and the overshoot), as libwebrtc takes a probe's rate. Proving the goal
        /// alone left no margin: the next layer's peak over the last four seconds had
        /// often grown by the time the probe was judged, and a viewer behind a link that
        /// had just widened proved goal after goal, 2 s apart, without moving up.
        proven_bps: f64,
    },
    /// It did not reach its goal.
    Failed {
        /// What the path carried on the way, where the probe met no congestion and little
        /// loss: the rate its window arrived at, a tenth off for the noise of measuring a
        /// tenth of a second. A path narrower than the next layer may still be wider than
        /// what an earlier cut left the allocation (a cut to what arrived while a
        /// subscriber's first seconds overfilled the path held a viewer behind 300 kbit/s
        /// at half the low layer's frames, its probes towards the next layer all failing).
        carried_bps: Option<f64>,
    },
}

impl ProbeResult {
    /// The rate the path has shown it carries, if this result proves one.
    pub fn carried_bps(self) -> Option<f64> {
        match self {
            Self::Succeeded { proven_bps } => Some(proven_bps),
            Self::Failed { carried_bps } => carried_bps,
        }
    }
}

/// The share of a failed probe's received rate that it counts as carried.
pub const CARRIED_SHARE: f64 = 0.9;

#[derive(Debug, Clone, Copy)]
struct Active {
    started: Instant,
    /// The rate this probe sends at and must be received at: the goal, or a step to it.
    aim_bps: f64,
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

    /// Starts a probe towards `target` (or a step towards it), if none runs, the wait since
    /// the last is over and the padding needed is worth it.
    pub fn start(&mut self, now: Instant, target: Target, before: Evidence) -> bool {
        let aim_bps = target.aim_bps();
        let padding_bps = aim_bps * PROBE_OVERSHOOT - target.sending_bps;
        if self.active.is_some() || now < self.next_allowed || padding_bps < MIN_PADDING_BPS {
            return false;
        }
        self.active = Some(Active {
            started: now,
            aim_bps,
            before,
        });
        true
    }

    /// Padding bytes to send now to keep the probe at its rate, given `sent` bytes (media
    /// and padding) sent since it started: what its sending tenth of a second owes so far,
    /// then nothing. Counting the media as it goes rather than at its average rate keeps a
    /// probe at its rate whatever frames fall into its window: at 5 frames a second a
    /// tenth of a second holds no frame or two, and padding for the average would send a
    /// window short (then judged a narrow path) or long.
    pub fn padding_due(&self, now: Instant, sent: usize) -> usize {
        let Some(probe) = &self.active else {
            return 0;
        };
        let elapsed = now
            .saturating_duration_since(probe.started)
            .min(PROBE_DURATION);
        let owed = (probe.aim_bps * PROBE_OVERSHOOT * elapsed.as_secs_f64() / 8.0) as usize;
        owed.saturating_sub(sent).min(MAX_BURST_BYTES)
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
        let received_bps = received_bps.unwrap_or(0.0);
        let narrow = received_bps < probe.aim_bps;
        let result = if congested || lossy || narrow || arrived == 0 {
            self.interval = (self.interval * 2).min(MAX_INTERVAL);
            let clean = !congested && !lossy && arrived > 0;
            ProbeResult::Failed {
                carried_bps: (clean && received_bps > 0.0).then_some(received_bps * CARRIED_SHARE),
            }
        } else {
            self.interval = FIRST_INTERVAL;
            ProbeResult::Succeeded {
                proven_bps: received_bps.min(probe.aim_bps * PROBE_OVERSHOOT),
            }
        };
        self.next_allowed = now + self.interval;
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe towards `goal_bps` while `sending_bps` goes out, on a path that has carried
    /// half the goal (so the goal is no step beyond it).
    fn target(goal_bps: f64, sending_bps: f64) -> Target {
        Target {
            sending_bps,
            goal_bps,
            carried_bps: goal_bps / MAX_STEP,
        }
    }

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
            !prober.start(t0, target(900_000.0, 300_000.0), Evidence::default()),
            "too soon"
        );
        let t1 = t0 + FIRST_INTERVAL;
        assert!(
            !prober.start(t1, target(300_000.0, 318_000.0), Evidence::default()),
            "12 kbit/s of padding is not worth a probe"
        );
        assert!(prober.start(t1, target(900_000.0, 300_000.0), Evidence::default()));
        assert!(
            !prober.start(t1, target(900_000.0, 300_000.0), Evidence::default()),
            "one at a time"
        );
        // 990 kbit/s (the goal and the overshoot) for 100 ms is 12,375 bytes, media and
        // padding together. The media comes as a 3,750-byte frame 60 ms in (300 kbit/s on
        // average): padding fills the silence before it, and less is due after it.
        let (mut sent, mut padding) = (0, 0);
        for tick in 1..=12u32 {
            let now = t1 + Duration::from_millis(10) * tick;
            if tick == 6 {
                sent += 3_750;
            }
            let due = prober.padding_due(now, sent);
            sent += due;
            padding += due;
        }
        assert!((12_300..=12_375).contains(&sent), "{sent} bytes in 100 ms");
        assert_eq!(padding, sent - 3_750);
        let before_the_frame = prober.padding_due(t1 + Duration::from_millis(50), 0);
        assert!(
            (6_150..=6_190).contains(&before_the_frame),
            "{before_the_frame} bytes owed after 50 ms of silence"
        );
        assert_eq!(prober.padding_until(), Some(t1 + PROBE_DURATION));
        assert_eq!(prober.padding_due(t1 + Duration::from_secs(1), sent), 0);
    }

    #[test]
    fn success_proves_what_arrived_and_failure_backs_off() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        let mut at = t0 + FIRST_INTERVAL;
        assert!(prober.start(at, target(900_000.0, 300_000.0), evidence(0, 100, 0)));
        assert_eq!(
            prober.finish(at + PROBE_DURATION, evidence(0, 150, 0), Some(900_000.0)),
            None,
            "feedback pending"
        );
        at += PROBE_DURATION + FEEDBACK_GRACE;
        // Received past the goal, below what was sent: the path carries what arrived.
        assert_eq!(
            prober.finish(at, evidence(0, 200, 1), Some(910_000.0)),
            Some(ProbeResult::Succeeded {
                proven_bps: 910_000.0
            })
        );
        // Next one 2 s later; it meets congestion: 4 s, then 8 s.
        let mut waits = Vec::new();
        for _ in 0..3 {
            let mut wait = Duration::ZERO;
            while !prober.start(at + wait, target(900_000.0, 300_000.0), evidence(0, 200, 1)) {
                wait += Duration::from_millis(100);
            }
            waits.push(wait);
            at += wait + PROBE_DURATION + FEEDBACK_GRACE;
            assert_eq!(
                prober.finish(at, evidence(1, 300, 1), Some(900_000.0)),
                Some(ProbeResult::Failed { carried_bps: None })
            );
        }
        assert_eq!(
            waits,
            [FIRST_INTERVAL, FIRST_INTERVAL * 2, FIRST_INTERVAL * 4]
        );
    }

    #[test]
    fn a_goal_far_above_what_the_path_carried_is_reached_in_steps() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        let mut at = t0 + FIRST_INTERVAL;
        // 640-pixel SVC (900 kbit/s) on a path that has carried 300 while 200 is sent: the
        // first probe aims at 600, padding 460 kbit/s rather than 790.
        let far = Target {
            sending_bps: 200_000.0,
            goal_bps: 900_000.0,
            carried_bps: 300_000.0,
        };
        assert_eq!(far.aim_bps(), 600_000.0);
        assert!(prober.start(at, far, evidence(0, 100, 0)));
        // 660 kbit/s (the step and the overshoot) for 50 ms.
        let owed = prober.padding_due(at + PROBE_DURATION / 2, 0);
        assert!((4_120..=4_125).contains(&owed), "{owed} bytes owed");
        at += PROBE_DURATION + FEEDBACK_GRACE;
        // Carried: the step is proven, not the goal.
        assert_eq!(
            prober.finish(at, evidence(0, 200, 0), Some(610_000.0)),
            Some(ProbeResult::Succeeded {
                proven_bps: 610_000.0
            })
        );
        // The next, from the 610 now carried, aims at the goal itself.
        let near = Target {
            carried_bps: 610_000.0,
            ..far
        };
        assert_eq!(near.aim_bps(), 900_000.0);
        assert!(!prober.start(at, near, evidence(0, 200, 0)), "too soon");
        at += FIRST_INTERVAL;
        assert!(prober.start(at, near, evidence(0, 200, 0)));
        at += PROBE_DURATION + FEEDBACK_GRACE;
        // Packets that arrive bunched measure faster than they were sent: no more than
        // was sent is proven.
        assert_eq!(
            prober.finish(at, evidence(0, 300, 0), Some(1_200_000.0)),
            Some(ProbeResult::Succeeded {
                proven_bps: 900_000.0 * PROBE_OVERSHOOT
            })
        );
    }

    #[test]
    fn a_probe_received_slower_than_sent_found_a_narrower_path() {
        let t0 = Instant::now();
        // 300 kbit/s of a 330 kbit/s goal reads as 91 %: narrower.
        for received in [Some(500_000.0), Some(0.91 * 900_000.0), None] {
            let mut prober = Prober::new(t0);
            let at = t0 + FIRST_INTERVAL;
            assert!(prober.start(at, target(900_000.0, 300_000.0), evidence(0, 100, 0)));
            // What arrived, the path carried: a tenth off that counts.
            assert_eq!(
                prober.finish(at + Duration::from_secs(1), evidence(0, 200, 0), received),
                Some(ProbeResult::Failed {
                    carried_bps: received.map(|bps| bps * CARRIED_SHARE)
                }),
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
            assert!(prober.start(at, target(900_000.0, 300_000.0), evidence(0, 100, 0)));
            // Nothing is counted as carried from a probe that lost or saw nothing.
            assert_eq!(
                prober.finish(at + Duration::from_secs(1), after, Some(900_000.0)),
                Some(ProbeResult::Failed { carried_bps: None }),
                "{after:?}"
            );
        }
    }

    #[test]
    fn waits_grow_to_the_maximum_and_stop_there() {
        let t0 = Instant::now();
        let mut prober = Prober::new(t0);
        let mut at = t0;
        for _ in 0..20 {
            at += MAX_INTERVAL;
            assert!(prober.start(at, target(900_000.0, 0.0), Evidence::default()));
            at += Duration::from_secs(1);
            prober.finish(at, evidence(1, 0, 0), None);
        }
        assert_eq!(prober.interval, MAX_INTERVAL);
    }
}
