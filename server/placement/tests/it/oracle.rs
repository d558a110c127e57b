//! An independent, floating-point model of what placement must achieve, and
//! checks of an assignment against it.
//!
//! The ideal loads are recomputed here by bisection rather than with the
//! crate's exact arithmetic, so a wrong ideal in the crate shows up as a
//! failed check instead of agreeing with itself.

use std::collections::{BTreeMap, BTreeSet};

use atoll_placement::{place, Assignment, NodeSpec};
use atoll_proto::{NodeId, ShardId};

/// `count` nodes with ids 1.., spread round-robin over `islands` islands.
pub fn equal_nodes(count: u64, islands: u64) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| NodeSpec {
            id: NodeId(i + 1),
            island: format!("island-{}", i % islands),
            capacity: 1,
        })
        .collect()
}

/// Shards with ids 1..=count.
pub fn shards(count: u64) -> Vec<ShardId> {
    (1..=count).map(ShardId).collect()
}

/// `place` from scratch.
pub fn fresh(nodes: &[NodeSpec], shards: &[ShardId], rf: usize) -> Assignment {
    place(nodes, shards, rf, &Assignment::new()).unwrap()
}

/// Splits `total` over items `(weight, lo, hi)` as `clamp(l * w, lo, hi)`
/// for the level `l` that makes the shares add up to `total`.
pub fn water_fill(total: f64, items: &[(f64, f64, f64)]) -> Vec<f64> {
    let sum = |l: f64| -> f64 { items.iter().map(|&(w, lo, hi)| (l * w).clamp(lo, hi)).sum() };
    let (mut low, mut high) = (0.0, 1.0);
    while sum(high) < total {
        high *= 2.0;
    }
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if sum(mid) < total {
            low = mid;
        } else {
            high = mid;
        }
    }
    items
        .iter()
        .map(|&(w, lo, hi)| (high * w).clamp(lo, hi))
        .collect()
}

/// Each island's `(lo, hi)` replicas per shard: the most even spread the
/// island sizes allow.
pub fn island_bounds(nodes: &[NodeSpec], rf: usize) -> BTreeMap<String, (usize, usize)> {
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes {
        *sizes.entry(n.island.clone()).or_default() += 1;
    }
    let taken = |level: usize| sizes.values().map(|&s| s.min(level)).sum::<usize>();
    let level = (0..=rf).rev().find(|&l| taken(l) <= rf).unwrap_or(0);
    let exact = taken(level) == rf;
    sizes
        .iter()
        .map(|(island, &s)| {
            let hi = if exact {
                s.min(level)
            } else {
                s.min(level + 1)
            };
            (island.clone(), (s.min(level), hi))
        })
        .collect()
}

/// Each node's ideal replica count.
pub fn replica_ideals(nodes: &[NodeSpec], shards: usize, rf: usize) -> BTreeMap<NodeId, f64> {
    let s = shards as f64;
    let bounds = island_bounds(nodes, rf);
    let islands: Vec<&String> = bounds.keys().collect();
    let items: Vec<(f64, f64, f64)> = islands
        .iter()
        .map(|&island| {
            let weight: u64 = nodes
                .iter()
                .filter(|n| &n.island == island)
                .map(|n| n.capacity)
                .sum();
            let (lo, hi) = bounds[island];
            (weight as f64, s * lo as f64, s * hi as f64)
        })
        .collect();
    let shares = water_fill(s * rf as f64, &items);
    let mut ideals = BTreeMap::new();
    for (island, share) in islands.iter().zip(shares) {
        let members: Vec<&NodeSpec> = nodes.iter().filter(|n| &&n.island == island).collect();
        let items: Vec<(f64, f64, f64)> = members
            .iter()
            .map(|n| (n.capacity as f64, 0.0, s))
            .collect();
        for (n, ideal) in members.iter().zip(water_fill(share, &items)) {
            ideals.insert(n.id, ideal);
        }
    }
    ideals
}

/// Each node's ideal leader count, given its replica counts.
pub fn leader_ideals(
    nodes: &[NodeSpec],
    shards: usize,
    loads: &BTreeMap<NodeId, usize>,
) -> BTreeMap<NodeId, f64> {
    let items: Vec<(f64, f64, f64)> = nodes
        .iter()
        .map(|n| {
            (
                n.capacity as f64,
                0.0,
                loads.get(&n.id).copied().unwrap_or(0) as f64,
            )
        })
        .collect();
    nodes
        .iter()
        .map(|n| n.id)
        .zip(water_fill(shards as f64, &items))
        .collect()
}

/// Replicas per node (every node listed, zero included).
pub fn loads(nodes: &[NodeSpec], a: &Assignment) -> BTreeMap<NodeId, usize> {
    let mut loads: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
    for list in a.values() {
        for id in list {
            *loads.entry(*id).or_default() += 1;
        }
    }
    loads
}

/// Leaderships per node (every node listed, zero included).
pub fn leads(nodes: &[NodeSpec], a: &Assignment) -> BTreeMap<NodeId, usize> {
    let mut leads: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
    for list in a.values() {
        *leads.entry(list[0]).or_default() += 1;
    }
    leads
}

