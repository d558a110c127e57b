//! The end state of a run: once faults stop, the cluster must settle where
//! its map and every shard's membership agree (docs/design/elastic.md,
//! "After a crash"): no move in progress, no shard in a joint
//! configuration, no learner left behind, and every node running exactly
//! the replicas the map gives it (no orphaned replica).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use atoll_client::{Client, StatusResponse};
use atoll_proto::v1::ReplicaRole;
use tokio::time::Instant;

/// Waits up to `deadline` for the cluster to settle; returns what still
/// disagrees then (empty when it settled).
pub async fn check(client: &Client, deadline: Duration) -> Vec<String> {
    let until = Instant::now() + deadline;
    loop {
        let problems = match client.cluster_status().await {
            Ok(status) => disagreements(&status),
            Err(e) => vec![format!("no cluster status: {e}")],
        };
        if problems.is_empty() || Instant::now() >= until {
            return problems;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What in `status` shows the map and the shards' memberships apart.
pub fn disagreements(status: &StatusResponse) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(map) = &status.map else {
        return vec!["the status holds no map".into()];
    };
    for m in &map.moves {
        problems.push(format!(
            "move {} of shard {} (node {} -> node {}) still in progress: {}",
            m.id, m.shard_id, m.from_node, m.to_node, m.stuck
        ));
    }
    for split in &map.splits {
        problems.push(format!(
            "split of shard {} into shard {} still in progress: {}",
            split.shard_id, split.child_shard_id, split.stuck
        ));
    }
    // (shard, replica) -> node, as the map has it.
    let mut listed: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for shard in map.meta.iter().chain(&map.shards) {
        for r in &shard.replicas {
            listed.insert((shard.id, r.replica_id), r.node_id);
        }
        let expected: BTreeSet<u64> = shard.replicas.iter().map(|r| r.replica_id).collect();
        let leader = (status.nodes.iter())
            .filter_map(|n| n.status.as_ref())
            .flat_map(|s| &s.replicas)
            .find(|r| r.shard_id == shard.id && r.role == ReplicaRole::Leader as i32);
        let Some(leader) = leader else {
            problems.push(format!("shard {} has no leader", shard.id));
            continue;
        };
        let voters: BTreeSet<u64> = leader.voters.iter().copied().collect();
        let data = map.shards.iter().any(|s| s.id == shard.id);
        if data && (leader.range_start, leader.range_last) != (shard.range_start, shard.range_last)
        {
            problems.push(format!(
                "shard {}'s leader owns [{:#x}, {:#x}], the map lists [{:#x}, {:#x}]",
                shard.id,
                leader.range_start,
                leader.range_last,
                shard.range_start,
                shard.range_last
            ));
        }
        if leader.joint {
            problems.push(format!("shard {} is in a joint configuration", shard.id));
        }
        if voters != expected {
            problems.push(format!(
                "shard {}: voters {voters:?}, but the map lists {expected:?}",
                shard.id
            ));
        }
        if !leader.learners.is_empty() {
            problems.push(format!(
                "shard {} has learners {:?}",
                shard.id, leader.learners
            ));
        }
    }
    for report in &status.nodes {
        let removed = map.nodes.iter().any(|n| {
            n.id == report.node_id && n.state == atoll_proto::v1::NodeState::Removed as i32
        });
        let Some(node) = &report.status else {
            if !removed {
                problems.push(format!(
                    "node {} did not answer: {}",
                    report.node_id, report.error
                ));
            }
            continue;
        };
        let running: BTreeSet<(u64, u64)> = (node.replicas.iter())
            .filter(|r| r.role != ReplicaRole::Shutdown as i32)
            .map(|r| (r.shard_id, r.replica_id))
            .collect();
        let given: BTreeSet<(u64, u64)> = (listed.iter())
            .filter(|(_, n)| **n == report.node_id)
            .map(|(k, _)| *k)
            .collect();
        for (shard, replica) in running.difference(&given) {
            problems.push(format!(
                "node {} runs replica {replica} of shard {shard}, which the map does not give it",
                report.node_id
            ));
        }
        for (shard, replica) in given.difference(&running) {
            problems.push(format!(
                "node {} does not run replica {replica} of shard {shard}",
                report.node_id
            ));
        }
    }
    problems
}
