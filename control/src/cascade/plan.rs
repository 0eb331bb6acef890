//! Cascade planning for a Broadcast: which shard is the origin, and the tree of edge
//! shards that relay its media to the audience. A pure function of the previous plan,
//! the audience (expected and live) and the shards alive now.
//!
//! * Every relay node (the origin or an edge) feeds at most `fanout` child edges, and edges
//!   are attached breadth-first, so the tree is as shallow as the fan-out allows.
//! * The plan sizes the tree for the larger of the expected and the live audience plus
//!   `headroom`, so new viewers find seats before they arrive.
//! * Edges keep their place while their shard lives. An edge whose shard is gone is
//!   replaced at the same place, so its subtree keeps its parent.
//! * When the audience shrinks, surplus edges (leaves only, the newest first) are marked
//!   draining: no new viewers are seated there and the gateways move their viewers off;
//!   an edge is removed only once it is empty.

use std::collections::BTreeMap;

/// How cascades are shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeParams {
    /// Children one relay node feeds at most.
    pub fanout: usize,
    /// Extra seats planned beyond the audience, as a fraction (0.2 = 20 %).
    pub headroom: f64,
}

impl Default for CascadeParams {
    fn default() -> Self {
        Self {
            fanout: 16,
            headroom: 0.2,
        }
    }
}

/// One edge of a plan: the record the live state keeps.
pub use tutti_store::CascadeEdge as Edge;

/// A broadcast's relay tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The origin shard, where presenters publish.
    pub origin: String,
    /// Edges in the order they were added (breadth-first).
    pub edges: Vec<Edge>,
}

/// What a plan is asked to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The audience the organiser expects.
    pub expected_audience: u32,
    /// Viewers seated now, per edge shard.
    pub viewers: BTreeMap<String, u32>,
    /// Viewers one edge seats at most.
    pub max_viewers_per_shard: u32,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No shard is alive to be the origin.
    #[error("no shard is alive for the origin")]
    NoOrigin,
}

impl Plan {
    /// Relay hops from the origin to the farthest edge (0 without edges).
    pub fn depth(&self) -> usize {
        self.edges
            .iter()
            .map(|edge| self.depth_of(&edge.shard))
            .max()
            .unwrap_or(0)
    }

    fn depth_of(&self, shard: &str) -> usize {
        let mut depth = 0;
        let mut current = shard;
        // Bounded by the number of edges, whatever a corrupt plan says.
        for _ in 0..=self.edges.len() {
            match self.edges.iter().find(|e| e.shard == current) {
                Some(edge) => {
                    depth += 1;
                    current = &edge.parent;
                }
                None => break,
            }
        }
        depth
    }

    /// Children each relay node feeds.
    pub fn relays_per_node(&self) -> BTreeMap<String, usize> {
        let mut relays: BTreeMap<String, usize> = BTreeMap::new();
        relays.insert(self.origin.clone(), 0);
        for edge in &self.edges {
            *relays.entry(edge.parent.clone()).or_default() += 1;
        }
        relays
    }

    /// Seats for new viewers across edges that are not draining.
    pub fn open_seats(&self, max_viewers_per_shard: u32) -> u64 {
        self.edges
            .iter()
            .filter(|e| !e.draining)
            .map(|e| u64::from(max_viewers_per_shard.saturating_sub(e.viewers)))
            .sum()
    }
}

/// Edges needed for an audience of `audience` with headroom.
pub fn edges_needed(audience: u32, max_viewers_per_shard: u32, headroom: f64) -> usize {
    let planned = (f64::from(audience) * (1.0 + headroom.max(0.0))).ceil();
    let per_edge = f64::from(max_viewers_per_shard.max(1));
    ((planned / per_edge).ceil() as usize).max(1)
}

