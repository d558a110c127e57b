//! The validated, indexed view of the nodes that every placement step shares.
//!
//! Nodes are sorted by id and referred to by index; islands are sorted by
//! name. Capacities are scaled down, if needed, so that their total fits in
//! 32 bits, which keeps the exact ideal-load arithmetic inside `u128`.

use std::collections::BTreeMap;

use atoll_proto::NodeId;

use super::spec::NodeSpec;
use super::spread::{spread, Spread};
use crate::PlacementError;

/// The largest total of capacity weights kept exactly.
const MAX_TOTAL_WEIGHT: u128 = 1 << 32;

/// One island: its nodes and how many replicas of each shard it holds.
#[derive(Clone, Debug)]
pub(crate) struct Island {
    /// Node indices, ascending.
    pub nodes: Vec<usize>,
    /// Replicas of each shard on this island.
    pub spread: Spread,
}

/// Validated nodes, the replication factor and the island bounds.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    /// Node ids, ascending; a node's index is its position here.
    pub ids: Vec<NodeId>,
    /// Island index of each node.
    pub island_of: Vec<usize>,
    /// Capacity weight of each node, at least 1, total at most 2^32.
    pub weight: Vec<u64>,
    /// Islands, by name.
    pub islands: Vec<Island>,
    /// Replicas per shard.
    pub rf: usize,
}

