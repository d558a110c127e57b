//! Which moves the controller starts (docs/design/elastic.md, "Moves"):
//! the placement target for the nodes that are up and answering, compared
//! with the map. A replica on a removed or silent node is repaired first,
//! then replicas leave draining nodes, then the rest rebalance (a node that
//! joined gets its share). Pure: the same map and silent nodes always give
//! the same plan.

use std::collections::BTreeSet;

use atoll_placement::{place, Assignment, NodeSpec};
use atoll_proto::v1::{ClusterMap, Shard};
use atoll_proto::{NodeId, ShardId};
use atoll_raft::meta_command::Lifecycle;

use crate::bootstrap::META_VOTERS;

/// Why a move is made, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reason {
    /// The replica is on a removed or silent node (or the shard is short
    /// of one).
    Repair,
    /// The replica is on a draining node.
    Drain,
    /// Placement wants it elsewhere.
    Rebalance,
}

impl Reason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::Repair => "repair",
            Reason::Drain => "drain",
            Reason::Rebalance => "rebalance",
        }
    }
}

/// One move placement asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub shard: ShardId,
    pub epoch: u64,
    /// 0 when the shard is short of a replica.
    pub from_replica: u64,
    pub from_node: u64,
    /// 0 when the replica only leaves (the shard has one to spare).
    pub to_node: u64,
    pub reason: Reason,
}

/// The nodes placement may put replicas on: those that are up, but the
/// `left_out`.
fn up_nodes(map: &ClusterMap, left_out: &BTreeSet<u64>) -> Vec<NodeSpec> {
    (map.nodes.iter())
        .filter(|n| Lifecycle::of(n) == Lifecycle::Up && !left_out.contains(&n.id))
        .map(|n| NodeSpec {
            id: NodeId(n.id),
            island: n.island.clone(),
            capacity: n.capacity.max(1),
        })
        .collect()
}

/// How many voters the meta shard has among `nodes` nodes: an odd number
/// (an even one tolerates no more failures than the odd one below it, and
/// needs a larger quorum), at most [`META_VOTERS`].
pub(crate) fn meta_voters(nodes: usize) -> usize {
    let n = nodes.clamp(1, META_VOTERS);
    n - (1 - n % 2)
}

/// The placement target of every shard, for the nodes that are up (but
/// the `left_out`). The meta shard has [`meta_voters`] of them.
fn target(map: &ClusterMap, left_out: &BTreeSet<u64>) -> Result<Assignment, String> {
    let nodes = up_nodes(map, left_out);
    let current = |shards: &mut dyn Iterator<Item = &Shard>| -> Assignment {
        shards
            .map(|s| {
                let nodes = s.replicas.iter().map(|r| NodeId(r.node_id)).collect();
                (ShardId(s.id), nodes)
            })
            .collect()
    };
    let data: Vec<ShardId> = map.shards.iter().map(|s| ShardId(s.id)).collect();
    let rf = map.replication_factor.max(1) as usize;
    let mut assignment =
        place(&nodes, &data, rf, &current(&mut map.shards.iter())).map_err(|e| e.to_string())?;
    if let Some(meta) = &map.meta {
        let voters = meta_voters(nodes.len());
        let placed = place(
            &nodes,
            &[ShardId::META],
            voters,
            &current(&mut std::iter::once(meta)),
        )
        .map_err(|e| e.to_string())?;
        assignment.extend(placed);
    }
    Ok(assignment)
}

/// Whether the nodes that are up, but `node`, can hold every shard with its
/// replication factor and island spread: a drain of `node` is refused
/// otherwise, with the reason.
pub(crate) fn can_drain(map: &ClusterMap, node: u64) -> Result<(), String> {
    target(map, &BTreeSet::from([node]))
        .map(|_| ())
        .map_err(|why| format!("the other nodes cannot hold node {node}'s replicas: {why}"))
}

