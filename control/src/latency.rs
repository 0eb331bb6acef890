//! Latency-aware placement: which region gives the participants of a room the shortest
//! paths to each other, and when a small room should move there. Pure functions of the
//! participants' reports and the regions that have room; the placer acts on their answers.
//!
//! Everyone hears everyone else through the shard, so what a duet feels is the path from
//! one player to the shard and on to the other: half the first's round trip plus half the
//! second's, each way. The measure here is the longest such path between any two
//! participants, as a round trip: the sum of the two largest round trips to the region
//! (for a room of one, that participant's own round trip). Minimising the largest single
//! round trip instead would pick, for round trips of 10/90/60 ms and 80/20/50 ms to three
//! regions, the third (largest 60 ms) — where the two players are 60 + 50 = 110 ms apart,
//! against 10 + 80 = 90 ms in the first; ties on the path go to the smaller largest round
//! trip, then the smaller total.

use std::collections::BTreeSet;
use tutti_store::{LatencyReport, RoomRecord, ShardRecord};

/// Rooms this small move to a better region when a farther participant joins; larger
/// rooms stay where they are (a move cuts everyone off for a moment).
pub const MOVE_MAX_PARTICIPANTS: usize = 4;
/// A move must shorten the longest path by at least this much, ms...
pub const MOVE_MIN_GAIN_MS: u32 = 10;
/// ...and by at least this share of it.
pub const MOVE_MIN_GAIN_SHARE: f64 = 0.1;

/// A region as latency placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionScore {
    /// The region.
    pub region: String,
    /// Participants that measured it.
    pub measured_by: usize,
    /// The longest path between two participants through it, as a round trip (ms): the
    /// sum of the two largest round trips; a lone participant's own round trip.
    pub worst_path_ms: u32,
    /// The largest round trip to it, ms.
    pub worst_rtt_ms: u32,
    /// The sum of the round trips, ms.
    pub total_rtt_ms: u64,
}

/// Whether `record` is placed by latency among `shards` (the rule lives with the
/// record, where gateways read it too).
pub fn uses_latency(record: &RoomRecord, shards: &[ShardRecord]) -> bool {
    record.placed_by_latency(shards)
}

/// Scores each of `regions` by the reports. A region some participants did not measure
/// cannot be judged for them, so it ranks below regions measured by more.
pub fn score_regions(regions: &BTreeSet<String>, reports: &[LatencyReport]) -> Vec<RegionScore> {
    regions
        .iter()
        .map(|region| {
            let mut rtts: Vec<u32> = reports
                .iter()
                .filter_map(|r| r.rtt_ms.get(region).copied())
                .collect();
            rtts.sort_unstable_by(|a, b| b.cmp(a));
            let worst_path_ms = match rtts.as_slice() {
                [] => u32::MAX,
                [only] => *only,
                [first, second, ..] => first.saturating_add(*second),
            };
            RegionScore {
                region: region.clone(),
                measured_by: rtts.len(),
                worst_path_ms,
                worst_rtt_ms: rtts.first().copied().unwrap_or(u32::MAX),
                total_rtt_ms: rtts.iter().map(|&r| u64::from(r)).sum(),
            }
        })
        .collect()
}

/// The best of `regions` for the participants who reported: measured by the most, then
/// the shortest longest path, then the smallest largest round trip, then the smallest
/// total, then by name. `None` when nobody measured any of them.
pub fn best_region(regions: &BTreeSet<String>, reports: &[LatencyReport]) -> Option<RegionScore> {
    score_regions(regions, reports)
        .into_iter()
        .filter(|score| score.measured_by > 0)
        .min_by(|a, b| {
            b.measured_by
                .cmp(&a.measured_by)
                .then(a.worst_path_ms.cmp(&b.worst_path_ms))
                .then(a.worst_rtt_ms.cmp(&b.worst_rtt_ms))
                .then(a.total_rtt_ms.cmp(&b.total_rtt_ms))
                .then(a.region.cmp(&b.region))
        })
}