impl Cluster {
    /// Validates `nodes` for replication factor `rf`.
    pub fn new(nodes: &[NodeSpec], rf: usize) -> Result<Self, PlacementError> {
        if rf == 0 {
            return Err(PlacementError::ZeroReplicationFactor);
        }
        if nodes.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        let mut by_id: BTreeMap<NodeId, &NodeSpec> = BTreeMap::new();
        for node in nodes {
            if node.capacity == 0 {
                return Err(PlacementError::ZeroCapacity(node.id));
            }
            if node.island.is_empty() {
                return Err(PlacementError::EmptyIsland(node.id));
            }
            if by_id.insert(node.id, node).is_some() {
                return Err(PlacementError::DuplicateNode(node.id));
            }
        }
        if by_id.len() < rf {
            return Err(PlacementError::NotEnoughNodes {
                needed: rf,
                have: by_id.len(),
            });
        }
        let mut island_index: BTreeMap<&str, usize> = BTreeMap::new();
        for node in by_id.values() {
            island_index.insert(node.island.as_str(), 0);
        }
        for (i, index) in island_index.values_mut().enumerate() {
            *index = i;
        }
        let mut members = vec![Vec::new(); island_index.len()];
        let mut island_of = Vec::with_capacity(by_id.len());
        for (n, node) in by_id.values().enumerate() {
            let i = island_index[node.island.as_str()];
            members[i].push(n);
            island_of.push(i);
        }
        let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
        let islands = members
            .into_iter()
            .zip(spread(&sizes, rf))
            .map(|(nodes, spread)| Island { nodes, spread })
            .collect();
        let capacities: Vec<u64> = by_id.values().map(|n| n.capacity).collect();
        Ok(Cluster {
            ids: by_id.keys().copied().collect(),
            island_of,
            weight: scale_weights(&capacities),
            islands,
            rf,
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The index of node `id`, if it is in the cluster.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// How many of `replicas` sit on island `island`.
    pub fn count_in(&self, replicas: &[usize], island: usize) -> usize {
        replicas
            .iter()
            .filter(|&&n| self.island_of[n] == island)
            .count()
    }

    /// Whether node `from` may hand its replica of a shard holding
    /// `replicas` to a node on island `to` without breaking the island
    /// bounds (the receiver not being in the shard is checked elsewhere).
    pub fn allows_move(&self, replicas: &[usize], from: usize, to: usize) -> bool {
        let from = self.island_of[from];
        from == to
            || (self.count_in(replicas, from) > self.islands[from].spread.lo
                && self.count_in(replicas, to) < self.islands[to].spread.hi)
    }

    /// Whether `replicas` is a complete, valid replica set: RF distinct
    /// nodes and every island within its bounds.
    pub fn is_valid_shard(&self, replicas: &[usize]) -> bool {
        let distinct = replicas
            .iter()
            .enumerate()
            .all(|(k, n)| !replicas[..k].contains(n));
        distinct
            && replicas.len() == self.rf
            && self.islands.iter().enumerate().all(|(i, island)| {
                let c = self.count_in(replicas, i);
                island.spread.lo <= c && c <= island.spread.hi
            })
    }
}

/// Scales capacities down by a power of two until their total fits in
/// [`MAX_TOTAL_WEIGHT`], keeping every weight at least 1.
fn scale_weights(capacities: &[u64]) -> Vec<u64> {
    let mut shift = 0;
    loop {
        let weights: Vec<u64> = capacities
            .iter()
            .map(|&c| c.checked_shr(shift).unwrap_or(0).max(1))
            .collect();
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        if total <= MAX_TOTAL_WEIGHT || shift >= 64 {
            return weights;
        }
        shift += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::test_support::node;

    #[test]
    fn nodes_are_sorted_by_id_and_islands_by_name() {
        let nodes = [node(9, "b", 1), node(3, "a", 2), node(5, "b", 3)];
        let c = Cluster::new(&nodes, 2).unwrap();
        assert_eq!(c.ids, vec![NodeId(3), NodeId(5), NodeId(9)]);
        assert_eq!(c.island_of, vec![0, 1, 1]);
        assert_eq!(c.weight, vec![2, 3, 1]);
        assert_eq!(c.islands[1].nodes, vec![1, 2]);
        assert_eq!(c.index_of(NodeId(5)), Some(1));
        assert_eq!(c.index_of(NodeId(4)), None);
    }

    #[test]
    fn bad_input_is_refused_with_the_offending_node() {
        let ok = node(1, "a", 1);
        assert_eq!(
            Cluster::new(std::slice::from_ref(&ok), 0).unwrap_err(),
            PlacementError::ZeroReplicationFactor
        );
        assert_eq!(Cluster::new(&[], 1).unwrap_err(), PlacementError::NoNodes);
        assert_eq!(
            Cluster::new(&[ok.clone(), node(2, "a", 0)], 1).unwrap_err(),
            PlacementError::ZeroCapacity(NodeId(2))
        );
        assert_eq!(
            Cluster::new(&[ok.clone(), node(2, "", 1)], 1).unwrap_err(),
            PlacementError::EmptyIsland(NodeId(2))
        );
        assert_eq!(
            Cluster::new(&[ok.clone(), node(1, "b", 1)], 1).unwrap_err(),
            PlacementError::DuplicateNode(NodeId(1))
        );
        assert_eq!(
            Cluster::new(&[ok, node(2, "b", 1)], 3).unwrap_err(),
            PlacementError::NotEnoughNodes { needed: 3, have: 2 }
        );
    }

    #[test]
    fn huge_capacities_are_scaled_but_keep_their_proportions() {
        let w = scale_weights(&[u64::MAX, u64::MAX / 2, 1]);
        assert!(w.iter().map(|&x| u128::from(x)).sum::<u128>() <= MAX_TOTAL_WEIGHT);
        assert_eq!(w[2], 1);
        assert!(w[0].abs_diff(2 * w[1]) <= 1, "{w:?}");
        assert_eq!(scale_weights(&[3, 1, 7]), vec![3, 1, 7]);
    }

    #[test]
    fn shards_that_break_island_bounds_are_invalid() {
        // Islands a, b, c with two nodes each; RF 3 puts one per island.
        let nodes: Vec<NodeSpec> = (0..6)
            .map(|i| node(i, ["a", "b", "c"][i as usize / 2], 1))
            .collect();
        let c = Cluster::new(&nodes, 3).unwrap();
        let shard = [0, 2, 4];
        assert!(c.is_valid_shard(&shard));
        assert!(c.is_valid_shard(&[1, 3, 5]));
        assert!(c.allows_move(&shard, 0, 0));
        assert!(!c.allows_move(&shard, 0, 1));
        assert!(!c.is_valid_shard(&[0, 1, 2]));
        assert!(!c.is_valid_shard(&[0, 0, 2]));
        assert!(!c.is_valid_shard(&[0, 2]));
    }
}
