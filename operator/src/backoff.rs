//! Per-object retry delays: each failure of the same object doubles its delay, up to a
//! ceiling; a success forgets it. One failing Room never slows another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Retry delays keyed by object (its UID).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Delays starting at `base`, doubling, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key`; the delay before its next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let factor = 2u32.saturating_pow((*count - 1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Records a success of `key`: its next failure starts from `base` again.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Failures of `key` since its last success.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_per_object_and_resets_on_success() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (0..8).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            backoff.failed("b"),
            Duration::from_secs(1),
            "b has its own count"
        );
        backoff.succeeded("a");
        assert_eq!(backoff.failures("a"), 0);
        assert_eq!(backoff.failed("a"), Duration::from_secs(1));
    }
}
