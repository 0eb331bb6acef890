//! How many shards a pool runs: a pure function of the pool's policy, what each shard is
//! doing, and the demand nothing could place yet.
//!
//! * **Up.** Free seats on serving shards are kept at or above the pool's `buffer` (the
//!   buffer of Agones' FleetAutoscaler); rooms that found no shard and cascades that ran
//!   out of shards are room that must come on top, and shards still starting count as
//!   the seats they will bring.
//! * **Down.** Only a shard that has hosted no one for `scale_down_delay` is touched, and
//!   only while the seats left still cover the buffer and `min_shards`. It is first
//!   marked draining (nothing new goes there); it is deleted once it is empty (its
//!   participants gone, its broadcast edges moved), or at its drain deadline.
//! * A shard with participants is never chosen for removal; the deadline is the only
//!   exception, and it exists so that a forgotten session cannot hold a node forever.

/// What a pool promises, in plain numbers (durations in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Shards kept serving even when idle.
    pub min_shards: u32,
    /// Shards never exceeded, draining ones included (they hold nodes too).
    pub max_shards: u32,
    /// Participant seats one shard has.
    pub seats_per_shard: u32,
    /// Free seats kept ready across serving shards.
    pub buffer: u32,
    /// How long a shard must stay empty before it is drained.
    pub scale_down_delay: u64,
    /// How long a draining shard may keep participants.
    pub drain_timeout: u64,
    /// How long a shard may take to register before it counts as failed.
    pub startup_timeout: u64,
}

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPhase {
    /// Its pod exists (since `since`) but it has not registered yet: it will bring its
    /// seats soon — unless it is still not there after the start-up timeout, when it
    /// counts as failed (it never registered, so nobody can be on it).
    Starting {
        /// When its pod was created.
        since: u64,
    },
    /// Registered and taking rooms.
    Ready,
    /// Taking nothing new since `since` (seconds).
    Draining {
        /// When draining began.
        since: u64,
    },
    /// Its pod failed or exited: it serves no one, so it is deleted without a drain and
    /// replaced.
    Failed,
    /// It registered before and its record is gone now (it restarts, or cannot reach
    /// the live state): it may still carry media, so it is neither counted as seats nor
    /// removed.
    Unreachable,
}

/// One shard as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// The shard (its pod's name).
    pub name: String,
    /// Its phase.
    pub phase: ShardPhase,
    /// Participants on it now.
    pub participants: u32,
    /// Seats taken: the larger of its participants and the seats its rooms reserve.
    pub used_seats: u32,
    /// Whether anyone depends on it: participants, or a broadcast's origin or edge.
    pub occupied: bool,
    /// Since when it has been unoccupied (seconds), if it is.
    pub empty_since: Option<u64>,
}

/// Room that is wanted and not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// Seats of rooms no shard could take.
    pub pending_seats: u32,
    /// Shards that broadcast cascades want and the pool does not have (each edge needs a
    /// shard of its own).
    pub shards_short: u32,
}

/// Why a shard goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// It drained and nobody is left on it.
    Drained,
    /// Its drain deadline passed with participants still on it.
    DrainDeadline,
    /// Its pod failed.
    Failed,
    /// It never registered within the start-up timeout (unschedulable, crashing,
    /// cannot reach the live state).
    NeverRegistered,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Shards to start.
    pub create: u32,
    /// Shards to mark draining, oldest-empty first.
    pub drain: Vec<String>,
    /// Shards to delete, with why.
    pub delete: Vec<(String, DeleteReason)>,
    /// Free seats on serving shards, counting starting shards at their full size (after
    /// pending rooms take theirs).
    pub free_seats: u32,
    /// Seats the pool wants free: the buffer plus pending rooms.
    pub wanted_seats: u32,
}

impl Decision {
    /// Whether the pool is changing size.
    pub fn is_steady(&self) -> bool {
        self.create == 0 && self.drain.is_empty() && self.delete.is_empty()
    }
}

fn shards_for(seats: u32, per_shard: u32) -> u32 {
    seats.div_ceil(per_shard.max(1))
}

