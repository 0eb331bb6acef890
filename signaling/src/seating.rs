//! Where a viewer of a broadcast is seated: an edge of its cascade with free seats, in the
//! gateway's region when shards are labelled with regions, the least loaded first; and
//! which probe each region offers clients measuring their round trips to it.
//!
//! The viewer counts come from the cascade as the operator last published it, so they
//! trail reality by a pass; the edge's own seat limit is what finally admits a viewer,
//! and a refused viewer is offered the next edge.

use tutti_store::{CascadeRecord, ShardRecord};

/// The edges to try for one viewer, best first. `tried` are edges that already refused
/// this viewer (full, gone, or draining).
pub fn edges_for_viewer<'a>(
    cascade: &CascadeRecord,
    shards: &'a [ShardRecord],
    max_viewers_per_shard: u32,
    region: Option<&str>,
    tried: &[String],
) -> Vec<&'a ShardRecord> {
    let mut open: Vec<(&ShardRecord, u32)> = cascade
        .edges
        .iter()
        .filter(|edge| !edge.draining && edge.viewers < max_viewers_per_shard)
        .filter(|edge| !tried.contains(&edge.shard))
        .filter_map(|edge| {
            let shard = shards.iter().find(|s| s.id == edge.shard)?;
            (!shard.draining).then_some((shard, edge.viewers))
        })
        .collect();
    // Elsewhere only when the region has no seat; then the fewest viewers, then the
    // least loaded shard, then by id so that every gateway agrees.
    open.sort_by_key(|(shard, viewers)| {
        let away = match (region, shard.region.as_deref()) {
            (Some(mine), Some(theirs)) => mine != theirs,
            _ => false,
        };
        (away, *viewers, shard.load.participants, shard.id.clone())
    });
    open.into_iter().map(|(shard, _)| shard).collect()
}

/// One region's probe, as `GET /v1/regions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionProbe {
    /// The region.
    pub region: String,
    /// `stun:host:port` of one of its shards.
    pub probe: String,
}

/// One probe per region: the first shard (by id) of each region that is not draining
/// and has a probe address. Shards without a region are left out.
pub fn region_probes(shards: &[ShardRecord]) -> Vec<RegionProbe> {
    let mut probes: Vec<RegionProbe> = Vec::new();
    let mut sorted: Vec<&ShardRecord> = shards.iter().filter(|s| !s.draining).collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for shard in sorted {
        let (Some(region), Some(probe)) = (&shard.region, &shard.probe) else {
            continue;
        };
        if !probes.iter().any(|p| &p.region == region) {
            probes.push(RegionProbe {
                region: region.clone(),
                probe: format!("stun:{probe}"),
            });
        }
    }
    probes.sort_by(|a, b| a.region.cmp(&b.region));
    probes
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_store::CascadeEdge;

    fn edge(shard: &str, viewers: u32, draining: bool) -> CascadeEdge {
        CascadeEdge {
            shard: shard.into(),
            parent: "o".into(),
            viewers,
            draining,
        }
    }

    fn shard(id: &str, region: Option<&str>) -> ShardRecord {
        let mut record = ShardRecord::new(id, &format!("http://{id}:1"), 1000);
        record.region = region.map(str::to_owned);
        record
    }

    fn ids(seats: &[&ShardRecord]) -> Vec<String> {
        seats.iter().map(|s| s.id.clone()).collect()
    }

    #[test]
    fn the_least_loaded_open_edge_first() {
        let cascade = CascadeRecord {
            broadcast: "b".into(),
            stage: "b".into(),
            origin: "o".into(),
            edges: vec![
                edge("e1", 40, false),
                edge("e2", 10, false),
                edge("e3", 0, true),
                edge("e4", 50, false),
                edge("e5", 5, false),
            ],
        };
        let mut shards: Vec<ShardRecord> = ["o", "e1", "e2", "e3", "e4"]
            .into_iter()
            .map(|id| shard(id, None))
            .collect();
        assert_eq!(
            ids(&edges_for_viewer(&cascade, &shards, 50, None, &[])),
            ["e2", "e1"],
            "e3 drains, e4 is full, e5's shard is gone"
        );
        assert_eq!(
            ids(&edges_for_viewer(
                &cascade,
                &shards,
                50,
                None,
                &["e2".into()]
            )),
            ["e1"]
        );
        shards[1].draining = true;
        assert_eq!(
            ids(&edges_for_viewer(&cascade, &shards, 50, None, &[])),
            ["e2"],
            "a draining shard takes no viewer"
        );
    }

    #[test]
    fn viewers_stay_in_their_region_while_it_has_seats() {
        let cascade = CascadeRecord {
            broadcast: "b".into(),
            stage: "b".into(),
            origin: "o".into(),
            edges: vec![
                edge("seoul-1", 90, false),
                edge("tokyo-1", 0, false),
                edge("seoul-2", 99, false),
            ],
        };
        let shards = vec![
            shard("seoul-1", Some("seoul")),
            shard("seoul-2", Some("seoul")),
            shard("tokyo-1", Some("tokyo")),
        ];
        assert_eq!(
            ids(&edges_for_viewer(
                &cascade,
                &shards,
                100,
                Some("seoul"),
                &[]
            )),
            ["seoul-1", "seoul-2", "tokyo-1"]
        );
        assert_eq!(
            ids(&edges_for_viewer(&cascade, &shards, 100, None, &[])),
            ["tokyo-1", "seoul-1", "seoul-2"]
        );
    }

    #[test]
    fn each_region_offers_one_live_probe() {
        let mut a1 = shard("a1", Some("eu"));
        a1.probe = Some("198.51.100.1:7882".into());
        let mut a0 = shard("a0", Some("eu"));
        a0.probe = Some("198.51.100.2:7882".into());
        a0.draining = true;
        let mut b = shard("b", Some("me"));
        b.probe = Some("[2001:db8::1]:7882".into());
        let mut nowhere = shard("c", None);
        nowhere.probe = Some("198.51.100.3:7882".into());
        let probes = region_probes(&[b, a0, a1, nowhere]);
        assert_eq!(
            probes,
            vec![
                RegionProbe {
                    region: "eu".into(),
                    probe: "stun:198.51.100.1:7882".into()
                },
                RegionProbe {
                    region: "me".into(),
                    probe: "stun:[2001:db8::1]:7882".into()
                },
            ]
        );
    }
}
