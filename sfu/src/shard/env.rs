//! What the core reads from the world besides packets and commands: randomness (SSRCs,
//! track ids), the process's CPU time (the load it reports) and the wall clock (chat
//! timestamps). Passed in, so that a simulation can run the core on a virtual clock with
//! a seeded generator and a CPU meter of its own.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Reads the process's CPU seconds so far.
type CpuMeter = Box<dyn FnMut() -> Option<f64> + Send>;
/// Maps the core's clock to wall-clock time.
type WallClock = Box<dyn Fn(Instant) -> SystemTime + Send>;

/// The core's sources of randomness and time besides the `now` it is given.
pub struct Env {
    rng: StdRng,
    cpu_seconds: CpuMeter,
    wall_clock: WallClock,
}

impl Env {
    /// The real thing: the operating system's entropy, this process's CPU time, the
    /// system clock.
    pub fn system() -> Self {
        Self {
            rng: rand::make_rng(),
            cpu_seconds: Box::new(crate::procstat::cpu_seconds),
            wall_clock: Box::new(|_| SystemTime::now()),
        }
    }

    /// A reproducible world: randomness from `seed`, no CPU used, and wall-clock time that
    /// is `epoch` at `start` and follows the core's clock.
    pub fn seeded(seed: u64, start: Instant, epoch: SystemTime) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            cpu_seconds: Box::new(|| Some(0.0)),
            wall_clock: Box::new(move |now| epoch + now.saturating_duration_since(start)),
        }
    }

    /// The same, with CPU seconds read from `meter`.
    pub fn with_cpu(mut self, meter: impl FnMut() -> Option<f64> + Send + 'static) -> Self {
        self.cpu_seconds = Box::new(meter);
        self
    }

    /// A random SSRC: never 0, and none for which `taken` holds.
    pub(crate) fn ssrc(&mut self, taken: impl Fn(u32) -> bool) -> u32 {
        loop {
            let ssrc = self.rng.random::<u32>();
            if ssrc != 0 && !taken(ssrc) {
                return ssrc;
            }
        }
    }

    /// Fills `out` with random bytes (key material: the system generator is a CSPRNG).
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        self.rng.fill(out);
    }

    /// A random alphanumeric token of `len` characters.
    pub(crate) fn token(&mut self, len: usize) -> String {
        (&mut self.rng)
            .sample_iter(rand::distr::Alphanumeric)
            .take(len)
            .map(char::from)
            .collect()
    }

    /// The process's CPU seconds so far, if known.
    pub(crate) fn cpu_seconds(&mut self) -> Option<f64> {
        (self.cpu_seconds)()
    }

    /// The wall-clock time of `now`.
    pub(crate) fn wall_time(&self, now: Instant) -> SystemTime {
        (self.wall_clock)(now)
    }

    /// Milliseconds since the Unix epoch at `now`.
    pub(crate) fn unix_millis(&self, now: Instant) -> u64 {
        (self.wall_clock)(now)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_seeded_world_repeats_itself_and_follows_the_core_clock() {
        let start = Instant::now();
        let epoch = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut a = Env::seeded(9, start, epoch);
        let mut b = Env::seeded(9, start, epoch);
        assert_eq!(a.token(12), b.token(12));
        assert_eq!(a.ssrc(|_| false), b.ssrc(|_| false));
        let first = a.ssrc(|_| false);
        assert_ne!(b.ssrc(|s| s == first), first);
        assert_eq!(
            a.unix_millis(start + Duration::from_millis(1500)),
            1_700_000_001_500
        );
        let mut metered = a.with_cpu(|| Some(2.5));
        assert_eq!(metered.cpu_seconds(), Some(2.5));
    }
}