/// The next plan. `alive` lists the shards that may take part, preferred first (the
/// least loaded); shards of the previous plan keep their places while they are alive.
pub fn plan(
    previous: Option<&Plan>,
    demand: &Demand,
    alive: &[String],
    params: CascadeParams,
) -> Result<Plan, PlanError> {
    let is_alive = |shard: &str| alive.iter().any(|s| s == shard);
    let origin = match previous {
        Some(p) if is_alive(&p.origin) => p.origin.clone(),
        _ => alive.first().cloned().ok_or(PlanError::NoOrigin)?,
    };
    let mut spare: Vec<String> = alive.iter().filter(|s| **s != origin).cloned().collect();
    let mut edges: Vec<Edge> = Vec::new();
    // Keep the previous edges in order; a dead one is replaced at its place by a spare
    // shard (its children follow the new shard), or dropped when none is left.
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    if let Some(previous) = previous {
        if previous.origin != origin {
            renamed.insert(previous.origin.clone(), origin.clone());
        }
        for edge in &previous.edges {
            spare.retain(|s| *s != edge.shard);
        }
        for edge in &previous.edges {
            let shard = if is_alive(&edge.shard) && edge.shard != origin {
                edge.shard.clone()
            } else if let Some(replacement) = take_first(&mut spare) {
                renamed.insert(edge.shard.clone(), replacement.clone());
                replacement
            } else {
                continue;
            };
            edges.push(Edge {
                viewers: demand.viewers.get(&shard).copied().unwrap_or(0),
                shard,
                parent: edge.parent.clone(),
                draining: edge.draining,
            });
        }
        for edge in &mut edges {
            if let Some(new_parent) = renamed.get(&edge.parent) {
                edge.parent = new_parent.clone();
            }
        }
        // A parent that vanished without replacement: the subtree hangs from the origin
        // until re-attached below.
        let known: Vec<String> = edges.iter().map(|e| e.shard.clone()).collect();
        for edge in &mut edges {
            if edge.parent != origin && !known.contains(&edge.parent) {
                edge.parent = origin.clone();
            }
        }
    }
    let audience = demand
        .expected_audience
        .max(demand.viewers.values().copied().sum());
    let needed = edges_needed(audience, demand.max_viewers_per_shard, params.headroom);
    let active = edges.iter().filter(|e| !e.draining).count();
    if active < needed {
        // Reopen draining edges first (they are already in the tree), newest first.
        let mut reopen = needed - active;
        for edge in edges.iter_mut().rev() {
            if reopen == 0 {
                break;
            }
            if edge.draining {
                edge.draining = false;
                reopen -= 1;
            }
        }
        for _ in 0..reopen {
            let Some(shard) = take_first(&mut spare) else {
                break;
            };
            let parent = first_parent_with_room(&origin, &edges, params.fanout);
            edges.push(Edge {
                shard,
                parent,
                draining: false,
                viewers: 0,
            });
        }
    } else if active > needed {
        // Drain the newest leaves beyond what is needed.
        let mut surplus = active - needed;
        for index in (0..edges.len()).rev() {
            if surplus == 0 {
                break;
            }
            let shard = edges[index].shard.clone();
            let is_leaf = !edges.iter().any(|e| e.parent == shard);
            if !edges[index].draining && is_leaf {
                edges[index].draining = true;
                surplus -= 1;
            }
        }
    }
    // Empty draining leaves go; removing one may make its parent a leaf, so repeat.
    loop {
        let removable = edges.iter().position(|edge| {
            edge.draining && edge.viewers == 0 && !edges.iter().any(|e| e.parent == edge.shard)
        });
        match removable {
            Some(index) => {
                edges.remove(index);
            }
            None => break,
        }
    }
    Ok(Plan { origin, edges })
}

fn take_first(spare: &mut Vec<String>) -> Option<String> {
    (!spare.is_empty()).then(|| spare.remove(0))
}

