//! Builders shared by the unit tests of the placement steps.

use atoll_proto::{NodeId, ShardId};

use super::cluster::Cluster;
use super::layout::Layout;
use crate::{Assignment, NodeSpec};

/// Node `id` on `island` with weight `capacity`.
pub(crate) fn node(id: u64, island: &str, capacity: u64) -> NodeSpec {
    NodeSpec {
        id: NodeId(id),
        island: island.to_string(),
        capacity,
    }
}

/// A cluster of capacity-1 nodes: node `i` (id `i`) sits on `islands[i]`.
pub(crate) fn cluster(islands: &[&str], rf: usize) -> Cluster {
    let nodes: Vec<NodeSpec> = islands
        .iter()
        .enumerate()
        .map(|(i, island)| node(i as u64, island, 1))
        .collect();
    Cluster::new(&nodes, rf).unwrap()
}

/// A layout of shards `0..shards.len()` over `current`, shard `s` holding
/// the node indices `shards[s]` in order.
pub(crate) fn layout(c: &Cluster, shards: &[&[usize]], current: &Assignment) -> Layout {
    let ids = (0..shards.len() as u64).map(ShardId).collect();
    let mut layout = Layout::new(c, ids, current);
    for (s, replicas) in shards.iter().enumerate() {
        for &n in replicas.iter() {
            layout.add(s, n);
        }
    }
    layout
}
