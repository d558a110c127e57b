//! Property tests over random clusters: constraints, balance, determinism,
//! idempotence and movement hold for every input, not just hand-picked ones.

use std::collections::BTreeMap;

use atoll_placement::{place, Assignment, NodeSpec};
use atoll_proto::{NodeId, ShardId};
use proptest::prelude::*;

use crate::oracle::{
    assert_balanced, assert_leaders_balanced, assert_no_leader_hand_over_helps, assert_valid,
    fixed_islands, fresh, island_bounds, loads, moved, replica_ideals, uniform,
};

/// Nodes on up to 4 islands, with equal or random capacities, and an RF
/// they can hold.
fn cluster() -> impl Strategy<Value = (Vec<NodeSpec>, usize)> {
    (1usize..=4, any::<bool>(), 1usize..=4)
        .prop_flat_map(|(islands, equal, rf)| {
            (
                Just(rf),
                prop::collection::vec((0..islands, 1u64..=5), rf..=12),
                Just(equal),
            )
        })
        .prop_map(|(rf, raw, equal)| {
            let nodes = raw
                .iter()
                .enumerate()
                .map(|(i, &(island, capacity))| NodeSpec {
                    id: NodeId(i as u64 * 3 + 1),
                    island: format!("zone-{island}"),
                    capacity: if equal { 1 } else { capacity },
                })
                .collect();
            (nodes, rf)
        })
}

/// Equal nodes on `k` islands of `m` nodes each, with RF `k` (one replica
/// per island) or, on one island, any RF up to `m`: every island holds a
/// fixed number of each shard's replicas.
fn even_cluster() -> impl Strategy<Value = (Vec<NodeSpec>, usize)> {
    (1usize..=3, 2usize..=6)
        .prop_flat_map(|(k, m)| {
            let rf = if k == 1 {
                (1..=m.min(4)).boxed()
            } else {
                Just(k).boxed()
            };
            (Just(k), Just(m), rf)
        })
        .prop_map(|(k, m, rf)| {
            let nodes = (0..k * m)
                .map(|i| NodeSpec {
                    id: NodeId(i as u64 * 3 + 1),
                    island: format!("zone-{}", i % k),
                    capacity: 1,
                })
                .collect();
            (nodes, rf)
        })
}

fn shard_list() -> impl Strategy<Value = Vec<ShardId>> {
    (0u64..=40).prop_map(|n| (0..n).map(|k| ShardId(k * 5 + 2)).collect())
}

/// An arbitrary "current" assignment: unknown nodes, repeats, wrong sizes,
/// shards that are not requested.
fn garbage() -> impl Strategy<Value = Assignment> {
    prop::collection::btree_map(
        (0u64..60).prop_map(|k| ShardId(k * 5 + 2)),
        prop::collection::vec((0u64..45).prop_map(NodeId), 0..6),
        0..40,
    )
}

/// Replicas the nodes lost in total between two load maps.
fn lost(before: &BTreeMap<NodeId, usize>, after: &BTreeMap<NodeId, usize>) -> usize {
    before
        .iter()
        .map(|(id, &b)| b.saturating_sub(after.get(id).copied().unwrap_or(0)))
        .sum()
}