/// Breadth-first: the origin, then each edge in order, the first with a free child slot.
fn first_parent_with_room(origin: &str, edges: &[Edge], fanout: usize) -> String {
    let children = |node: &str| edges.iter().filter(|e| e.parent == node).count();
    std::iter::once(origin.to_owned())
        .chain(edges.iter().map(|e| e.shard.clone()))
        .find(|node| children(node) < fanout.max(1))
        .unwrap_or_else(|| origin.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:05}")).collect()
    }

    fn demand(expected: u32, max: u32) -> Demand {
        Demand {
            expected_audience: expected,
            viewers: BTreeMap::new(),
            max_viewers_per_shard: max,
        }
    }

    fn check_bounds(plan: &Plan, fanout: usize) {
        for (node, relays) in plan.relays_per_node() {
            assert!(relays <= fanout, "{node} relays to {relays}");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(plan.origin.clone()));
        for edge in &plan.edges {
            assert!(seen.insert(edge.shard.clone()), "{} twice", edge.shard);
        }
    }

    #[test]
    fn a_concert_of_a_hundred_thousand_fits_a_shallow_tree() {
        let params = CascadeParams::default();
        let alive = shards(400);
        let plan = plan(None, &demand(100_000, 500), &alive, params).unwrap();
        let relays = plan.relays_per_node();
        let max_relays = relays.values().max().copied().unwrap_or(0);
        println!(
            "100000 viewers, maxViewersPerShard 500, fanout {}: {} edges, depth {}, at most {} relays per shard, {} seats",
            params.fanout,
            plan.edges.len(),
            plan.depth(),
            max_relays,
            plan.open_seats(500)
        );
        assert_eq!(plan.edges.len(), 240, "100000 * 1.2 / 500");
        assert_eq!(plan.depth(), 2, "16 + 256 slots cover 240 edges");
        assert!(max_relays <= params.fanout);
        assert!(plan.open_seats(500) >= 100_000);
        check_bounds(&plan, params.fanout);
    }

    #[test]
    fn depth_is_the_smallest_the_fanout_allows() {
        let params = CascadeParams {
            fanout: 2,
            headroom: 0.0,
        };
        for (edges, depth) in [(1, 1), (2, 1), (3, 2), (6, 2), (7, 3), (14, 3), (15, 4)] {
            let plan = plan(None, &demand(edges * 10, 10), &shards(40), params).unwrap();
            assert_eq!(plan.edges.len(), edges as usize);
            assert_eq!(plan.depth(), depth, "{edges} edges");
            check_bounds(&plan, 2);
        }
    }

    #[test]
    fn growth_is_ahead_of_demand_and_keeps_edges_in_place() {
        let params = CascadeParams::default();
        let alive = shards(10);
        let small = plan(None, &demand(100, 100), &alive, params).unwrap();
        assert_eq!(
            small.edges.len(),
            2,
            "100 viewers + 20 % headroom need 2 edges of 100"
        );
        let mut viewers = demand(0, 100);
        viewers.viewers = small.edges.iter().map(|e| (e.shard.clone(), 95)).collect();
        let grown = plan(Some(&small), &viewers, &alive, params).unwrap();
        assert_eq!(
            grown.edges.len(),
            3,
            "190 viewers need 228 seats: a third edge before anyone waits"
        );
        assert_eq!(
            &grown.edges[..2]
                .iter()
                .map(|e| &e.shard)
                .collect::<Vec<_>>(),
            &small.edges.iter().map(|e| &e.shard).collect::<Vec<_>>()
        );
    }

    #[test]
    fn shrinking_drains_leaves_and_removes_them_only_when_empty() {
        let params = CascadeParams {
            fanout: 2,
            headroom: 0.0,
        };
        let alive = shards(10);
        let big = plan(None, &demand(500, 100), &alive, params).unwrap();
        assert_eq!(big.edges.len(), 5);
        // The audience falls to 150 but the last edges still seat people.
        let mut now = demand(0, 100);
        now.viewers = big.edges.iter().map(|e| (e.shard.clone(), 30)).collect();
        let draining = plan(Some(&big), &now, &alive, params).unwrap();
        assert_eq!(draining.edges.len(), 5, "occupied edges stay");
        assert_eq!(draining.edges.iter().filter(|e| e.draining).count(), 3);
        assert!(draining.open_seats(100) >= 140);
        // The gateways moved the viewers off the draining edges: they go.
        let mut moved = demand(0, 100);
        moved.viewers = draining
            .edges
            .iter()
            .map(|e| (e.shard.clone(), if e.draining { 0 } else { 75 }))
            .collect();
        let shrunk = plan(Some(&draining), &moved, &alive, params).unwrap();
        assert_eq!(shrunk.edges.len(), 2);
        assert!(shrunk.edges.iter().all(|e| !e.draining));
        check_bounds(&shrunk, 2);
    }

    #[test]
    fn a_dead_edge_is_replaced_in_place_and_a_dead_origin_moves() {
        let params = CascadeParams {
            fanout: 2,
            headroom: 0.0,
        };
        let alive = shards(8);
        let first = plan(None, &demand(400, 100), &alive, params).unwrap();
        let dead = first.edges[0].shard.clone();
        let children: Vec<String> = first
            .edges
            .iter()
            .filter(|e| e.parent == dead)
            .map(|e| e.shard.clone())
            .collect();
        assert!(!children.is_empty());
        let survivors: Vec<String> = alive.iter().filter(|s| **s != dead).cloned().collect();
        let repaired = plan(Some(&first), &demand(400, 100), &survivors, params).unwrap();
        let replacement = repaired.edges[0].shard.clone();
        assert_ne!(replacement, dead);
        for child in children {
            let edge = repaired.edges.iter().find(|e| e.shard == child).unwrap();
            assert_eq!(
                edge.parent, replacement,
                "the subtree follows the replacement"
            );
        }
        let without_origin: Vec<String> = survivors
            .iter()
            .filter(|s| **s != first.origin)
            .cloned()
            .collect();
        let moved = plan(Some(&repaired), &demand(400, 100), &without_origin, params).unwrap();
        assert_ne!(moved.origin, first.origin);
        assert!(moved.edges.iter().all(|e| e.shard != moved.origin));
        check_bounds(&moved, 2);
        assert_eq!(
            plan(None, &demand(1, 1), &[], params),
            Err(PlanError::NoOrigin)
        );
    }
}
