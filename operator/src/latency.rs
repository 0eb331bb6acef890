//! Latency-aware placement: which region minimises the worst participant's round trip,
//! and when a small room should move there. Pure functions of the participants' reports
//! and the regions that have room; the placer acts on their answers.
//!
//! A lesson or a quartet is only as good as its worst path: the pianist in Seoul and the
//! violinist in Abu Dhabi both hear each other through the shard, so what matters is the
//! larger of their two round trips to it, not the average.

use std::collections::BTreeSet;
use tutti_store::{LatencyReport, RoomRecord, ShardRecord};

/// Rooms this small move to a better region when a farther participant joins; larger
/// rooms stay where they are (a move cuts everyone off for a moment).
pub const MOVE_MAX_PARTICIPANTS: usize = 4;
/// A move must shorten the worst round trip by at least this much, ms...
pub const MOVE_MIN_GAIN_MS: u32 = 15;
/// ...and by at least this share of it.
pub const MOVE_MIN_GAIN_SHARE: f64 = 0.2;

/// A region as latency placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionScore {
    /// The region.
    pub region: String,
    /// Participants that measured it.
    pub measured_by: usize,
    /// The largest round trip among them, ms.
    pub worst_rtt_ms: u32,
    /// The sum of their round trips, ms (the tie-breaker).
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
            let rtts: Vec<u32> = reports
                .iter()
                .filter_map(|r| r.rtt_ms.get(region).copied())
                .collect();
            RegionScore {
                region: region.clone(),
                measured_by: rtts.len(),
                worst_rtt_ms: rtts.iter().copied().max().unwrap_or(u32::MAX),
                total_rtt_ms: rtts.iter().map(|&r| u64::from(r)).sum(),
            }
        })
        .collect()
}

/// The best of `regions` for the participants who reported: measured by the most, then
/// the smallest worst round trip, then the smallest total, then by name. `None` when
/// nobody measured any of them.
pub fn best_region(regions: &BTreeSet<String>, reports: &[LatencyReport]) -> Option<RegionScore> {
    score_regions(regions, reports)
        .into_iter()
        .filter(|score| score.measured_by > 0)
        .min_by(|a, b| {
            b.measured_by
                .cmp(&a.measured_by)
                .then(a.worst_rtt_ms.cmp(&b.worst_rtt_ms))
                .then(a.total_rtt_ms.cmp(&b.total_rtt_ms))
                .then(a.region.cmp(&b.region))
        })
}

/// Where a room in region `current` should move, if anywhere: only a room of at most
/// [`MOVE_MAX_PARTICIPANTS`] reporting participants that has not moved before, and only
/// to a region every one of them measured that shortens the worst round trip by at least
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
    // A region not everyone measured (`here.measured_by` short) counts as unbounded.
    let here_worst = if here.measured_by < reports.len() {
        u32::MAX
    } else {
        here.worst_rtt_ms
    };
    let gain = here_worst.saturating_sub(best.worst_rtt_ms);
    let enough = gain >= MOVE_MIN_GAIN_MS
        && f64::from(gain) >= MOVE_MIN_GAIN_SHARE * f64::from(here_worst.min(1_000_000));
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
    fn the_room_lands_where_the_worse_of_two_round_trips_is_smallest() {
        // The example, as round trips: Seoul 10/90/60 ms to a/b/c, Abu Dhabi
        // 80/20/50 ms. Worst per region: 80, 90, 60: c, although neither's nearest.
        let all = regions(&["a", "b", "c"]);
        let seoul = report("seoul", &[("a", 10), ("b", 90), ("c", 60)]);
        let abu_dhabi = report("abudhabi", &[("a", 80), ("b", 20), ("c", 50)]);
        let best = best_region(&all, &[seoul.clone(), abu_dhabi.clone()]).unwrap();
        assert_eq!(best.region, "c");
        assert_eq!(best.worst_rtt_ms, 60);
        // Alone, each is placed in their nearest region.
        assert_eq!(best_region(&all, &[seoul]).unwrap().region, "a");
        assert_eq!(best_region(&all, &[abu_dhabi]).unwrap().region, "b");
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
    fn ties_fall_to_the_total_then_the_name() {
        let all = regions(&["b", "a", "c"]);
        let reports = [
            report("p1", &[("a", 50), ("b", 50), ("c", 50)]),
            report("p2", &[("a", 40), ("b", 10), ("c", 10)]),
        ];
        // a and b and c share the worst (50); b and c share the total (60): b by name.
        assert_eq!(best_region(&all, &reports).unwrap().region, "b");
    }

    #[test]
    fn a_small_room_moves_once_and_only_for_a_clear_gain() {
        let all = regions(&["a", "b", "c"]);
        let seoul = report("seoul", &[("a", 10), ("b", 90), ("c", 60)]);
        let abu_dhabi = report("abudhabi", &[("a", 80), ("b", 20), ("c", 50)]);
        let both = [seoul.clone(), abu_dhabi];
        // Placed in a for Seoul; Abu Dhabi's arrival makes c better by 20 ms (25 %).
        assert_eq!(should_move("a", &all, &both, false).unwrap().region, "c");
        assert_eq!(should_move("a", &all, &both, true), None, "only once");
        assert_eq!(should_move("c", &all, &both, false), None, "already there");
        // A gain under 15 ms, or under 20 %, is not worth cutting everyone off.
        let close = [
            seoul.clone(),
            report("p2", &[("a", 70), ("b", 90), ("c", 58)]),
        ];
        assert_eq!(should_move("a", &all, &close, false), None);
        // Five people: the room stays.
        let crowd: Vec<_> = (0..5)
            .map(|i| report(&format!("p{i}"), &[("a", 200), ("b", 20)]))
            .collect();
        assert_eq!(should_move("a", &all, &crowd, false), None);
        // A region someone could not measure is no place to move to.
        let partial = [
            seoul,
            report("p3", &[("a", 150), ("c", 40)]),
            report("p4", &[("a", 150)]),
        ];
        assert_eq!(should_move("a", &all, &partial, false), None);
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
