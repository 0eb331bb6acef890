//! Password guessing, throttled per client address however many sockets it opens: a few
//! wrong passwords are free (people mistype), then each further one locks the address
//! out for twice as long as the one before, up to five minutes. A right password clears
//! the slate. Time is an input, so the rule is tested on a virtual clock.
//!
//! IPv6 clients are counted by their /64: one host usually holds a whole /64, and
//! counting single addresses would let it pick a fresh one per guess.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong passwords an address may give before the lockouts start.
pub const FREE_GUESSES: u32 = 3;
/// The first lockout; each wrong password after it doubles it.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(2);
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// An address silent this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Addresses remembered at most (a few MiB): past it, the stalest is forgotten.
const MAX_ADDRESSES: usize = 100_000;

/// Who guesses: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guesser(IpAddr);

impl Guesser {
    /// The guesser an address belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    Self(IpAddr::V6(octets.into()))
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Wrong passwords per guesser.
#[derive(Debug, Default)]
pub struct GuessLimiter {
    records: HashMap<Guesser, Record>,
}

impl GuessLimiter {
    /// Whether `who` may have a password checked at `now`; if not, how long it must wait.
    pub fn check(&self, who: Guesser, now: Instant) -> Result<(), Duration> {
        match self.records.get(&who).and_then(|r| r.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Whether `who` gave a wrong password lately (its checks queue behind first tries).
    pub fn has_failed(&self, who: Guesser) -> bool {
        self.records.get(&who).is_some_and(|r| r.failures > 0)
    }

    /// Counts a wrong password; the lockout it earned, if any.
    pub fn failed(&mut self, who: Guesser, now: Instant) -> Option<Duration> {
        if !self.records.contains_key(&who) && self.records.len() >= MAX_ADDRESSES {
            self.forget_stale(now);
        }
        let record = self.records.entry(who).or_insert(Record {
            failures: 0,
            locked_until: None,
            last: now,
        });
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        let over = record.failures.checked_sub(FREE_GUESSES)?;
        if over == 0 {
            return None;
        }
        let lockout = FIRST_LOCKOUT
            .checked_mul(1 << (over - 1).min(16))
            .unwrap_or(MAX_LOCKOUT)
            .min(MAX_LOCKOUT);
        record.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// A right password: the guesser starts over.
    pub fn succeeded(&mut self, who: Guesser) {
        self.records.remove(&who);
    }

    /// Guessers remembered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nobody is remembered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Forgets guessers silent for an hour; when that frees nothing, the stalest one.
    fn forget_stale(&mut self, now: Instant) {
        self.records
            .retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
        if self.records.len() >= MAX_ADDRESSES
            && let Some(stalest) = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(who, _)| *who)
        {
            self.records.remove(&stalest);
        }
    }
}

/// Rooms a client may create on first join within [`CREATION_WINDOW`], by default.
pub const DEFAULT_ROOMS_PER_CLIENT: u32 = 10;
/// Sessions of one client address given TURN credentials within [`CREATION_WINDOW`], by
/// default: a household or a classroom rejoining all evening fits.
pub const DEFAULT_TURN_GRANTS_PER_CLIENT: u32 = 30;
/// The window room creations are counted in.
pub const CREATION_WINDOW: Duration = Duration::from_secs(600);

/// Things a client address may get only so many of in a fixed window: rooms created on
/// first join (each holds a pipeline for its empty timeout, so a client looping join/leave
/// with fresh names would otherwise fill the shards and grow the pool), TURN credentials
/// (each opens relays on coturn, so a client joining in a loop would collect them).
#[derive(Debug)]
pub struct WindowLimiter {
    limit: u32,
    windows: HashMap<Guesser, (Instant, u32)>,
}

impl WindowLimiter {
    /// At most `limit` creations per client per window; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: HashMap::new(),
        }
    }

    /// Counts a creation by `who` at `now`; `Err` with the wait when it is over the limit.
    pub fn create(&mut self, who: Guesser, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        if self.windows.len() >= MAX_ADDRESSES && !self.windows.contains_key(&who) {
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < CREATION_WINDOW);
            if self.windows.len() >= MAX_ADDRESSES {
                // Everyone is creating at once: refuse newcomers until windows close.
                return Err(CREATION_WINDOW);
            }
        }
        let entry = self.windows.entry(who).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= CREATION_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(CREATION_WINDOW.saturating_sub(now.saturating_duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guesser(text: &str) -> Guesser {
        Guesser::of(text.parse().unwrap())
    }

    #[test]
    fn a_few_mistakes_are_free_then_lockouts_double_up_to_five_minutes() {
        let mut limiter = GuessLimiter::default();
        let who = guesser("203.0.113.9");
        let start = Instant::now();
        for _ in 0..FREE_GUESSES {
            assert_eq!(limiter.failed(who, start), None);
            assert!(limiter.check(who, start).is_ok());
        }
        assert_eq!(limiter.failed(who, start), Some(Duration::from_secs(2)));
        assert_eq!(limiter.check(who, start), Err(Duration::from_secs(2)));
        assert!(limiter.check(who, start + Duration::from_secs(2)).is_ok());
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.failed(who, later), Some(Duration::from_secs(4)));
        let mut now = later;
        let mut lockout = Duration::ZERO;
        for _ in 0..20 {
            now += lockout;
            lockout = limiter.failed(who, now).unwrap();
        }
        assert_eq!(lockout, MAX_LOCKOUT);
        // Guessing at the rate the lockouts allow: 3 free, then about one per 5 min.
        // Another address is not affected; a right password clears the slate.
        assert!(limiter.check(guesser("203.0.113.10"), now).is_ok());
        limiter.succeeded(who);
        assert!(limiter.check(who, now).is_ok());
        assert_eq!(limiter.failed(who, now), None);
    }

    #[test]
    fn an_ipv6_host_is_one_guesser_across_its_64() {
        assert_eq!(guesser("2001:db8:1:2::1"), guesser("2001:db8:1:2:ffff::9"));
        assert_ne!(guesser("2001:db8:1:2::1"), guesser("2001:db8:1:3::1"));
        assert_eq!(guesser("::ffff:198.51.100.7"), guesser("198.51.100.7"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut limiter = GuessLimiter::default();
        let start = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            limiter.failed(Guesser::of(ip), start + Duration::from_millis(u64::from(i)));
        }
        assert!(limiter.len() <= MAX_ADDRESSES);
        // The first ones (stalest) went.
        let first = Guesser::of(IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000)));
        assert!(!limiter.records.contains_key(&first));
    }

    #[test]
    fn room_creations_per_address_are_capped_per_window() {
        let mut limiter = WindowLimiter::new(3);
        let who = guesser("198.51.100.7");
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.create(who, start).is_ok());
        }
        let wait = limiter
            .create(who, start + Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(wait, CREATION_WINDOW - Duration::from_secs(60));
        assert!(limiter.create(guesser("198.51.100.8"), start).is_ok());
        assert!(limiter.create(who, start + CREATION_WINDOW).is_ok());
        let mut unlimited = WindowLimiter::new(0);
        for _ in 0..100 {
            assert!(unlimited.create(who, start).is_ok());
        }
    }
}
