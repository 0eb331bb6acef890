//! Throttling keyframe requests towards a publisher.
//!
//! Every subscriber that joins, loses packets or switches layer wants a keyframe, and a
//! room of fifty would otherwise send fifty PLIs for one loss burst. Requests are
//! coalesced: at most one PLI per interval reaches the publisher, and a request that
//! arrives inside the interval is remembered and sent when the interval ends, so nobody
//! waits longer than one interval for the keyframe they asked for.

use std::time::{Duration, Instant};

/// The default minimum spacing of keyframe requests to one publisher stream.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// Coalesces keyframe requests for one publisher stream.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    /// A throttle allowing one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    /// Records a request; returns `true` when a PLI should be sent now.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// When a deferred request is due, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending {
            self.last_sent.map(|last| last + self.interval)
        } else {
            None
        }
    }

    /// Returns `true` when a deferred request is due and should be sent now.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(due) if now >= due => {
                self.pending = false;
                self.last_sent = Some(now);
                true
            }
            _ => false,
        }
    }

    /// A keyframe arrived: any deferred request is satisfied.
    pub fn keyframe_received(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_a_storm_into_one_request_per_interval() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        let mut sent = 0;
        // 100 subscribers ask within 2 s, one every 20 ms.
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i * 20);
            if throttle.poll(now) {
                sent += 1;
            }
            if throttle.request(now) {
                sent += 1;
            }
        }
        // 2 s / 500 ms: the first plus one per elapsed interval.
        assert!((4..=5).contains(&sent), "sent {sent}");
    }

    #[test]
    fn a_deferred_request_is_sent_when_the_interval_ends() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(throttle.request(t0));
        assert!(!throttle.request(t0 + Duration::from_millis(100)));
        assert_eq!(throttle.deadline(), Some(t0 + Duration::from_millis(500)));
        assert!(!throttle.poll(t0 + Duration::from_millis(499)));
        assert!(throttle.poll(t0 + Duration::from_millis(500)));
        assert_eq!(throttle.deadline(), None);
    }

    #[test]
    fn a_keyframe_cancels_the_deferred_request() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(throttle.request(t0));
        assert!(!throttle.request(t0 + Duration::from_millis(10)));
        throttle.keyframe_received();
        assert!(!throttle.poll(t0 + Duration::from_secs(1)));
    }
}
