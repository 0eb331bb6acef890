//! Loss detection for a stream the shard receives without `rtc`'s help: which sequence
//! numbers are missing, and when to ask for each (again). An edge reads a relay pipe from
//! its parent this way, and the shard a publisher's streams (media::uplink_feedback, with
//! a slower retry for a browser's uplink).
//!
//! A gap is asked for at once (a link between shards rarely reorders, and every
//! millisecond of repair is a millisecond of the viewers' latency), then again every
//! `retry` while it stays missing, at most `max_asks` times and never once older than
//! `max_age` (the retransmission buffers upstream keep about a second). Time is an input:
//! tests run it on a virtual clock.

use crate::srtp::estimate_index;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How a [`LossTracker`] asks.
#[derive(Debug, Clone, Copy)]
pub struct LossConfig {
    /// Between two requests for the same packet: about a round trip.
    pub retry: Duration,
    /// Requests per missing packet.
    pub max_asks: u8,
    /// A packet missing longer than this is given up.
    pub max_age: Duration,
    /// Missing packets tracked at most; a larger jump is taken as a new start.
    pub max_missing: usize,
    /// How long a gap waits before it is first asked for: a packet only reordered
    /// usually arrives within it.
    pub hold: Duration,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            retry: Duration::from_millis(30),
            max_asks: 5,
            max_age: Duration::from_secs(1),
            max_missing: 512,
            hold: Duration::ZERO,
        }
    }
}

/// What one arrival was to a [`LossTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than any before (the first packet too).
    New,
    /// One that was missing: a repair, or a late packet.
    Repair,
    /// Older than the newest and not missing: a second copy, or one given up on.
    Old,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    since: Instant,
    next_ask: Instant,
    asks: u8,
}

/// The losses of one received stream.
#[derive(Debug)]
pub struct LossTracker {
    config: LossConfig,
    /// The highest extended sequence number received.
    highest: Option<u64>,
    missing: BTreeMap<u64, Missing>,
}

impl LossTracker {
    /// A tracker that has seen nothing.
    pub fn new(config: LossConfig) -> Self {
        Self {
            config,
            highest: None,
            missing: BTreeMap::new(),
        }
    }

    /// Packet `seq` arrived at `now`.
    pub fn on_packet(&mut self, seq: u16, now: Instant) -> Arrival {
        let index = estimate_index(self.highest, seq);
        let Some(highest) = self.highest else {
            self.highest = Some(index);
            return Arrival::New;
        };
        if index <= highest {
            return if self.missing.remove(&index).is_some() {
                Arrival::Repair
            } else {
                Arrival::Old
            };
        }
        let gap = index - highest - 1;
        if gap as usize > self.config.max_missing {
            // A restart or a jump no repair could fill: begin again from here.
            self.missing.clear();
        } else {
            for lost in highest + 1..index {
                self.missing.insert(
                    lost,
                    Missing {
                        since: now,
                        next_ask: now + self.config.hold,
                        asks: 0,
                    },
                );
            }
            while self.missing.len() > self.config.max_missing {
                self.missing.pop_first();
            }
        }
        self.highest = Some(index);
        Arrival::New
    }

    /// Appends to `out` the sequence numbers to ask for at `now`, oldest first, and
    /// forgets those asked for often enough or missing too long.
    pub fn due(&mut self, now: Instant, out: &mut Vec<u16>) {
        let config = self.config;
        self.missing.retain(|index, missing| {
            if now.saturating_duration_since(missing.since) > config.max_age
                || missing.asks >= config.max_asks
            {
                return false;
            }
            if missing.next_ask <= now {
                out.push(*index as u16);
                missing.asks += 1;
                missing.next_ask = now + config.retry;
            }
            true
        });
    }

    /// When [`Self::due`] next has something to ask for or to forget.
    pub fn next_due(&self) -> Option<Instant> {
        self.missing
            .values()
            .map(|m| {
                if m.asks >= self.config.max_asks {
                    m.since
                } else {
                    m.next_ask.min(m.since + self.config.max_age)
                }
            })
            .min()
    }

