//! The pure autoscaler over a simulated day: rooms arrive in a morning and an evening
//! wave (lessons, then rehearsals and meetings), an evening concert needs a cascade of
//! shards, new shards take 30 s to start, and the autoscaler decides from a snapshot one
//! step old while placement goes on — so drains race placements as they do for real.
//!
//! The figures it prints (peak shards, shard-hours, how long the buffer ran thin, how
//! long rooms waited) describe the policy; the assertions are the promises: free seats
//! fall below the buffer only for the time a shard takes to start, no occupied shard is
//! ever deleted, and an idle pool comes back to its minimum and stays there.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use tutti_control::autoscale::{DeleteReason, Demand, PoolPolicy, ShardPhase, ShardView, decide};

const STEP: u64 = 10;
const DAY: u64 = 86_400;
const TAIL: u64 = 4 * 3600;
const STARTUP: u64 = 30;

/// A small deterministic generator (64-bit LCG), so every run sees the same day.
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + (self.next_f64() * (high - low + 1) as f64) as u64
    }

    /// Knuth's Poisson sampler (small means only).
    fn poisson(&mut self, mean: f64) -> u32 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.next_f64();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

/// Rooms arriving per step at second `t` of the day.
fn arrival_rate(t: u64) -> f64 {
    if t >= DAY {
        return 0.0;
    }
    let hour = t as f64 / 3600.0;
    let wave =
        |centre: f64, width: f64, height: f64| height * (-((hour - centre) / width).powi(2)).exp();
    0.02 + wave(10.0, 2.0, 0.4) + wave(20.0, 1.5, 1.2)
}

#[derive(Debug, Clone)]
struct Room {
    seats: u32,
    ends: u64,
    arrived: u64,
}

#[derive(Debug)]
struct Shard {
    ready_at: u64,
    draining_since: Option<u64>,
    rooms: Vec<Room>,
    empty_since: Option<u64>,
}

impl Shard {
    fn used(&self) -> u32 {
        self.rooms.iter().map(|r| r.seats).sum()
    }
}

struct Concert {
    starts: u64,
    ends: u64,
    /// Shards its tree needs: the origin and its edges.
    shards: u32,
}

#[derive(Default, Debug)]
struct Figures {
    peak_shards: usize,
    shard_seconds: u64,
    thin_episodes: u32,
    longest_thin: u64,
    longest_wait: u64,
    rooms: u32,
    deleted: u32,
    deadline_deletions: u32,
    creates_after_idle: u32,
}

struct Fleet {
    policy: PoolPolicy,
    shards: BTreeMap<String, Shard>,
    pending: Vec<Room>,
    next_id: u32,
    concert: Concert,
    /// Shards the concert's tree holds while it runs.
    concert_shards: Vec<String>,
}

impl Fleet {
    fn serving(&self, now: u64) -> impl Iterator<Item = (&String, &Shard)> {
        self.shards
            .iter()
            .filter(move |(_, s)| s.ready_at <= now && s.draining_since.is_none())
    }

    fn free_seats(&self, now: u64) -> u32 {
        self.serving(now)
            .map(|(_, s)| self.policy.seats_per_shard.saturating_sub(s.used()))
            .sum()
    }

    /// Packed placement, as the operator's default: the busiest serving shard that fits.
    fn place(&mut self, room: Room, now: u64) -> Result<(), Room> {
        let per_shard = self.policy.seats_per_shard;
        let chosen = self
            .serving(now)
            .filter(|(_, s)| s.used() + room.seats <= per_shard)
            .max_by_key(|(name, s)| (s.used(), std::cmp::Reverse((*name).clone())))
            .map(|(name, _)| name.clone());
        match chosen.and_then(|name| self.shards.get_mut(&name)) {
            Some(shard) => {
                shard.rooms.push(room);
                Ok(())
            }
            None => Err(room),
        }
    }

    fn concert_running(&self, now: u64) -> bool {
        (self.concert.starts..self.concert.ends).contains(&now)
    }