/// Where a room in region `current` should move, if anywhere: only a room of at most
/// [`MOVE_MAX_PARTICIPANTS`] reporting participants that has not moved before, and only
/// to a region every one of them measured that shortens the longest path by at least
/// [`MOVE_MIN_GAIN_MS`] and [`MOVE_MIN_GAIN_SHARE`].
pub fn should_move(
    current: &str,
    regions: &BTreeSet<String>,
    reports: &[LatencyReport],
    moved_before: bool,
) -> Option<RegionScore> {
    if moved_before || reports.is_empty() || reports.len() > MOVE_MAX_PARTICIPANTS {
        return None;
    }
    let mut all = regions.clone();
    all.insert(current.to_owned());
    let scores = score_regions(&all, reports);
    let here = scores.iter().find(|s| s.region == current)?;
    let best = best_region(regions, reports)?;
    if best.region == current || best.measured_by < reports.len() {
        return None;
    }
    // Where someone could not measure the current region, its path is unbounded.
    let here_path = if here.measured_by < reports.len() {
        u32::MAX
    } else {
        here.worst_path_ms
    };
    let gain = here_path.saturating_sub(best.worst_path_ms);
    let enough =
        gain >= MOVE_MIN_GAIN_MS && f64::from(gain) >= MOVE_MIN_GAIN_SHARE * f64::from(here_path);
    enough.then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(participant: &str, rtts: &[(&str, u32)]) -> LatencyReport {
        LatencyReport {
            room: "lesson".into(),
            participant: participant.into(),
            rtt_ms: rtts.iter().map(|(r, ms)| ((*r).to_owned(), *ms)).collect(),
        }
    }

    fn regions(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_room_lands_where_the_two_players_are_closest_through_it() {
        // Round trips: Seoul 10/90/60 ms to a/b/c, Abu Dhabi 80/20/50 ms. Through a they
        // are 90 ms apart, through b and c 110 ms: a, though c has the smaller largest
        // round trip (60 ms, against 80).
        let all = regions(&["a", "b", "c"]);
        let seoul = report("seoul", &[("a", 10), ("b", 90), ("c", 60)]);
        let abu_dhabi = report("abudhabi", &[("a", 80), ("b", 20), ("c", 50)]);
        let both = [seoul.clone(), abu_dhabi.clone()];
        let best = best_region(&all, &both).unwrap();
        assert_eq!((best.region.as_str(), best.worst_path_ms), ("a", 90));
        let scores = score_regions(&all, &both);
        assert_eq!(scores[2].worst_path_ms, 110);
        assert_eq!(scores[2].worst_rtt_ms, 60);
        // Alone, each is placed in their nearest region.
        assert_eq!(best_region(&all, &[seoul]).unwrap().region, "a");
        assert_eq!(best_region(&all, &[abu_dhabi]).unwrap().region, "b");
        // A quartet: the two farthest decide; then the largest round trip.
        let quartet = [
            report("p1", &[("a", 10), ("b", 40)]),
            report("p2", &[("a", 15), ("b", 40)]),
            report("p3", &[("a", 20), ("b", 40)]),
            report("p4", &[("a", 100), ("b", 40)]),
        ];
        let best = best_region(&regions(&["a", "b"]), &quartet).unwrap();
        assert_eq!((best.region.as_str(), best.worst_path_ms), ("b", 80));
    }

    #[test]
    fn regions_fewer_participants_measured_rank_lower_and_unmeasured_ones_never_win() {
        let all = regions(&["a", "b"]);
        // b is fast for the one who measured it, but the other could not reach it.
        let reports = [
            report("p1", &[("a", 70), ("b", 5)]),
            report("p2", &[("a", 40)]),
        ];
        assert_eq!(best_region(&all, &reports).unwrap().region, "a");
        assert_eq!(best_region(&all, &[report("p1", &[])]), None);
        assert_eq!(best_region(&regions(&[]), &reports), None);
    }

    #[test]
    fn ties_fall_to_the_largest_round_trip_then_the_total_then_the_name() {
        let all = regions(&["b", "a", "c", "d"]);
        let reports = [
            report("p1", &[("a", 50), ("b", 30), ("c", 30), ("d", 30)]),
            report("p2", &[("a", 10), ("b", 30), ("c", 30), ("d", 30)]),
            report("p3", &[("a", 0), ("b", 0), ("c", 0), ("d", 1)]),
        ];
        // Every path is 60; b, c and d have the smaller largest (30); b and c the
        // smaller total (60): b by name.
        assert_eq!(best_region(&all, &reports).unwrap().region, "b");
    }

    #[test]
    fn a_small_room_moves_once_and_only_for_a_clear_gain() {
        let all = regions(&["a", "b", "c"]);
        // Placed in c for the first joiner (nearest: 20); the second makes a better.
        let first = report("first", &[("a", 30), ("b", 90), ("c", 20)]);
        let second = report("second", &[("a", 30), ("b", 40), ("c", 90)]);
        let both = [first.clone(), second];
        // Through c: 110 ms apart; through a: 60.
        assert_eq!(should_move("c", &all, &both, false).unwrap().region, "a");
        assert_eq!(should_move("c", &all, &both, true), None, "only once");
        assert_eq!(should_move("a", &all, &both, false), None, "already there");
        // A gain under 10 ms, or under 10 %, is not worth cutting everyone off.
        // Through c 110 ms apart, through a 102 (first 30 + 72).
        let close = [
            first.clone(),
            report("p2", &[("a", 72), ("b", 95), ("c", 90)]),
        ];
        assert_eq!(best_region(&all, &close).unwrap().region, "a");
        assert_eq!(should_move("c", &all, &close, false), None);
        // Five people: the room stays.
        let crowd: Vec<_> = (0..5)
            .map(|i| report(&format!("p{i}"), &[("a", 200), ("b", 20)]))
            .collect();
        assert_eq!(should_move("a", &all, &crowd, false), None);
        // A region someone could not measure is no place to move to.
        let partial = [
            first,
            report("p3", &[("a", 150), ("c", 40)]),
            report("p4", &[("c", 150)]),
        ];
        assert_eq!(should_move("c", &all, &partial, false), None);
    }

    #[test]
    fn auto_means_latency_for_small_rooms_across_regions() {
        use tutti_store::PlacementPolicy;
        let mut room = RoomRecord::with_defaults("lesson");
        let shard = |id: &str, region: Option<&str>| {
            let mut record = ShardRecord::new(id, "http://shard", 100);
            record.region = region.map(str::to_owned);
            record
        };
        let spread = [shard("s1", Some("a")), shard("s2", Some("b"))];
        let one_region = [
            shard("s1", Some("a")),
            shard("s2", Some("a")),
            shard("s3", None),
        ];
        room.max_participants = 4;
        assert!(uses_latency(&room, &spread));
        assert!(!uses_latency(&room, &one_region));
        room.max_participants = 16;
        assert!(!uses_latency(&room, &spread));
        room.placement = PlacementPolicy::Latency;
        assert!(uses_latency(&room, &spread));
        room.max_participants = 4;
        room.placement = PlacementPolicy::Packed;
        assert!(!uses_latency(&room, &spread));
    }
}
