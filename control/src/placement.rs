//! Choosing a shard for a room: a pure function of the live shard records and what is
//! already placed on them.
//!
//! In the terms of Agones' scheduling: **Packed** (the default) fills the busiest shard
//! that still fits, so that quiet shards empty out and can be scaled down; **Distributed**
//! spreads rooms over the least busy shards, for the lowest load per shard. A room reserves
//! its `maxParticipants` seats on its shard, so no room can outgrow the shard it is on.

use std::collections::BTreeMap;
use tutti_store::{RoomRecord, Route, ShardRecord};

/// How rooms are spread over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Strategy {
    /// Fill the busiest shard that fits (fewer shards in use; scale-down friendly).
    #[default]
    Packed,
    /// Use the least busy shard that fits.
    Distributed,
}

/// A shard as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The shard id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its region.
    pub region: Option<String>,
    /// Seats it has.
    pub capacity: u32,
    /// Seats reserved by the rooms already on it.
    pub reserved: u32,
    /// Whether it is draining.
    pub draining: bool,
}

/// Why no shard was chosen, with how many shards each reason ruled out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NoFit {
    /// Shards known.
    pub shards: usize,
    /// Ruled out: draining.
    pub draining: usize,
    /// Ruled out: lacking the selector's labels.
    pub unmatched: usize,
    /// Ruled out: not enough free seats.
    pub full: usize,
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.shards == 0 {
            return write!(f, "no shard is alive");
        }
        write!(
            f,
            "none of {} shards fits: {} draining, {} without the selected labels, {} without enough free seats",
            self.shards, self.draining, self.unmatched, self.full
        )
    }
}

/// Candidates from the live state: each shard with the seats its routed rooms reserve.
/// `except` is left out of the reservations (the room being placed).
pub fn candidates(
    shards: &[ShardRecord],
    routes: &[Route],
    rooms: &[RoomRecord],
    except: &str,
) -> Vec<Candidate> {
    let seats: BTreeMap<&str, u32> = rooms
        .iter()
        .map(|r| (r.name.as_str(), r.max_participants))
        .collect();
    shards
        .iter()
        .map(|shard| Candidate {
            id: shard.id.clone(),
            labels: shard.labels.clone(),
            region: shard.region.clone(),
            capacity: shard.capacity,
            reserved: routes
                .iter()
                .filter(|r| r.shard == shard.id && r.room != except)
                .map(|r| seats.get(r.room.as_str()).copied().unwrap_or(0))
                .fold(0u32, u32::saturating_add),
            draining: shard.draining,
        })
        .collect()
}