    /// The concert's tree takes the least loaded serving shards (as the cascade driver
    /// does) and keeps them while it runs; missing shards are the cascade's demand.
    fn seat_concert(&mut self, now: u64) -> u32 {
        if !self.concert_running(now) {
            self.concert_shards.clear();
            return 0;
        }
        let wanted = self.concert.shards as usize;
        self.concert_shards
            .retain(|name| self.shards.contains_key(name));
        if self.concert_shards.len() < wanted {
            let mut spare: Vec<(u32, String)> = self
                .serving(now)
                .filter(|(name, _)| !self.concert_shards.contains(name))
                .map(|(name, s)| (s.used(), name.clone()))
                .collect();
            spare.sort();
            let missing = wanted - self.concert_shards.len();
            self.concert_shards
                .extend(spare.into_iter().take(missing).map(|(_, name)| name));
        }
        (wanted - self.concert_shards.len()) as u32
    }

    fn occupied(&self, name: &str, shard: &Shard) -> bool {
        !shard.rooms.is_empty() || self.concert_shards.iter().any(|s| s == name)
    }

    fn views(&self, now: u64) -> Vec<ShardView> {
        self.shards
            .iter()
            .map(|(name, shard)| ShardView {
                name: name.clone(),
                phase: match (shard.ready_at <= now, shard.draining_since) {
                    (_, Some(since)) => ShardPhase::Draining { since },
                    (true, None) => ShardPhase::Ready,
                    (false, None) => ShardPhase::Starting {
                        since: shard.ready_at - STARTUP,
                    },
                },
                participants: shard.used(),
                used_seats: shard.used(),
                occupied: self.occupied(name, shard),
                empty_since: shard.empty_since,
            })
            .collect()
    }
}

fn simulate(policy: PoolPolicy, seed: u64) -> Figures {
    let mut rng = Lcg(seed);
    let mut fleet = Fleet {
        policy,
        shards: BTreeMap::new(),
        pending: Vec::new(),
        next_id: 0,
        concert: Concert {
            starts: 20 * 3600,
            ends: 21 * 3600 + 1800,
            shards: 9,
        },
        concert_shards: Vec::new(),
    };
    let mut figures = Figures::default();
    let mut thin_since: Option<u64> = None;
    let mut idle_since: Option<u64> = None;
    // What the autoscaler read on the previous step (the reconciler's view lags).
    let mut snapshot: Vec<ShardView> = Vec::new();
    let mut snapshot_demand = Demand::default();
    let mut now = 0;
    while now < DAY + TAIL {
        // Rooms end; shards that emptied start counting.
        for shard in fleet.shards.values_mut() {
            shard.rooms.retain(|room| room.ends > now);
        }
        let short = fleet.seat_concert(now);
        let occupancy: Vec<(String, bool)> = fleet
            .shards
            .iter()
            .map(|(name, shard)| (name.clone(), fleet.occupied(name, shard)))
            .collect();
        for (name, occupied) in occupancy {
            if let Some(shard) = fleet.shards.get_mut(&name) {
                match (occupied, shard.empty_since) {
                    (true, _) => shard.empty_since = None,
                    (false, None) => shard.empty_since = Some(now),
                    (false, Some(_)) => {}
                }
            }
        }
        // Rooms waiting from before go first, then this step's arrivals.
        let mut waiting = std::mem::take(&mut fleet.pending);
        for _ in 0..rng.poisson(arrival_rate(now)) {
            figures.rooms += 1;
            let duration = rng.between(20, 90) * 60;
            waiting.push(Room {
                seats: rng.between(2, 12) as u32,
                ends: now + duration,
                arrived: now,
            });
        }
        for room in waiting {
            let arrived = room.arrived;
            match fleet.place(room, now) {
                Ok(()) => figures.longest_wait = figures.longest_wait.max(now - arrived),
                Err(room) => fleet.pending.push(room),
            }
        }
        // The autoscaler acts on the snapshot it read a step ago.
        let decision = decide(&fleet.policy, &snapshot, &snapshot_demand, now);
        for (name, reason) in &decision.delete {
            let shard = fleet.shards.remove(name).expect("deleted shard exists");
            let occupied = !shard.rooms.is_empty() || fleet.concert_shards.contains(name);
            assert!(
                !occupied || *reason == DeleteReason::DrainDeadline,
                "shard {name} deleted at {now} s with {} rooms ({reason:?})",
                shard.rooms.len()
            );
            figures.deleted += 1;
            if *reason == DeleteReason::DrainDeadline {
                figures.deadline_deletions += 1;
            }
        }
        for name in &decision.drain {
            if let Some(shard) = fleet.shards.get_mut(name) {
                shard.draining_since = Some(now);
            }
        }
        for _ in 0..decision.create {
            fleet.next_id += 1;
            fleet.shards.insert(
                format!("shard-{:04}", fleet.next_id),
                Shard {
                    ready_at: now + STARTUP,
                    draining_since: None,
                    rooms: Vec::new(),
                    empty_since: Some(now),
                },
            );
            if idle_since.is_some_and(|t| now > t) {
                figures.creates_after_idle += 1;
            }
        }
        snapshot = fleet.views(now);
        snapshot_demand = Demand {
            pending_seats: fleet.pending.iter().map(|r| r.seats).sum(),
            shards_short: short,
        };

        // Figures, and the buffer promise.
        figures.peak_shards = figures.peak_shards.max(fleet.shards.len());
        figures.shard_seconds += fleet.shards.len() as u64 * STEP;
        if fleet.free_seats(now) < fleet.policy.buffer {
            let since = *thin_since.get_or_insert(now);
            figures.longest_thin = figures.longest_thin.max(now - since + STEP);
        } else if thin_since.take().is_some() {
            figures.thin_episodes += 1;
        }
        let all_gone = now >= DAY && fleet.shards.values().all(|s| s.rooms.is_empty());
        if all_gone && idle_since.is_none() {
            idle_since = Some(now);
        }
        now += STEP;
    }
    // The idle pool converged to its minimum, all of it serving.
    assert_eq!(
        fleet.shards.len() as u32,
        fleet.policy.min_shards,
        "an idle pool keeps its minimum only"
    );
    assert!(fleet.shards.values().all(|s| s.draining_since.is_none()));
    figures
}

