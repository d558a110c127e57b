//! The initial cluster map: computed the same way by every node from the
//! same `cluster.initial_nodes`, so a new cluster needs no coordinator.

use atoll_placement::{place, split_hash_space, Assignment, NodeSpec};
use atoll_proto::v1::{ClusterMap, Node, NodeState, Replica, Shard};
use atoll_proto::{NodeId, ShardId};

use crate::config::ClusterConfig;

/// Most voters of the meta shard.
pub const META_VOTERS: usize = 5;

/// The map of a new cluster: `initial_shards` equal hash ranges placed by
/// the placement function, and the meta shard on an odd number of nodes,
/// at most five.
/// Replica ids are handed out in order, meta first.
pub fn initial_map(cluster: &ClusterConfig) -> Result<ClusterMap, String> {
    let mut nodes = cluster.initial_nodes.clone();
    nodes.sort_by_key(|n| n.id);
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| NodeSpec {
            id: NodeId(n.id),
            island: n.island.clone(),
            capacity: n.capacity,
        })
        .collect();
    let ranges = split_hash_space(cluster.initial_shards).map_err(|e| e.to_string())?;
    let shard_ids: Vec<ShardId> = (1..=ranges.len() as u64).map(ShardId).collect();
    let rf = cluster.replication_factor as usize;
    let data = place(&specs, &shard_ids, rf, &Assignment::new()).map_err(|e| e.to_string())?;
    let meta_voters = crate::planner::meta_voters(nodes.len());
    let meta = place(&specs, &[ShardId::META], meta_voters, &Assignment::new())
        .map_err(|e| e.to_string())?;

    let mut next_replica = 1u64;
    let mut replicas_of = |placed: Option<&Vec<NodeId>>| -> Vec<Replica> {
        placed
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|node| {
                        let replica = Replica {
                            replica_id: next_replica,
                            node_id: node.get(),
                        };
                        next_replica += 1;
                        replica
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta_shard = Shard {
        id: ShardId::META.get(),
        range_start: 0,
        range_last: 0,
        replicas: replicas_of(meta.get(&ShardId::META)),
        epoch: 1,
    };
    let shards = shard_ids
        .iter()
        .zip(&ranges)
        .map(|(id, range)| Shard {
            id: id.get(),
            range_start: range.start,
            range_last: range.last,
            replicas: replicas_of(data.get(id)),
            epoch: 1,
        })
        .collect();
    let mut map = ClusterMap {
        map_version: 1,
        replication_factor: cluster.replication_factor,
        nodes: nodes
            .iter()
            .map(|n| Node {
                id: n.id,
                island: n.island.clone(),
                address: n.address.clone(),
                capacity: n.capacity,
                state: NodeState::Up as i32,
                join_token: 0,
                incarnation: 0,
            })
            .collect(),
        shards,
        meta: Some(meta_shard),
        next_replica_id: next_replica,
        cluster_name: cluster.name.clone(),
        cluster_id: 0,
        next_node_id: nodes.iter().map(|n| n.id + 1).max().unwrap_or(1),
        moves: Vec::new(),
        next_move_id: 1,
        placement_paused: false,
        placement_limits: None,
        next_shard_id: shard_ids.iter().map(|s| s.get() + 1).max().unwrap_or(1),
        splits: Vec::new(),
    };
    // Every node computes the initial map itself: the id must come out the
    // same on each, so it is the fingerprint of the layout.
    map.cluster_id = crate::identity::Identity::of(&map, 0).cluster_id;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;
    use crate::config::InitialNode;

    fn cluster(nodes: u64, islands: u64, shards: u32) -> ClusterConfig {
        ClusterConfig {
            name: "t".into(),
            initial_shards: shards,
            replication_factor: 3,
            initial_nodes: (1..=nodes)
                .map(|i| InitialNode {
                    id: i,
                    island: format!("island-{}", i % islands),
                    address: format!("127.0.0.1:{}", 7000 + i),
                    capacity: 100,
                })
                .collect(),
            join: Vec::new(),
            ..Default::default()
        }
    }

    #[test]
    fn every_shard_has_replicas_on_distinct_islands() {
        let map = initial_map(&cluster(5, 3, 16)).unwrap();
        assert_eq!(map.shards.len(), 16);
        for shard in &map.shards {
            let islands: HashSet<_> = shard
                .replicas
                .iter()
                .map(|r| map.node(NodeId(r.node_id)).map(|n| n.island.clone()))
                .collect();
            assert_eq!(shard.replicas.len(), 3);
            assert_eq!(islands.len(), 3, "shard {} spans {islands:?}", shard.id);
        }
    }

    #[test]
    fn replica_ids_are_unique_and_the_map_is_deterministic() {
        let a = initial_map(&cluster(5, 3, 16)).unwrap();
        let b = initial_map(&cluster(5, 3, 16)).unwrap();
        assert_eq!(a, b);
        let ids: Vec<u64> = a
            .shards
            .iter()
            .chain(a.meta.iter())
            .flat_map(|s| s.replicas.iter().map(|r| r.replica_id))
            .collect();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(a.next_replica_id, ids.len() as u64 + 1);
    }
}
