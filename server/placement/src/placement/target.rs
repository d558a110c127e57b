//! Each node's ideal load, exactly, and the integer window `[floor, ceil]` of
//! that ideal that placement brings every node into.
//!
//! Replicas: the `shards * RF` replicas are first shared among islands in
//! proportion to island capacity, each island held between `shards * lo` and
//! `shards * hi` by the spreading rule (so a lone node in its own island with
//! RF 3 over 3 islands has ideal `shards`); each island's share is then split
//! among its nodes in proportion to capacity, no node above `shards` (one
//! replica per shard).
//!
//! Leaders: the `shards` leaderships are shared in proportion to capacity,
//! no node above the replicas it holds.
//!
//! [`Eagerness`] ranks nodes for one more unit by how far along towards
//! their target they are; the greedy steps use it.

use std::cmp::Ordering;

use super::cluster::Cluster;
use super::share::{water_fill, Item, Share};

/// A node's ideal count of something and the window it should end in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Target {
    /// The exact ideal, as a float, for heuristics.
    pub ideal: f64,
    /// The ideal rounded down.
    pub lo: u64,
    /// The ideal rounded up.
    pub hi: u64,
}

impl From<Share> for Target {
    fn from(share: Share) -> Self {
        Target {
            ideal: share.as_f64(),
            lo: share.floor(),
            hi: share.ceil(),
        }
    }
}

/// Each node's replica target (indexed like `cluster.ids`) for `shards`
/// shards. Needs `shards * rf <= 2^40`.
pub(crate) fn replica_targets(cluster: &Cluster, shards: u64) -> Vec<Target> {
    let s = u128::from(shards);
    let rf = cluster.rf as u128;
    let island_items: Vec<Item> = cluster
        .islands
        .iter()
        .map(|island| Item {
            weight: island
                .nodes
                .iter()
                .map(|&n| u128::from(cluster.weight[n]))
                .sum(),
            lo: s * island.spread.lo as u128,
            hi: s * island.spread.hi as u128,
        })
        .collect();
    let island_shares = water_fill(s * rf, &island_items);
    let mut targets = vec![Share { num: 0, den: 1 }; cluster.len()];
    for (island, share) in cluster.islands.iter().zip(island_shares) {
        // Work in units of 1 / share.den so the island's total is an integer.
        let node_items: Vec<Item> = island
            .nodes
            .iter()
            .map(|&n| Item {
                weight: u128::from(cluster.weight[n]),
                lo: 0,
                hi: s * share.den,
            })
            .collect();
        for (&n, node_share) in island.nodes.iter().zip(water_fill(share.num, &node_items)) {
            targets[n] = Share {
                num: node_share.num,
                den: node_share.den * share.den,
            };
        }
    }
    targets.into_iter().map(Target::from).collect()
}

/// Each node's leader target for `shards` shards, given the replicas each
/// node holds (`loads`, summing to `shards * rf`).
pub(crate) fn leader_targets(cluster: &Cluster, shards: u64, loads: &[usize]) -> Vec<Target> {
    let items: Vec<Item> = loads
        .iter()
        .enumerate()
        .map(|(n, &load)| Item {
            weight: u128::from(cluster.weight[n]),
            lo: 0,
            hi: load as u128,
        })
        .collect();
    water_fill(u128::from(shards), &items)
        .into_iter()
        .map(Target::from)
        .collect()
}

/// How much a node wants one more unit (replica or leadership); smaller
/// compares first and wins.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Eagerness {
    /// One more would take the node past its ceiling.
    over: bool,
    /// Count after one more, relative to the ideal.
    ratio: f64,
    /// Rendezvous score; higher wins ties.
    score: u64,
}

impl Eagerness {
    /// The eagerness of a node holding `count` with `target`.
    pub fn new(count: usize, target: &Target, score: u64) -> Self {
        let next = count as f64 + 1.0;
        Eagerness {
            over: count as u64 >= target.hi,
            ratio: next / target.ideal,
            score,
        }
    }