fn policy() -> PoolPolicy {
    PoolPolicy {
        min_shards: 2,
        max_shards: 60,
        seats_per_shard: 100,
        buffer: 50,
        scale_down_delay: 600,
        drain_timeout: 6 * 3600,
        startup_timeout: 300,
    }
}

#[test]
fn a_day_of_rooms_keeps_the_buffer_deletes_no_occupied_shard_and_converges() {
    for seed in [1, 7, 42] {
        let figures = simulate(policy(), seed);
        println!(
            "seed {seed}: {} rooms, peak {} shards, {:.1} shard-hours ({:.1} for a fleet fixed at \
             the peak), buffer thin {} times \
             (longest {} s), longest wait for a seat {} s, {} shards deleted ({} at a deadline)",
            figures.rooms,
            figures.peak_shards,
            figures.shard_seconds as f64 / 3600.0,
            (figures.peak_shards as u64 * (DAY + TAIL)) as f64 / 3600.0,
            figures.thin_episodes,
            figures.longest_thin,
            figures.longest_wait,
            figures.deleted,
            figures.deadline_deletions,
        );
        assert!(figures.rooms > 1000, "the day brought load");
        assert!(figures.peak_shards > 10, "the pool grew with it");
        // Thin only while new shards start: the lagging read, the start, one more step.
        let transient = STARTUP + 3 * STEP;
        assert!(
            figures.longest_thin <= transient,
            "free seats stayed under the buffer for {} s",
            figures.longest_thin
        );
        assert!(figures.longest_wait <= transient);
        assert_eq!(figures.deadline_deletions, 0);
        assert_eq!(figures.creates_after_idle, 0, "an idle pool does not flap");
    }
}

#[test]
fn the_pool_never_exceeds_its_maximum_and_says_what_it_lacks() {
    let tight = PoolPolicy {
        max_shards: 12,
        ..policy()
    };
    let mut fleet_size = 0usize;
    let mut shards: Vec<ShardView> = Vec::new();
    for step in 0..100u64 {
        let demand = Demand {
            pending_seats: 5_000,
            shards_short: 0,
        };
        let decision = decide(&tight, &shards, &demand, step * STEP);
        for _ in 0..decision.create {
            fleet_size += 1;
            shards.push(ShardView {
                name: format!("s{fleet_size}"),
                phase: ShardPhase::Ready,
                participants: 100,
                used_seats: 100,
                occupied: true,
                empty_since: None,
            });
        }
        assert!(shards.len() as u32 <= tight.max_shards);
        assert!(decision.wanted_seats > decision.free_seats);
    }
    assert_eq!(shards.len(), 12);
}
