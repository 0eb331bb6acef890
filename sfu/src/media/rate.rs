//! The bit rate of a stream as the shard receives it, over the last whole second: what a
//! layer costs a subscriber's downlink, for sharing it among tracks. And the most it
//! brought in any of the last few seconds: an encoder's rate swings from second to second
//! (with the picture, and with its own rate control), and a subscriber moved up to a layer
//! during one of its quiet seconds overflows its downlink in the next loud one.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);
/// Complete windows the peak is taken over.
const PEAK_WINDOWS: usize = 4;

/// Counts bytes in one-second windows; reports the last complete one.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    last_bps: Option<f64>,
    /// The last complete window in which the stream flowed.
    flowing_bps: Option<f64>,
    /// The last [`PEAK_WINDOWS`] complete windows, oldest overwritten first.
    recent_bps: [f64; PEAK_WINDOWS],
    /// Complete windows so far (where the next one goes in `recent_bps`).
    windows: usize,
}

impl RateMeter {
    /// `bytes` arrived at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            // A stream silent for longer than a window had nothing in the windows between.
            self.last_bps = Some(if elapsed >= 2 * WINDOW {
                0.0
            } else {
                self.bytes as f64 * 8.0 / elapsed.as_secs_f64()
            });
            if let Some(bps) = self.last_bps {
                if bps > 0.0 {
                    self.flowing_bps = Some(bps);
                }
                // Each whole window of a silence counts as one that brought nothing.
                let windows = if bps > 0.0 {
                    1
                } else {
                    (elapsed.as_secs_f64() / WINDOW.as_secs_f64()) as usize
                };
                for _ in 0..windows.clamp(1, PEAK_WINDOWS) {
                    self.recent_bps[self.windows % PEAK_WINDOWS] = bps;
                    self.windows = self.windows.wrapping_add(1);
                }
            }
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
    }

    /// Bits per second over the last complete window; until one completes, what has
    /// arrived so far counted as a whole second's worth.
    pub fn bps(&self) -> f64 {
        self.last_bps.unwrap_or(self.bytes as f64 * 8.0)
    }

    /// What the stream brought in over the last complete window in which it flowed: what
    /// a layer paused for a while would cost again once resumed.
    pub fn flowing_bps(&self) -> Option<f64> {
        self.flowing_bps
    }

    /// The most the stream brought in over any of the last few complete windows (or,
    /// before one completes, what has arrived so far, as [`RateMeter::bps`] reads it): what
    /// moving a subscriber up to the stream must be ready for.
    pub fn peak_bps(&self) -> f64 {
        self.recent_bps.iter().copied().fold(self.bps(), f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_last_whole_second() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.bps(), 0.0);
        // 100 packets of 1,250 bytes over a second: 1 Mbit/s.
        for i in 0..100u64 {
            meter.add(t0 + Duration::from_millis(i * 10), 1250);
        }
        assert_eq!(
            meter.bps(),
            1_000_000.0,
            "a first partial window counts as a second"
        );
        for i in 100..200u64 {
            meter.add(t0 + Duration::from_millis(i * 10), 625);
        }
        let first = meter.bps();
        assert!((first - 1_000_000.0).abs() < 1.0, "{first}");
        meter.add(t0 + Duration::from_millis(2000), 0);
        let second = meter.bps();
        assert!((second - 500_000.0).abs() < 1.0, "{second}");
        // Silence, then a packet: the silent window reads as nothing, but what it cost
        // while it flowed is remembered.
        meter.add(t0 + Duration::from_secs(10), 100);
        assert_eq!(meter.bps(), 0.0);
        let flowing = meter.flowing_bps().unwrap_or_default();
        assert!((flowing - 500_000.0).abs() < 1.0, "{flowing}");
    }

    #[test]
    fn the_peak_remembers_the_loudest_of_the_last_few_seconds() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        // Seconds at 270, 188 and 250 kbit/s: the meter reads the last, the peak the first.
        let mut at = t0;
        for bytes_per_second in [33_750u64, 23_500, 31_250, 0] {
            for i in 0..10u64 {
                meter.add(
                    at + Duration::from_millis(i * 100),
                    (bytes_per_second / 10) as usize,
                );
            }
            at += WINDOW;
        }
        // The fourth second's first packet closes the third.
        assert!((meter.bps() - 250_000.0).abs() < 1.0, "{}", meter.bps());
        assert!(
            (meter.peak_bps() - 270_000.0).abs() < 1.0,
            "{}",
            meter.peak_bps()
        );
        // Four quieter seconds later the loud one has left the peak.
        for _ in 0..PEAK_WINDOWS {
            for i in 0..10u64 {
                meter.add(at + Duration::from_millis(i * 100), 2_500);
            }
            at += WINDOW;
        }
        meter.add(at, 0);
        assert!(
            (meter.peak_bps() - 200_000.0).abs() < 1.0,
            "{}",
            meter.peak_bps()
        );
        // Paused for six seconds, then resumed: the seconds before the pause are gone.
        meter.add(at + Duration::from_secs(6), 100);
        assert_eq!(meter.peak_bps(), 0.0);
    }
}
