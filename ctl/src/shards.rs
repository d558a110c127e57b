//! `atollctl shard list`: every shard with its range, epoch, replicas,
//! leader and size, and the splits and moves in progress.

use std::collections::HashMap;

use atoll_client::StatusResponse;
use atoll_proto::v1::ReplicaRole;
use serde::Serialize;

#[derive(Serialize)]
pub struct ShardRow {
    pub id: u64,
    pub range_start: String,
    pub range_last: String,
    pub epoch: u64,
    /// Nodes of the shard's replicas, in the map's order.
    pub nodes: Vec<u64>,
    pub leader_node: Option<u64>,
    /// RocksDB's estimate of the shard's data, on its largest replica.
    pub bytes: u64,
    /// "splitting at H into shard C", "moving n1 -> n4", or "".
    pub change: String,
    /// Why the change is not advancing, as the controller last saw it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stuck: String,
}

/// The shards of `status`'s map, data shards in hash order.
pub fn rows(status: &StatusResponse) -> Vec<ShardRow> {
    let Some(map) = &status.map else {
        return Vec::new();
    };
    let mut leaders: HashMap<u64, u64> = HashMap::new();
    let mut bytes: HashMap<u64, u64> = HashMap::new();
    for report in &status.nodes {
        let Some(node) = &report.status else { continue };
        for r in &node.replicas {
            if r.role == ReplicaRole::Leader as i32 {
                leaders.insert(r.shard_id, node.node_id);
            }
            let size = bytes.entry(r.shard_id).or_default();
            *size = (*size).max(r.approximate_bytes);
        }
    }
    map.shards
        .iter()
        .map(|s| {
            let split = map.splits.iter().find(|p| p.shard_id == s.id);
            let moving = map.moves.iter().find(|m| m.shard_id == s.id);
            let (change, stuck) = match (split, moving) {
                (Some(p), _) => (
                    format!("splitting at {:#x} into shard {}", p.at, p.child_shard_id),
                    p.stuck.clone(),
                ),
                (None, Some(m)) => (
                    format!(
                        "moving {} -> {}",
                        crate::node_name(m.from_node),
                        crate::node_name(m.to_node)
                    ),
                    m.stuck.clone(),
                ),
                (None, None) => (String::new(), String::new()),
            };
            ShardRow {
                id: s.id,
                range_start: format!("{:#018x}", s.range_start),
                range_last: format!("{:#018x}", s.range_last),
                epoch: s.epoch,
                nodes: s.replicas.iter().map(|r| r.node_id).collect(),
                leader_node: leaders.get(&s.id).copied(),
                bytes: bytes.get(&s.id).copied().unwrap_or(0),
                change,
                stuck,
            }
        })
        .collect()
}

pub fn print(rows: &[ShardRow]) {
    println!(
        "{:<6} {:<39} {:<6} {:<14} {:<7} {:>12} CHANGE",
        "SHARD", "RANGE", "EPOCH", "NODES", "LEADER", "BYTES"
    );
    for r in rows {
        let nodes: Vec<String> = r.nodes.iter().map(|n| format!("n{n}")).collect();
        let change = match r.stuck.as_str() {
            "" => r.change.clone(),
            stuck => format!("{} (stuck: {stuck})", r.change),
        };
        println!(
            "{:<6} {:<39} {:<6} {:<14} {:<7} {:>12} {}",
            r.id,
            format!("{}..={}", r.range_start, r.range_last),
            r.epoch,
            nodes.join(","),
            r.leader_node.map_or("-".into(), |n| format!("n{n}")),
            r.bytes,
            change
        );
    }
}
