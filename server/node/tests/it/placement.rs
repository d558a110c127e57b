//! Placement of shards across islands, as the cluster map shows it.

use std::collections::HashSet;

use atoll_proto::NodeId;

use crate::harness::{Spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_on_three_islands_put_each_shard_on_three_islands() {
    let spec = Spec {
        islands: vec!["a", "a", "b", "b", "c"],
        shards: 16,
        ..Spec::default()
    };
    let cluster = TestCluster::start(spec).await;
    let client = cluster.client().await;
    let status = client.cluster_status().await.unwrap();
    let map = status.map.unwrap();
    assert_eq!(map.shards.len(), 16);
    for shard in &map.shards {
        let nodes: HashSet<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
        let islands: HashSet<String> = shard
            .replicas
            .iter()
            .map(|r| map.node(NodeId(r.node_id)).unwrap().island.clone())
            .collect();
        assert_eq!(
            (shard.replicas.len(), nodes.len(), islands.len()),
            (3, 3, 3),
            "shard {}",
            shard.id
        );
    }
    assert_eq!(status.nodes.len(), 5);
    assert!(
        status.nodes.iter().all(|n| n.status.is_some()),
        "every node answered"
    );
    // Every replica in the map runs on its node.
    for shard in &map.shards {
        for r in &shard.replicas {
            let report = status
                .nodes
                .iter()
                .find(|n| n.node_id == r.node_id)
                .unwrap();
            let replicas = &report.status.as_ref().unwrap().replicas;
            assert!(replicas
                .iter()
                .any(|s| s.shard_id == shard.id && s.replica_id == r.replica_id));
        }
    }
    cluster.shutdown().await;
}
