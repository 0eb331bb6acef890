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

    /// Seats waiting for shards carrying `labels`.
    pub fn seats_for(&self, labels: &BTreeMap<String, String>) -> u32 {
        let Ok(rooms) = self.rooms.lock() else {
            return 0;
        };
        rooms
            .values()
            .filter(|w| w.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|w| w.seats)
            .fold(0, u32::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_rooms_count_for_the_pools_they_select() {
        let unplaced = Unplaced::default();
        let fast = BTreeMap::from([("tier".to_owned(), "fast".to_owned())]);
        unplaced.no_shard("a/lesson", 2, &BTreeMap::new());
        unplaced.no_shard("a/ensemble", 12, &fast);
        assert_eq!(unplaced.seats_for(&BTreeMap::new()), 2);
        assert_eq!(unplaced.seats_for(&fast), 14);
        unplaced.settled("a/ensemble");
        assert_eq!(unplaced.seats_for(&fast), 2);
    }
}
