//! How much moves when the cluster changes.

use atoll_placement::{place, Assignment, NodeSpec};
use atoll_proto::NodeId;

use crate::oracle::{
    assert_balanced, assert_leaders_balanced, assert_valid, equal_nodes, fresh, loads, moved,
    shards,
};

/// Places shards on `n` equal nodes over `islands` islands with RF 3, then
/// adds node 1000; returns (before, after).
fn join(n: u64, islands: u64, shard_count: u64) -> (Assignment, Assignment) {
    let nodes = equal_nodes(n, islands);
    let shards = shards(shard_count);
    let before = fresh(&nodes, &shards, 3);
    let mut grown = nodes.clone();
    grown.push(NodeSpec {
        id: NodeId(1000),
        island: format!("island-{}", n % islands),
        capacity: 1,
    });
    let after = place(&grown, &shards, 3, &before).unwrap();
    assert_valid(&grown, &shards, 3, &after);
    assert_balanced(&grown, 3, &after);
    assert_leaders_balanced(&grown, &after);
    (before, after)
}

/// A node's share of `shard_count * 3` replicas among `nodes`, rounded up.
fn share(shard_count: u64, nodes: u64) -> usize {
    (shard_count as usize * 3).div_ceil(nodes as usize)
}

#[test]
fn adding_a_node_moves_about_one_in_n_plus_one() {
    for (n, shard_count) in [(3, 100), (5, 200), (9, 1000), (12, 500), (20, 333)] {
        let (before, after) = join(n, 1, shard_count);
        let (moved, bound) = (moved(&before, &after), share(shard_count, n + 1));
        assert!(moved <= bound, "{n} nodes: moved {moved}, bound {bound}");
        assert!(
            moved + 1 >= bound,
            "{n} nodes: moved {moved}, expected about {bound}"
        );
    }
}

#[test]
fn adding_a_node_to_one_of_three_islands_moves_only_within_that_island() {
    // RF 3 on 3 islands: the new node takes replicas only from its own
    // island, 1 / (island nodes + 1) of that island's replicas.
    for (n, shard_count) in [(6, 120), (9, 300), (15, 1000)] {
        let (before, after) = join(n, 3, shard_count);
        for (shard, list) in &after {
            for id in list.iter().filter(|id| !before[shard].contains(id)) {
                assert_eq!(*id, NodeId(1000), "{shard}: replica moved to {id}");
            }
        }
        let island_share = (shard_count as usize).div_ceil(n as usize / 3 + 1);
        let moved = moved(&before, &after);
        assert!(
            moved <= island_share && moved + 1 >= island_share,
            "{n} nodes: moved {moved}"
        );
        assert!(island_share <= share(shard_count, n + 1));
    }
}

#[test]
fn adding_a_node_to_two_islands_moves_at_most_one_in_n_plus_one() {
    for (n, shard_count) in [(4, 100), (8, 400), (10, 1000)] {
        let (before, after) = join(n, 2, shard_count);
        let (moved, bound) = (moved(&before, &after), share(shard_count, n + 1));
        assert!(moved <= bound, "{n} nodes: moved {moved}, bound {bound}");
    }
}

#[test]
fn removing_a_node_moves_only_its_replicas() {
    for (n, islands, shard_count, gone) in [
        (4, 1, 100, 2),
        (9, 3, 300, 5),
        (10, 2, 250, 10),
        (12, 3, 1000, 1),
    ] {
        let nodes = equal_nodes(n, islands);
        let shards = shards(shard_count);
        let before = fresh(&nodes, &shards, 3);
        let shrunk: Vec<NodeSpec> = nodes
            .iter()
            .filter(|x| x.id != NodeId(gone))
            .cloned()
            .collect();
        let after = place(&shrunk, &shards, 3, &before).unwrap();
        assert_valid(&shrunk, &shards, 3, &after);
        assert_balanced(&shrunk, 3, &after);
        let lost = loads(&nodes, &before)[&NodeId(gone)];
        assert_eq!(moved(&before, &after), lost, "{n} nodes");
        for (shard, list) in &before {
            for id in list.iter().filter(|&&id| id != NodeId(gone)) {
                assert!(after[shard].contains(id), "{shard}: replica on {id} moved");
            }
        }
    }
}

#[test]
fn placing_again_moves_nothing() {
    let nodes = equal_nodes(10, 3);
    let shards = shards(500);
    let a = fresh(&nodes, &shards, 3);
    assert_eq!(place(&nodes, &shards, 3, &a).unwrap(), a);
}

#[test]
fn doubling_the_cluster_moves_about_half() {
    let nodes = equal_nodes(6, 3);
    let shards = shards(600);
    let before = fresh(&nodes, &shards, 3);
    let doubled = equal_nodes(12, 3);
    let after = place(&doubled, &shards, 3, &before).unwrap();
    assert_balanced(&doubled, 3, &after);
    assert_eq!(moved(&before, &after), 900);
}