    /// Total order: not over first, then lowest ratio, then highest score.
    pub fn compare(&self, other: &Self) -> Ordering {
        self.over
            .cmp(&other.over)
            .then(self.ratio.total_cmp(&other.ratio))
            .then(other.score.cmp(&self.score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::test_support::node;
    use crate::NodeSpec;

    /// Node `i` (id `i`) on island `nodes[i].0` with capacity `nodes[i].1`.
    fn cluster(nodes: &[(&str, u64)], rf: usize) -> Cluster {
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .enumerate()
            .map(|(i, &(island, capacity))| node(i as u64, island, capacity))
            .collect();
        Cluster::new(&specs, rf).unwrap()
    }

    fn ideals(targets: &[Target]) -> Vec<f64> {
        targets.iter().map(|t| t.ideal).collect()
    }

    #[test]
    fn equal_nodes_in_one_island_share_equally() {
        let c = cluster(&[("a", 1); 4], 3);
        let t = replica_targets(&c, 10);
        assert_eq!(ideals(&t), vec![7.5; 4]);
        assert!(t.iter().all(|t| t.lo == 7 && t.hi == 8));
    }

    #[test]
    fn capacity_sets_the_share() {
        let c = cluster(&[("a", 1), ("a", 2), ("a", 3), ("a", 6)], 2);
        // 24 replicas by weight 1:2:3:6, the largest capped at 12 (one per shard).
        assert_eq!(ideals(&replica_targets(&c, 12)), vec![2.0, 4.0, 6.0, 12.0]);
        let c = cluster(&[("a", 1), ("a", 1), ("a", 1), ("a", 9)], 2);
        assert_eq!(ideals(&replica_targets(&c, 12)), vec![4.0, 4.0, 4.0, 12.0]);
    }

    #[test]
    fn a_lone_node_in_its_island_holds_every_shard() {
        let mut nodes = vec![("a", 1)];
        nodes.extend([("b", 1); 5]);
        nodes.extend([("c", 1); 5]);
        let t = replica_targets(&cluster(&nodes, 3), 100);
        assert_eq!(t[0].ideal, 100.0);
        assert!(t[1..].iter().all(|t| t.ideal == 20.0));
    }

    #[test]
    fn two_islands_with_rf3_split_by_capacity_within_one_to_two_per_shard() {
        // Island a has 3x the capacity of b, but holds at most 2 of 3 replicas.
        let t = replica_targets(&cluster(&[("a", 3), ("a", 3), ("b", 1), ("b", 1)], 3), 60);
        assert_eq!(ideals(&t), vec![60.0, 60.0, 30.0, 30.0]);
        // Island b has 3/5 of the capacity: 108 of 180. Its weight-2 node
        // would take 72, but holds at most one replica per shard: 60.
        let t = replica_targets(&cluster(&[("a", 1), ("a", 1), ("b", 1), ("b", 2)], 3), 60);
        assert_eq!(ideals(&t), vec![36.0, 36.0, 48.0, 60.0]);
    }

    #[test]
    fn leaders_follow_capacity_but_never_exceed_replicas_held() {
        let c = cluster(&[("a", 1), ("a", 1), ("a", 4)], 2);
        let t = leader_targets(&c, 12, &[8, 8, 8]);
        assert_eq!(ideals(&t), vec![2.0, 2.0, 8.0]);
        let t = leader_targets(&c, 12, &[12, 6, 6]);
        assert_eq!(ideals(&t), vec![3.0, 3.0, 6.0]);
    }

    #[test]
    fn eagerness_prefers_room_then_ratio_then_score() {
        let t = Target {
            ideal: 4.0,
            lo: 4,
            hi: 4,
        };
        let a = Eagerness::new(1, &t, 0);
        let b = Eagerness::new(2, &t, 9);
        let full = Eagerness::new(4, &t, 9);
        assert_eq!(a.compare(&b), Ordering::Less);
        assert_eq!(b.compare(&full), Ordering::Less);
        assert_eq!(Eagerness::new(1, &t, 5).compare(&a), Ordering::Less);
    }
}