/// The next step for a pool at time `now` (seconds).
pub fn decide(policy: &PoolPolicy, shards: &[ShardView], demand: &Demand, now: u64) -> Decision {
    let per_shard = policy.seats_per_shard.max(1);
    let mut decision = Decision::default();
    let mut remaining_pods = 0u32;
    let starting_in_time = |shard: &ShardView| match shard.phase {
        ShardPhase::Starting { since } => now.saturating_sub(since) < policy.startup_timeout,
        _ => false,
    };
    for shard in shards {
        match shard.phase {
            ShardPhase::Failed => decision
                .delete
                .push((shard.name.clone(), DeleteReason::Failed)),
            ShardPhase::Starting { .. } if !starting_in_time(shard) => decision
                .delete
                .push((shard.name.clone(), DeleteReason::NeverRegistered)),
            ShardPhase::Draining { .. } if !shard.occupied => decision
                .delete
                .push((shard.name.clone(), DeleteReason::Drained)),
            ShardPhase::Draining { since } if now.saturating_sub(since) >= policy.drain_timeout => {
                decision
                    .delete
                    .push((shard.name.clone(), DeleteReason::DrainDeadline))
            }
            _ => remaining_pods += 1,
        }
    }
    let starting = shards.iter().filter(|s| starting_in_time(s)).count() as u32;
    let ready: Vec<&ShardView> = shards
        .iter()
        .filter(|s| s.phase == ShardPhase::Ready)
        .collect();
    let serving = starting + ready.len() as u32;
    let ready_free: u32 = ready
        .iter()
        .map(|s| per_shard.saturating_sub(s.used_seats))
        .fold(0, u32::saturating_add);
    // Pending rooms did not fit on any ready shard, so their seats come from shards that
    // are starting, then from new ones; what starting shards have left joins the free.
    let starting_seats = starting.saturating_mul(per_shard);
    let pending_left = demand.pending_seats.saturating_sub(starting_seats);
    let starting_left = starting_seats.saturating_sub(demand.pending_seats);
    let free = ready_free.saturating_add(starting_left);
    decision.free_seats = free;
    decision.wanted_seats = policy.buffer.saturating_add(demand.pending_seats);

    let for_buffer = shards_for(policy.buffer.saturating_sub(free), per_shard);
    let for_pending = shards_for(pending_left, per_shard);
    let for_cascades = demand.shards_short.saturating_sub(starting);
    let for_minimum = policy.min_shards.saturating_sub(serving);
    let wanted = for_buffer
        .saturating_add(for_pending)
        .max(for_cascades)
        .max(for_minimum);
    decision.create = wanted.min(policy.max_shards.saturating_sub(remaining_pods));
    if wanted > 0 || demand.pending_seats > 0 || demand.shards_short > 0 {
        return decision;
    }

    // Down: empty shards past the delay, the longest empty first, while the shards that
    // are ready (not those still starting, which may never come) cover the minimum and
    // the buffer. A drained shard takes all its seats along: the empty rooms that
    // reserved some move to the others.
    let idle_ready = ready.len() as u32;
    let mut idle: Vec<&ShardView> = ready
        .into_iter()
        .filter(|s| {
            !s.occupied
                && s.empty_since
                    .is_some_and(|t| now.saturating_sub(t) >= policy.scale_down_delay)
        })
        .collect();
    idle.sort_by(|a, b| a.empty_since.cmp(&b.empty_since).then(a.name.cmp(&b.name)));
    let (mut ready_left, mut free) = (idle_ready, ready_free);
    for shard in idle {
        if ready_left <= policy.min_shards || free.saturating_sub(per_shard) < policy.buffer {
            break;
        }
        decision.drain.push(shard.name.clone());
        ready_left -= 1;
        free = free.saturating_sub(per_shard);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PoolPolicy {
        PoolPolicy {
            min_shards: 1,
            max_shards: 10,
            seats_per_shard: 100,
            buffer: 50,
            scale_down_delay: 600,
            drain_timeout: 3600,
            startup_timeout: 300,
        }
    }

    fn shard(name: &str, phase: ShardPhase, used: u32, empty_since: Option<u64>) -> ShardView {
        ShardView {
            name: name.into(),
            phase,
            participants: used,
            used_seats: used,
            occupied: empty_since.is_none(),
            empty_since,
        }
    }

    #[test]
    fn an_empty_pool_starts_its_minimum() {
        let decision = decide(&policy(), &[], &Demand::default(), 0);
        assert_eq!(decision.create, 1);
    }

    #[test]
    fn a_thin_buffer_starts_a_shard_and_a_starting_one_counts() {
        let busy = [shard("a", ShardPhase::Ready, 80, None)];
        assert_eq!(decide(&policy(), &busy, &Demand::default(), 0).create, 1);
        let coming = [
            shard("a", ShardPhase::Ready, 80, None),
            shard("b", ShardPhase::Starting { since: 0 }, 0, Some(0)),
        ];
        assert_eq!(decide(&policy(), &coming, &Demand::default(), 0).create, 0);
    }

    #[test]
    fn pending_rooms_get_shards_even_when_free_seats_are_scattered() {
        // 60 free seats in total, but a 40-seat room fits nowhere: it still gets a shard.
        let shards = [
            shard("a", ShardPhase::Ready, 70, None),
            shard("b", ShardPhase::Ready, 70, None),
        ];
        let demand = Demand {
            pending_seats: 40,
            shards_short: 0,
        };
        let decision = decide(&policy(), &shards, &demand, 0);
        assert_eq!(decision.create, 1);
        assert_eq!(decision.wanted_seats, 90);
    }

    #[test]
    fn cascades_short_of_shards_get_them_and_max_bounds_everything() {
        let shards = [shard("a", ShardPhase::Ready, 0, None)];
        let demand = Demand {
            pending_seats: 0,
            shards_short: 4,
        };
        assert_eq!(decide(&policy(), &shards, &demand, 0).create, 4);
        let demand = Demand {
            pending_seats: 0,
            shards_short: 40,
        };
        assert_eq!(decide(&policy(), &shards, &demand, 0).create, 9);
    }

    #[test]
    fn only_shards_empty_past_the_delay_drain_and_the_buffer_stays() {
        let shards = [
            shard("busy", ShardPhase::Ready, 60, None),
            shard("fresh", ShardPhase::Ready, 0, Some(500)),
            shard("old", ShardPhase::Ready, 0, Some(100)),
            shard("older", ShardPhase::Ready, 0, Some(50)),
        ];
        // At 700 s "old" and "older" are past the 600 s delay; "fresh" is not.
        let decision = decide(&policy(), &shards, &Demand::default(), 700);
        // 40 + 100 + 100 + 100 free; draining both old ones leaves 140 >= 50.
        assert_eq!(decision.drain, vec!["older".to_owned(), "old".to_owned()]);
        // A drained shard takes all its seats, including those its empty rooms reserve
        // (they move): with 45 of them reserved on "older" only one may go under a 170
        // buffer (340 - 100 = 240, then 140 < 170 stops the second).
        let mut reserved = shards.clone();
        reserved[3].used_seats = 45;
        let wide = PoolPolicy {
            buffer: 170,
            ..policy()
        };
        assert_eq!(
            decide(&wide, &reserved, &Demand::default(), 700).drain,
            vec!["older".to_owned()]
        );
        assert_eq!(decision.create, 0);
        // With a 200-seat buffer only one may go (240 - 100 = 140 < 200 stops the second).
        let wide = PoolPolicy {
            buffer: 200,
            ..policy()
        };
        assert_eq!(
            decide(&wide, &shards, &Demand::default(), 700).drain,
            vec!["older".to_owned()]
        );
    }

    #[test]
    fn the_minimum_is_kept_even_when_idle() {
        let shards = [
            shard("a", ShardPhase::Ready, 0, Some(0)),
            shard("b", ShardPhase::Ready, 0, Some(0)),
        ];
        let decision = decide(&policy(), &shards, &Demand::default(), 10_000);
        assert_eq!(decision.drain.len(), 1);
        let two = PoolPolicy {
            min_shards: 2,
            ..policy()
        };
        assert!(decide(&two, &shards, &Demand::default(), 10_000).is_steady());
    }

    #[test]
    fn a_draining_shard_goes_when_empty_or_at_its_deadline_and_never_before() {
        let mut shards = vec![
            shard("a", ShardPhase::Ready, 0, None),
            shard("d", ShardPhase::Draining { since: 100 }, 10, None),
        ];
        let decision = decide(&policy(), &shards, &Demand::default(), 200);
        assert!(decision.delete.is_empty());
        let decision = decide(&policy(), &shards, &Demand::default(), 3700);
        assert_eq!(
            decision.delete,
            vec![("d".to_owned(), DeleteReason::DrainDeadline)]
        );
        shards[1].occupied = false;
        shards[1].empty_since = Some(150);
        let decision = decide(&policy(), &shards, &Demand::default(), 200);
        assert_eq!(
            decision.delete,
            vec![("d".to_owned(), DeleteReason::Drained)]
        );
    }

    #[test]
    fn a_shard_that_never_registers_is_replaced_and_never_props_up_a_drain() {
        let shards = [
            shard("idle", ShardPhase::Ready, 0, Some(0)),
            shard("stuck", ShardPhase::Starting { since: 500 }, 0, Some(500)),
        ];
        // The ready shard is idle past the delay, and the newcomer is within its start-up
        // time: it counts as seats, but the only ready shard is not drained on its promise.
        let decision = decide(&policy(), &shards, &Demand::default(), 700);
        assert!(decision.is_steady(), "{decision:?}");
        // Past its start-up time it is removed (never registered: nobody is on it).
        let decision = decide(&policy(), &shards, &Demand::default(), 900);
        assert_eq!(
            decision.delete,
            vec![("stuck".to_owned(), DeleteReason::NeverRegistered)]
        );
        assert!(decision.drain.is_empty());
    }

    #[test]
    fn a_shard_that_lost_its_record_is_kept_but_not_counted() {
        let shards = [
            shard("lost", ShardPhase::Unreachable, 0, None),
            shard("idle", ShardPhase::Ready, 0, Some(0)),
        ];
        let decision = decide(&policy(), &shards, &Demand::default(), 10_000);
        assert!(decision.delete.is_empty());
        // The idle shard is the only one known to serve: it stays.
        assert!(decision.drain.is_empty());
        assert_eq!(decision.free_seats, 100);
    }

    #[test]
    fn failed_shards_are_deleted_and_replaced() {
        let shards = [shard("f", ShardPhase::Failed, 0, Some(0))];
        let decision = decide(&policy(), &shards, &Demand::default(), 0);
        assert_eq!(
            decision.delete,
            vec![("f".to_owned(), DeleteReason::Failed)]
        );
        assert_eq!(decision.create, 1);
    }

    #[test]
    fn draining_shards_count_against_the_maximum() {
        let tight = PoolPolicy {
            max_shards: 2,
            ..policy()
        };
        let shards = [
            shard("a", ShardPhase::Ready, 100, None),
            shard("d", ShardPhase::Draining { since: 0 }, 5, None),
        ];
        assert_eq!(decide(&tight, &shards, &Demand::default(), 10).create, 0);
    }
}