/// The moves that bring `map` to its placement target, most urgent first,
/// at most one per shard, skipping shards with a move in progress. The
/// `silent` nodes (up, but not answering for `cluster.dead_after`) get no
/// replicas, and theirs are repaired elsewhere.
pub(crate) fn plan(map: &ClusterMap, silent: &BTreeSet<u64>) -> Result<Vec<Planned>, String> {
    let target = target(map, silent)?;
    let state = |node: u64| map.node(NodeId(node)).map(Lifecycle::of);
    let island = |node: u64| map.node(NodeId(node)).map(|n| n.island.clone());
    let moving: BTreeSet<u64> = map.moves.iter().map(|m| m.shard_id).collect();
    let mut planned = Vec::new();
    for shard in map.meta.iter().chain(&map.shards) {
        if moving.contains(&shard.id) {
            continue;
        }
        let Some(wanted) = target.get(&ShardId(shard.id)) else {
            continue;
        };
        let current: BTreeSet<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
        let mut arriving: Vec<u64> = (wanted.iter())
            .map(|n| n.get())
            .filter(|n| !current.contains(n))
            .collect();
        let mut leaving: Vec<(Reason, u64, u64)> = (shard.replicas.iter())
            .filter(|r| !wanted.iter().any(|n| n.get() == r.node_id))
            .map(|r| {
                let reason = match state(r.node_id) {
                    _ if silent.contains(&r.node_id) => Reason::Repair,
                    Some(Lifecycle::Up) => Reason::Rebalance,
                    Some(Lifecycle::Draining) => Reason::Drain,
                    _ => Reason::Repair,
                };
                (reason, r.replica_id, r.node_id)
            })
            .collect();
        leaving.sort();
        // The most urgent replica leaves first, to a node on its own
        // island when one is arriving, so the shard keeps its islands.
        let next = match leaving.first() {
            Some(&(reason, replica, node)) => {
                // None arriving: the shard shrinks (the meta shard after
                // nodes left), and the replica only leaves.
                let same = arriving.iter().position(|a| island(*a) == island(node));
                let to = (same.or((!arriving.is_empty()).then_some(0)))
                    .map_or(0, |at| arriving.remove(at));
                Some((reason, replica, node, to))
            }
            None => arriving.first().map(|to| (Reason::Repair, 0, 0, *to)),
        };
        if let Some((reason, from_replica, from_node, to_node)) = next {
            planned.push(Planned {
                shard: ShardId(shard.id),
                epoch: shard.epoch,
                from_replica,
                from_node,
                to_node,
                reason,
            });
        }
    }
    planned.sort_by_key(|p| (p.reason, p.shard));
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use atoll_proto::v1::{Node, NodeState, Replica};

    use super::*;

    fn node(id: u64, island: &str, state: NodeState) -> Node {
        Node {
            id,
            island: island.into(),
            address: format!("n{id}"),
            capacity: 100,
            state: state as i32,
            join_token: 0,
            incarnation: 0,
        }
    }

    /// Nodes 1-3 on islands a, b, c hold every replica of 6 shards.
    fn map() -> ClusterMap {
        let shard = |id: u64| Shard {
            id,
            epoch: 1,
            replicas: (1..=3)
                .map(|n| Replica {
                    replica_id: id * 10 + n,
                    node_id: n,
                })
                .collect(),
            ..Default::default()
        };
        ClusterMap {
            replication_factor: 3,
            nodes: vec![
                node(1, "a", NodeState::Up),
                node(2, "b", NodeState::Up),
                node(3, "c", NodeState::Up),
            ],
            shards: (1..=6).map(shard).collect(),
            meta: Some(Shard { id: 0, ..shard(0) }),
            ..Default::default()
        }
    }

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        assert!(plan(&map(), &BTreeSet::new()).unwrap().is_empty());
    }

    #[test]
    fn a_new_node_gets_its_share_from_its_own_island() {
        let mut m = map();
        m.nodes.push(node(4, "a", NodeState::Up));
        let planned = plan(&m, &BTreeSet::new()).unwrap();
        assert!(!planned.is_empty());
        for p in &planned {
            assert_eq!((p.from_node, p.to_node), (1, 4), "{p:?}");
            assert_eq!(p.reason, Reason::Rebalance);
        }
        // Node 1 and node 4 split island a's replicas (7 shards with meta).
        assert!((3..=4).contains(&planned.len()), "{planned:?}");
    }

    #[test]
    fn repairs_come_before_drains_and_drains_before_rebalancing() {
        let mut m = map();
        m.nodes.push(node(4, "a", NodeState::Up));
        m.nodes.push(node(5, "b", NodeState::Up));
        m.nodes[0].state = NodeState::Removed as i32;
        m.nodes[1].state = NodeState::Draining as i32;
        // One move per shard: each shard's replica on the removed node 1
        // goes first, to node 4 on its island.
        let planned = plan(&m, &BTreeSet::new()).unwrap();
        assert_eq!(planned.len(), 7, "{planned:?}");
        for p in &planned {
            assert_eq!((p.reason, p.from_node, p.to_node), (Reason::Repair, 1, 4));
        }
        // Once repaired, the draining node's replicas go to node 5.
        for shard in m.meta.iter_mut().chain(m.shards.iter_mut()) {
            for r in &mut shard.replicas {
                if r.node_id == 1 {
                    r.node_id = 4;
                }
            }
        }
        let planned = plan(&m, &BTreeSet::new()).unwrap();
        assert_eq!(planned.len(), 7, "{planned:?}");
        for p in &planned {
            assert_eq!((p.reason, p.from_node, p.to_node), (Reason::Drain, 2, 5));
        }
        // A move in progress holds its shard back.
        m.moves.push(atoll_proto::v1::Move {
            shard_id: 3,
            ..Default::default()
        });
        assert!(plan(&m, &BTreeSet::new())
            .unwrap()
            .iter()
            .all(|p| p.shard != ShardId(3)));
    }

    #[test]
    fn a_silent_node_is_repaired_like_a_removed_one() {
        let mut m = map();
        m.nodes.push(node(4, "a", NodeState::Up));
        for shard in m.meta.iter_mut().chain(m.shards.iter_mut()).take(3) {
            shard.replicas[0].node_id = 4;
        }
        let planned = plan(&m, &BTreeSet::from([4])).unwrap();
        assert_eq!(planned.len(), 3, "{planned:?}");
        for p in &planned {
            assert_eq!((p.reason, p.from_node, p.to_node), (Reason::Repair, 4, 1));
        }
    }

    #[test]
    fn a_drain_with_nowhere_to_go_is_refused_with_the_reason() {
        let refused = can_drain(&map(), 2).unwrap_err();
        assert!(
            refused.contains("needs at least 3 distinct nodes"),
            "{refused}"
        );
        let mut m = map();
        m.nodes.push(node(4, "b", NodeState::Up));
        can_drain(&m, 2).unwrap();
    }

    #[test]
    fn the_meta_shard_has_an_odd_number_of_voters_up_to_five() {
        let counts: Vec<usize> = (0..=7).map(meta_voters).collect();
        assert_eq!(counts, [1, 1, 1, 3, 3, 5, 5, 5]);
    }

    #[test]
    fn the_meta_shard_grows_with_the_cluster_and_sheds_a_silent_voter() {
        let meta_moves = |m: &ClusterMap, silent: &[u64]| -> Vec<Planned> {
            let silent = silent.iter().copied().collect();
            let planned = plan(m, &silent).unwrap();
            planned
                .into_iter()
                .filter(|p| p.shard == ShardId::META)
                .collect()
        };
        let mut m = map();
        m.nodes.push(node(4, "a", NodeState::Up));
        m.nodes.push(node(5, "b", NodeState::Up));
        let grow = meta_moves(&m, &[]);
        assert_eq!(grow.len(), 1, "one move per shard at a time: {grow:?}");
        assert_eq!(grow[0].from_replica, 0, "{grow:?}");
        assert!([4, 5].contains(&grow[0].to_node), "{grow:?}");

        // Four voters on four nodes (as four initial nodes used to get):
        // one of island a's two leaves, with no replica in its place.
        let mut m = map();
        m.nodes.push(node(4, "a", NodeState::Up));
        let meta = m.meta.as_mut().unwrap();
        meta.replicas.push(Replica {
            replica_id: 4,
            node_id: 4,
        });
        let shrink = meta_moves(&m, &[]);
        assert_eq!(shrink.len(), 1, "{shrink:?}");
        assert_eq!(
            (shrink[0].to_node, shrink[0].reason),
            (0, Reason::Rebalance)
        );
        assert!([1, 4].contains(&shrink[0].from_node), "{shrink:?}");
        // A silent voter is the one that leaves.
        let repair = meta_moves(&m, &[2]);
        assert_eq!(repair.len(), 1, "{repair:?}");
        assert_eq!(
            (repair[0].from_node, repair[0].to_node, repair[0].reason),
            (2, 0, Reason::Repair)
        );
    }
}