/// Whether shards labelled `labels` carry everything `selector` asks for.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Chooses the shard for a room needing `seats` seats on shards carrying `selector`.
pub fn place<'a>(
    shards: &'a [Candidate],
    seats: u32,
    selector: &BTreeMap<String, String>,
    strategy: Strategy,
) -> Result<&'a Candidate, NoFit> {
    let mut no_fit = NoFit {
        shards: shards.len(),
        ..NoFit::default()
    };
    let mut fitting: Vec<&Candidate> = Vec::new();
    for shard in shards {
        if shard.draining {
            no_fit.draining += 1;
        } else if !selects(selector, &shard.labels) {
            no_fit.unmatched += 1;
        } else if shard.reserved.saturating_add(seats) > shard.capacity {
            no_fit.full += 1;
        } else {
            fitting.push(shard);
        }
    }
    // Ties go to the lowest id, so the same inputs always give the same answer.
    let chosen = match strategy {
        Strategy::Packed => fitting
            .into_iter()
            .min_by(|a, b| b.reserved.cmp(&a.reserved).then_with(|| a.id.cmp(&b.id))),
        Strategy::Distributed => fitting
            .into_iter()
            .min_by(|a, b| a.reserved.cmp(&b.reserved).then_with(|| a.id.cmp(&b.id))),
    };
    chosen.ok_or(no_fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, capacity: u32, reserved: u32) -> Candidate {
        Candidate {
            id: id.into(),
            labels: BTreeMap::new(),
            region: None,
            capacity,
            reserved,
            draining: false,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn packed_fills_the_busiest_shard_that_fits() {
        let shards = [
            shard("a", 100, 10),
            shard("b", 100, 80),
            shard("c", 100, 95),
        ];
        let none = BTreeMap::new();
        // c is busiest but has 5 seats; b fits 16.
        assert_eq!(place(&shards, 16, &none, Strategy::Packed).unwrap().id, "b");
        assert_eq!(place(&shards, 5, &none, Strategy::Packed).unwrap().id, "c");
        assert_eq!(
            place(&shards, 16, &none, Strategy::Distributed).unwrap().id,
            "a"
        );
    }

    #[test]
    fn bin_packing_a_stream_of_rooms_never_overfills() {
        let mut shards = vec![shard("a", 50, 0), shard("b", 50, 0), shard("c", 50, 0)];
        let none = BTreeMap::new();
        let mut placed = 0;
        for seats in [16, 16, 16, 2, 16, 16, 16, 2, 16, 16, 16, 2, 40] {
            if let Ok(chosen) = place(&shards, seats, &none, Strategy::Packed) {
                let id = chosen.id.clone();
                let target = shards.iter_mut().find(|s| s.id == id).unwrap();
                target.reserved += seats;
                placed += 1;
            }
        }
        assert!(shards.iter().all(|s| s.reserved <= s.capacity));
        // Packed: the first shard filled exactly (16+16+16+2) before the next was used.
        assert_eq!(shards[0].reserved, 50);
        assert_eq!(placed, 12, "the 40-seat room fits nowhere");
        let full = place(&shards, 40, &none, Strategy::Packed).unwrap_err();
        assert_eq!(full.full, 3);
    }

    #[test]
    fn draining_and_unlabelled_shards_are_ruled_out_and_counted() {
        let mut draining = shard("a", 100, 0);
        draining.draining = true;
        let mut fast = shard("b", 100, 90);
        fast.labels = labels(&[("tutti.dev/tier", "low-latency")]);
        let plain = shard("c", 100, 0);
        let shards = [draining, fast, plain];
        let selector = labels(&[("tutti.dev/tier", "low-latency")]);
        assert_eq!(
            place(&shards, 10, &selector, Strategy::Packed).unwrap().id,
            "b"
        );
        let no_fit = place(&shards, 20, &selector, Strategy::Packed).unwrap_err();
        assert_eq!(
            no_fit,
            NoFit {
                shards: 3,
                draining: 1,
                unmatched: 1,
                full: 1
            }
        );
        assert!(no_fit.to_string().contains("1 draining"));
        assert_eq!(
            place(&[], 2, &selector, Strategy::Packed)
                .unwrap_err()
                .to_string(),
            "no shard is alive"
        );
    }

    #[test]
    fn ties_fall_to_the_lowest_id_whatever_the_order() {
        let none = BTreeMap::new();
        for strategy in [Strategy::Packed, Strategy::Distributed] {
            let shards = [shard("z", 10, 4), shard("m", 10, 4), shard("q", 10, 4)];
            assert_eq!(place(&shards, 2, &none, strategy).unwrap().id, "m");
        }
    }

    #[test]
    fn reservations_come_from_routed_rooms() {
        let record = |id: &str| ShardRecord::new(id, "http://shard", 100);
        let room = |name: &str, max: u32| RoomRecord {
            max_participants: max,
            ..RoomRecord::with_defaults(name)
        };
        let route = |room: &str, shard: &str| Route {
            room: room.into(),
            shard: shard.into(),
            epoch: 1,
        };
        let list = candidates(
            &[record("a"), record("b")],
            &[route("x", "a"), route("y", "a"), route("z", "b")],
            &[room("x", 10), room("y", 20), room("z", 5)],
            "y",
        );
        assert_eq!(
            list[0].reserved, 10,
            "the room being placed does not count itself"
        );
        assert_eq!(list[1].reserved, 5);
    }
}
