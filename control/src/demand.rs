//! Rooms that found no shard: the Room controller notes them, the ShardPool reconciler
//! grows the pools they could land on. In memory: after a restart the next failed
//! placement notes them again.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A room waiting for room.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    seats: u32,
    selector: BTreeMap<String, String>,
}

/// Rooms no shard could take, by key (namespace/name).
#[derive(Debug, Default)]
pub struct Unplaced {
    rooms: Mutex<BTreeMap<String, Waiting>>,
}

impl Unplaced {
    /// Notes that `room` needs `seats` seats on a shard carrying `selector`.
    pub fn no_shard(&self, room: &str, seats: u32, selector: &BTreeMap<String, String>) {
        if let Ok(mut rooms) = self.rooms.lock() {
            rooms.insert(
                room.to_owned(),
                Waiting {
                    seats,
                    selector: selector.clone(),
                },
            );
        }
    }

    /// Forgets `room` (placed, or gone).
    pub fn settled(&self, room: &str) {
        if let Ok(mut rooms) = self.rooms.lock() {
            rooms.remove(room);
        }
    }

    /// Seats waiting for a pool whose shards carry `labels` (its own and the pool
    /// label) and hold `seats_per_shard` each. A room counts for one kind of pool only:
    /// rooms that select labels for the pools carrying them, rooms that select nothing
    /// for general-purpose pools (`general`: no labels of their own), so a room does not
    /// grow every pool at once. A room bigger than one shard fits no shard of the pool
    /// and is left out: no number of shards would seat it.
    pub fn seats_for(
        &self,
        labels: &BTreeMap<String, String>,
        general: bool,
        seats_per_shard: u32,
    ) -> u32 {
        let Ok(rooms) = self.rooms.lock() else {
            return 0;
        };
        rooms
            .values()
            .filter(|w| w.seats <= seats_per_shard)
            .filter(|w| {
                if w.selector.is_empty() {
                    general
                } else {
                    crate::placement::selects(&w.selector, labels)
                }
            })
            .map(|w| w.seats)
            .fold(0, u32::saturating_add)
    }

    /// Rooms too big for a shard of `seats_per_shard`, for the pool's status.
    pub fn oversized(&self, seats_per_shard: u32) -> Vec<String> {
        let Ok(rooms) = self.rooms.lock() else {
            return Vec::new();
        };
        rooms
            .iter()
            .filter(|(_, w)| w.seats > seats_per_shard)
            .map(|(room, _)| room.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_rooms_count_for_one_kind_of_pool_and_only_if_they_fit() {
        let unplaced = Unplaced::default();
        let fast = BTreeMap::from([("tier".to_owned(), "fast".to_owned())]);
        unplaced.no_shard("a/lesson", 2, &BTreeMap::new());
        unplaced.no_shard("a/ensemble", 12, &fast);
        unplaced.no_shard("a/stadium", 5000, &BTreeMap::new());
        // A general pool of 500-seat shards: the lesson (the stadium fits no shard).
        assert_eq!(unplaced.seats_for(&BTreeMap::new(), true, 500), 2);
        // The labelled pool: only the room that asked for it.
        assert_eq!(unplaced.seats_for(&fast, false, 500), 12);
        assert_eq!(unplaced.oversized(500), vec!["a/stadium".to_owned()]);
        unplaced.settled("a/ensemble");
        assert_eq!(unplaced.seats_for(&fast, false, 500), 0);
    }
}