/// Whether `count` is `ideal` rounded down or up.
pub fn in_window(count: usize, ideal: f64) -> bool {
    let c = count as f64;
    c >= (ideal + 1e-6).floor() && c <= (ideal - 1e-6).ceil()
}

/// Asserts: exactly the requested shards, RF distinct known nodes each,
/// island counts within bounds, `min(RF, islands)` distinct islands.
pub fn assert_valid(nodes: &[NodeSpec], shards: &[ShardId], rf: usize, a: &Assignment) {
    let wanted: BTreeSet<ShardId> = shards.iter().copied().collect();
    let got: BTreeSet<ShardId> = a.keys().copied().collect();
    assert_eq!(got, wanted, "placed shards differ from requested");
    let island_of: BTreeMap<NodeId, &str> =
        nodes.iter().map(|n| (n.id, n.island.as_str())).collect();
    let bounds = island_bounds(nodes, rf);
    for (shard, list) in a {
        assert_eq!(list.len(), rf, "{shard}: {list:?}");
        let distinct: BTreeSet<NodeId> = list.iter().copied().collect();
        assert_eq!(distinct.len(), rf, "{shard}: repeated node in {list:?}");
        let mut per_island: BTreeMap<&str, usize> = BTreeMap::new();
        for id in list {
            let island = island_of
                .get(id)
                .unwrap_or_else(|| panic!("{shard}: unknown node {id}"));
            *per_island.entry(island).or_default() += 1;
        }
        assert_eq!(
            per_island.len(),
            rf.min(bounds.len()),
            "{shard}: islands {per_island:?}"
        );
        for (island, &(lo, hi)) in &bounds {
            let c = per_island.get(island.as_str()).copied().unwrap_or(0);
            assert!(
                lo <= c && c <= hi,
                "{shard}: {c} on {island}, bounds {lo}..={hi}"
            );
        }
    }
}

/// Asserts every node's replica count is its ideal rounded down or up.
pub fn assert_balanced(nodes: &[NodeSpec], rf: usize, a: &Assignment) {
    let ideals = replica_ideals(nodes, a.len(), rf);
    for (id, count) in loads(nodes, a) {
        assert!(
            in_window(count, ideals[&id]),
            "node {id}: {count} replicas, ideal {}",
            ideals[&id]
        );
    }
}

/// The integer window `[floor, ceil]` of an ideal.
fn window(ideal: f64) -> (usize, usize) {
    (
        (ideal + 1e-6).floor() as usize,
        (ideal - 1e-6).ceil() as usize,
    )
}

/// Asserts every node's leader count is its ideal rounded down or up.
pub fn assert_leaders_balanced(nodes: &[NodeSpec], a: &Assignment) {
    let ideals = leader_ideals(nodes, a.len(), &loads(nodes, a));
    for (id, count) in leads(nodes, a) {
        assert!(
            in_window(count, ideals[&id]),
            "node {id}: leads {count}, ideal {}",
            ideals[&id]
        );
    }
}

/// Asserts no single leader hand-over (to another replica of the same
/// shard) would bring a node closer to its leader window without pushing
/// the other out of its own.
pub fn assert_no_leader_hand_over_helps(nodes: &[NodeSpec], a: &Assignment) {
    let ideals = leader_ideals(nodes, a.len(), &loads(nodes, a));
    let leads = leads(nodes, a);
    for (shard, list) in a {
        let (from, (from_lo, from_hi)) = (leads[&list[0]], window(ideals[&list[0]]));
        for other in &list[1..] {
            let (to, (to_lo, to_hi)) = (leads[other], window(ideals[other]));
            assert!(
                !((from > from_hi && to < to_hi) || (from > from_lo && to < to_lo)),
                "{shard}: {} leads {from} (window {from_lo}..={from_hi}), {other} leads {to} (window {to_lo}..={to_hi})",
                list[0]
            );
        }
    }
}

/// Whether every node has the same ideal replica count (no island or
/// capacity distortion).
pub fn uniform(nodes: &[NodeSpec], shards: usize, rf: usize) -> bool {
    let ideals = replica_ideals(nodes, shards, rf);
    let first = ideals.values().next().copied().unwrap_or(0.0);
    ideals.values().all(|v| (v - first).abs() < 1e-9)
}

/// Whether every island holds a fixed number of each shard's replicas
/// (one island, or for example RF 3 over 3 islands).
pub fn fixed_islands(nodes: &[NodeSpec], rf: usize) -> bool {
    island_bounds(nodes, rf).values().all(|(lo, hi)| lo == hi)
}

/// Replicas placed on a node that did not hold them before, over shards in
/// both assignments.
pub fn moved(before: &Assignment, after: &Assignment) -> usize {
    after
        .iter()
        .filter_map(|(shard, list)| before.get(shard).map(|old| (list, old)))
        .map(|(list, old)| list.iter().filter(|id| !old.contains(id)).count())
        .sum()
}
