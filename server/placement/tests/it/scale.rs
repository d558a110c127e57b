//! Placement at a size where a quadratic step would show.

use std::time::Instant;

use atoll_placement::{place, Assignment, NodeSpec};
use atoll_proto::NodeId;

use crate::oracle::{
    assert_balanced, assert_leaders_balanced, assert_valid, equal_nodes, fresh, moved, shards,
};

/// `equal_nodes(count, islands)`, but node `id` has capacity `1 + id % kinds`.
fn mixed_nodes(count: u64, islands: u64, kinds: u64) -> Vec<NodeSpec> {
    equal_nodes(count, islands)
        .into_iter()
        .map(|n| NodeSpec {
            capacity: 1 + n.id.0 % kinds,
            ..n
        })
        .collect()
}

#[test]
fn a_hundred_nodes_and_three_thousand_shards_place_balanced() {
    let nodes = mixed_nodes(100, 4, 3);
    let shards = shards(3000);
    let a = fresh(&nodes, &shards, 3);
    assert_valid(&nodes, &shards, 3, &a);
    assert_balanced(&nodes, 3, &a);
    assert_leaders_balanced(&nodes, &a);

    let mut grown = nodes.clone();
    grown.push(NodeSpec {
        id: NodeId(1000),
        island: "island-0".into(),
        capacity: 2,
    });
    let b = place(&grown, &shards, 3, &a).unwrap();
    assert_valid(&grown, &shards, 3, &b);
    assert_balanced(&grown, 3, &b);
    assert_eq!(place(&grown, &shards, 3, &b).unwrap(), b);
}

/// The size the design asks for: 1,000 nodes and 100,000 replicas, placed
/// fresh, then grown by one node, by ten nodes, and shrunk by one. Prints
/// timings; run with optimizations, e.g.
/// `cargo test -p atoll-placement --release --test it -- --ignored --nocapture`.
#[test]
#[ignore = "large; run with optimizations"]
fn a_thousand_nodes_and_a_hundred_thousand_replicas() {
    let nodes = mixed_nodes(1000, 5, 4);
    let shards = shards(33_334);
    let replicas = shards.len() * 3;
    let timed = |label: &str, nodes: &[NodeSpec], current: &Assignment| {
        let start = Instant::now();
        let out = place(nodes, &shards, 3, current).unwrap();
        let elapsed = start.elapsed();
        assert_valid(nodes, &shards, 3, &out);
        assert_balanced(nodes, 3, &out);
        println!(
            "{label}: {elapsed:?}, moved {} of {replicas}",
            moved(current, &out)
        );
        out
    };
    let a = timed("fresh", &nodes, &Assignment::new());

    let mut one_more = nodes.clone();
    one_more.push(NodeSpec {
        id: NodeId(5000),
        island: "island-2".into(),
        capacity: 2,
    });
    timed("join one", &one_more, &a);

    let mut ten_more = nodes.clone();
    ten_more.extend((0..10).map(|i| NodeSpec {
        id: NodeId(5000 + i),
        island: format!("island-{}", i % 5),
        capacity: 2,
    }));
    timed("join ten", &ten_more, &a);

    let half: Vec<NodeSpec> = nodes.iter().filter(|n| n.id.0 % 2 == 0).cloned().collect();
    let from_half = timed("half", &half, &Assignment::new());
    timed("double", &nodes, &from_half);

    let one_less: Vec<NodeSpec> = nodes
        .iter()
        .filter(|n| n.id != NodeId(7))
        .cloned()
        .collect();
    timed("remove one", &one_less, &a);
}