/// Checks that hold for every placement.
fn assert_sound(nodes: &[NodeSpec], shards: &[ShardId], rf: usize, a: &Assignment) {
    assert_valid(nodes, shards, rf, a);
    assert_balanced(nodes, rf, a);
    assert_no_leader_hand_over_helps(nodes, a);
    // With equal capacities and no island distortion an even leader spread
    // always exists, and placement finds it.
    if nodes.iter().all(|n| n.capacity == 1) && uniform(nodes, shards.len(), rf) {
        assert_leaders_balanced(nodes, a);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fresh_placement_meets_constraints_and_balance((nodes, rf) in cluster(), shards in shard_list()) {
        assert_sound(&nodes, &shards, rf, &fresh(&nodes, &shards, rf));
    }

    #[test]
    fn any_current_assignment_gives_a_sound_placement_that_then_stays(
        (nodes, rf) in cluster(),
        shards in shard_list(),
        current in garbage(),
    ) {
        let a = place(&nodes, &shards, rf, &current).unwrap();
        assert_sound(&nodes, &shards, rf, &a);
        prop_assert_eq!(place(&nodes, &shards, rf, &a).unwrap(), a);
    }

    #[test]
    fn input_order_does_not_change_the_output(
        ((nodes, rf), shuffled_nodes) in cluster()
            .prop_flat_map(|(n, rf)| (Just((n.clone(), rf)), Just(n).prop_shuffle())),
        (shards, shuffled_shards) in shard_list()
            .prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
        current in garbage(),
    ) {
        let a = place(&nodes, &shards, rf, &current).unwrap();
        prop_assert_eq!(&place(&nodes, &shards, rf, &current).unwrap(), &a);
        prop_assert_eq!(&place(&shuffled_nodes, &shuffled_shards, rf, &current).unwrap(), &a);
    }

    #[test]
    fn adding_or_removing_any_node_gives_a_sound_placement(
        (nodes, rf) in cluster(),
        shards in shard_list(),
        island in 0usize..5,
        capacity in 1u64..=5,
        gone in any::<prop::sample::Index>(),
    ) {
        let before = fresh(&nodes, &shards, rf);
        let mut grown = nodes.clone();
        grown.push(NodeSpec { id: NodeId(999), island: format!("zone-{island}"), capacity });
        let after = place(&grown, &shards, rf, &before).unwrap();
        assert_sound(&grown, &shards, rf, &after);

        let gone = nodes[gone.index(nodes.len())].id;
        let shrunk: Vec<NodeSpec> = nodes.iter().filter(|n| n.id != gone).cloned().collect();
        if shrunk.len() >= rf {
            let after = place(&shrunk, &shards, rf, &before).unwrap();
            assert_sound(&shrunk, &shards, rf, &after);
            prop_assert!(moved(&before, &after) >= loads(&nodes, &before)[&gone]);
        }
    }

    #[test]
    fn adding_a_node_to_equal_nodes_moves_about_one_in_n_plus_one(
        (nodes, rf) in cluster(),
        shards in shard_list(),
        island in 0usize..4,
    ) {
        let nodes: Vec<NodeSpec> = nodes.into_iter().map(|n| NodeSpec { capacity: 1, ..n }).collect();
        let before = fresh(&nodes, &shards, rf);
        let mut grown = nodes.clone();
        grown.push(NodeSpec { id: NodeId(999), island: format!("zone-{island}"), capacity: 1 });
        let after = place(&grown, &shards, rf, &before).unwrap();
        let moved = moved(&before, &after);
        // When every node's ideal is the same, the new node takes its
        // 1 / (N + 1) share, plus a few moves where island bounds force a
        // replica through a middle node.
        if uniform(&grown, shards.len(), rf) && uniform(&nodes, shards.len(), rf) {
            let share = (shards.len() * rf).div_ceil(grown.len());
            prop_assert!(moved <= share + 3 + share / 50, "moved {} for a share of {}", moved, share);
        }
    }

    #[test]
    fn adding_a_node_to_even_islands_moves_only_what_balance_needs(
        (nodes, rf) in even_cluster(),
        shards in shard_list(),
        island in any::<prop::sample::Index>(),
    ) {
        let islands = island_bounds(&nodes, rf).len();
        let before = fresh(&nodes, &shards, rf);
        let mut grown = nodes.clone();
        grown.push(NodeSpec {
            id: NodeId(999),
            island: format!("zone-{}", island.index(islands)),
            capacity: 1,
        });
        prop_assume!(fixed_islands(&grown, rf));
        let after = place(&grown, &shards, rf, &before).unwrap();
        assert_sound(&grown, &shards, rf, &after);
        let moved = moved(&before, &after);
        // Every replica that moves is one its node had to give up, and the
        // new node takes no more than its 1 / (N + 1) share.
        prop_assert_eq!(moved, lost(&loads(&nodes, &before), &loads(&grown, &after)));
        prop_assert!(moved <= (shards.len() * rf).div_ceil(grown.len()));
    }

    #[test]
    fn removing_a_node_from_even_islands_moves_only_its_replicas(
        (nodes, rf) in even_cluster(),
        shards in shard_list(),
        gone in any::<prop::sample::Index>(),
    ) {
        let gone = nodes[gone.index(nodes.len())].id;
        let shrunk: Vec<NodeSpec> = nodes.iter().filter(|n| n.id != gone).cloned().collect();
        prop_assume!(shrunk.len() >= rf && fixed_islands(&shrunk, rf));
        prop_assume!(island_bounds(&shrunk, rf).len() == island_bounds(&nodes, rf).len());
        let before = fresh(&nodes, &shards, rf);
        let after = place(&shrunk, &shards, rf, &before).unwrap();
        assert_sound(&shrunk, &shards, rf, &after);
        // Every replica of the gone node moves. A replica of a surviving
        // node moves only to fill a node up to its new share when the gone
        // node's replicas cannot: a node may already hold every shard the
        // gone node held (`examples::removing_a_node_can_need_one_more_move`).
        // So such moves are at most the survivors' total shortfall.
        let ideals = replica_ideals(&shrunk, shards.len(), rf);
        let held = loads(&nodes, &before);
        let shortfall: usize = ideals
            .iter()
            .map(|(id, ideal)| ((ideal + 1e-6).floor() as usize).saturating_sub(held[id]))
            .sum();
        let extra = before
            .iter()
            .flat_map(|(shard, list)| list.iter().map(move |id| (shard, id)))
            .filter(|&(shard, &id)| id != gone && !after[shard].contains(&id))
            .count();
        prop_assert!(extra <= shortfall, "{} replicas of surviving nodes moved; shortfall {}", extra, shortfall);
    }
}
