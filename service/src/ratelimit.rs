//! A token bucket, for anything a remote party can make the shard do repeatedly:
//! retransmissions a subscriber's NACKs cause, frames a signaling session sends.

use std::time::Instant;

/// Allows a steady rate of events with bounded bursts.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Option<Instant>,
}

impl TokenBucket {
    /// Allows `per_second` events on average and bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            refilled_at: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.refilled_at {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.refilled_at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_bursts_and_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100, 10);
        assert_eq!((0..50).filter(|_| bucket.take(t0)).count(), 10);
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!((0..50).filter(|_| bucket.take(t1)).count(), 5);
    }
}