    /// Packets missing now.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn due(tracker: &mut LossTracker, now: Instant) -> Vec<u16> {
        let mut out = Vec::new();
        tracker.due(now, &mut out);
        out
    }

    #[test]
    fn a_gap_is_asked_for_at_once_then_again_until_it_arrives() {
        let t0 = Instant::now();
        let mut tracker = LossTracker::new(LossConfig::default());
        for seq in [10, 11, 14] {
            assert_eq!(tracker.on_packet(seq, t0), Arrival::New);
        }
        assert_eq!(tracker.next_due(), Some(t0));
        assert_eq!(due(&mut tracker, t0), vec![12, 13]);
        assert!(
            due(&mut tracker, t0 + ms(29)).is_empty(),
            "retried too soon"
        );
        assert_eq!(tracker.next_due(), Some(t0 + ms(30)));
        assert_eq!(due(&mut tracker, t0 + ms(30)), vec![12, 13]);
        assert_eq!(
            tracker.on_packet(12, t0 + ms(40)),
            Arrival::Repair,
            "12 was a repair"
        );
        assert_eq!(
            tracker.on_packet(12, t0 + ms(41)),
            Arrival::Old,
            "a duplicate is no repair"
        );
        assert_eq!(due(&mut tracker, t0 + ms(60)), vec![13]);
        assert_eq!(tracker.on_packet(13, t0 + ms(70)), Arrival::Repair);
        assert_eq!(tracker.missing(), 0);
        assert_eq!(tracker.next_due(), None);
    }

    #[test]
    fn with_a_hold_a_reordered_packet_is_never_asked_for() {
        let t0 = Instant::now();
        let config = LossConfig {
            hold: ms(10),
            ..LossConfig::default()
        };
        let mut tracker = LossTracker::new(config);
        tracker.on_packet(1, t0);
        tracker.on_packet(3, t0);
        assert_eq!(tracker.next_due(), Some(t0 + ms(10)));
        assert!(due(&mut tracker, t0 + ms(9)).is_empty(), "held");
        assert_eq!(tracker.on_packet(2, t0 + ms(4)), Arrival::Repair);
        assert!(due(&mut tracker, t0 + ms(10)).is_empty(), "it came");
        tracker.on_packet(5, t0 + ms(20));
        assert_eq!(due(&mut tracker, t0 + ms(30)), vec![4], "asked once held");
    }

    #[test]
    fn a_packet_is_given_up_after_its_asks_or_its_age() {
        let t0 = Instant::now();
        let config = LossConfig {
            max_asks: 2,
            ..LossConfig::default()
        };
        let mut tracker = LossTracker::new(config);
        tracker.on_packet(1, t0);
        tracker.on_packet(3, t0);
        assert_eq!(due(&mut tracker, t0), vec![2]);
        assert_eq!(due(&mut tracker, t0 + ms(30)), vec![2]);
        assert!(due(&mut tracker, t0 + ms(60)).is_empty());
        assert_eq!(tracker.missing(), 0);

        let mut tracker = LossTracker::new(LossConfig::default());
        tracker.on_packet(1, t0);
        tracker.on_packet(3, t0);
        assert_eq!(due(&mut tracker, t0), vec![2]);
        // Not looked at for longer than the buffers upstream keep anything.
        assert!(due(&mut tracker, t0 + ms(1001)).is_empty());
        assert_eq!(tracker.missing(), 0);
    }

    #[test]
    fn losses_across_the_sequence_wrap_are_found() {
        let t0 = Instant::now();
        let mut tracker = LossTracker::new(LossConfig::default());
        for seq in [0xfffd, 0xfffe, 1, 2] {
            tracker.on_packet(seq, t0);
        }
        assert_eq!(due(&mut tracker, t0), vec![0xffff, 0]);
        // A packet from before the first one seen is old, not a loss.
        assert_eq!(tracker.on_packet(0xfff0, t0), Arrival::Old);
        assert_eq!(tracker.missing(), 2);
    }

    #[test]
    fn a_jump_beyond_what_is_tracked_starts_again_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let config = LossConfig {
            max_missing: 100,
            ..LossConfig::default()
        };
        let mut tracker = LossTracker::new(config);
        tracker.on_packet(0, t0);
        tracker.on_packet(50, t0);
        assert_eq!(tracker.missing(), 49);
        tracker.on_packet(5000, t0);
        assert_eq!(tracker.missing(), 0, "a jump is not 4,949 losses");
        // Many gaps just under the limit each: the oldest are dropped first.
        let mut seq = 5000u16;
        for _ in 0..10 {
            seq = seq.wrapping_add(100);
            tracker.on_packet(seq, t0);
        }
        assert_eq!(tracker.missing(), 100);
        // The newest hundred: one of the ninth gap, then the whole tenth.
        let asked = due(&mut tracker, t0);
        assert_eq!(asked.len(), 100);
        assert_eq!(asked[0], seq.wrapping_sub(101));
        assert_eq!(asked[1], seq.wrapping_sub(99));
        assert_eq!(asked[99], seq.wrapping_sub(1));
    }
}
