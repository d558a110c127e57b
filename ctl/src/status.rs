//! `atollctl cluster status` and `cluster map`: a stable JSON shape and a
//! table for terminals.

use std::collections::HashMap;

use atoll_client::{ClusterMap, StatusResponse};
use atoll_proto::v1::{NodeState, ReplicaRole, Shard};
use serde::Serialize;

#[derive(Serialize)]
pub struct NodeOut {
    pub id: u64,
    pub island: String,
    pub address: String,
    pub capacity: u64,
    pub state: String,
    /// Whether the node answered.
    pub reachable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub replicas: usize,
    pub leaders: usize,
    /// WAL syncs since the node started.
    pub wal_syncs: u64,
    /// Log appends made durable per WAL sync (group commit), on average.
    pub appends_per_sync: f64,
    /// Mean time of one WAL sync, in milliseconds.
    pub mean_sync_ms: f64,
    /// WAL syncs that took over 100 ms (a stalled disk holds up every
    /// shard of the node).
    pub slow_syncs: u64,
}

#[derive(Serialize)]
pub struct ReplicaOut {
    pub replica_id: u64,
    pub node_id: u64,
    pub island: String,
    pub role: String,
    pub term: u64,
    pub last_applied_index: u64,
}

#[derive(Serialize)]
pub struct ShardOut {
    pub id: u64,
    pub range_start: String,
    pub range_last: String,
    pub leader_node: Option<u64>,
    pub islands: usize,
    pub replicas: Vec<ReplicaOut>,
}

#[derive(Serialize)]
pub struct Report {
    pub cluster: String,
    pub map_version: u64,
    pub replication_factor: u32,
    pub nodes: Vec<NodeOut>,
    pub meta: Option<ShardOut>,
    pub shards: Vec<ShardOut>,
}

fn state_name(state: i32) -> String {
    NodeState::try_from(state).map_or("unknown".into(), |s| s.as_str_name().to_lowercase())
}

fn role_name(role: i32) -> String {
    ReplicaRole::try_from(role).map_or("unknown".into(), |r| r.as_str_name().to_lowercase())
}

impl Report {
    pub fn from_status(status: &StatusResponse) -> Report {
        let map = status.map.clone().unwrap_or_default();
        let island_of: HashMap<u64, String> =
            map.nodes.iter().map(|n| (n.id, n.island.clone())).collect();
        // (shard, replica) -> what its node reported.
        let mut reported = HashMap::new();
        for report in &status.nodes {
            if let Some(s) = &report.status {
                for r in &s.replicas {
                    reported.insert((r.shard_id, r.replica_id), r);
                }
            }
        }
        let shard_out = |shard: &Shard| {
            let replicas: Vec<ReplicaOut> = shard
                .replicas
                .iter()
                .map(|r| {
                    let st = reported.get(&(shard.id, r.replica_id));
                    ReplicaOut {
                        replica_id: r.replica_id,
                        node_id: r.node_id,
                        island: island_of.get(&r.node_id).cloned().unwrap_or_default(),
                        role: st.map_or("unreachable".into(), |s| role_name(s.role)),
                        term: st.map_or(0, |s| s.term),
                        last_applied_index: st.map_or(0, |s| s.last_applied_index),
                    }
                })
                .collect();
            let leader_node = replicas
                .iter()
                .find(|r| r.role == "leader")
                .map(|r| r.node_id);
            let mut islands: Vec<&str> = replicas.iter().map(|r| r.island.as_str()).collect();
            islands.sort_unstable();
            islands.dedup();
            ShardOut {
                id: shard.id,
                range_start: format!("{:#018x}", shard.range_start),
                range_last: format!("{:#018x}", shard.range_last),
                leader_node,
                islands: islands.len(),
                replicas,
            }
        };
        let shards: Vec<ShardOut> = map.shards.iter().map(shard_out).collect();
        let meta = map.meta.as_ref().map(shard_out);
        let nodes = map
            .nodes
            .iter()
            .map(|n| {
                let report = status.nodes.iter().find(|r| r.node_id == n.id);
                let status = report.and_then(|r| r.status.as_ref());
                let all = shards.iter().chain(meta.iter());
                NodeOut {
                    id: n.id,
                    island: n.island.clone(),
                    address: n.address.clone(),
                    capacity: n.capacity,
                    state: state_name(n.state),
                    reachable: report.is_some_and(|r| r.status.is_some()),
                    error: report.map(|r| r.error.clone()).unwrap_or_default(),
                    replicas: all
                        .clone()
                        .filter(|s| s.replicas.iter().any(|r| r.node_id == n.id))
                        .count(),
                    leaders: all.filter(|s| s.leader_node == Some(n.id)).count(),
                    wal_syncs: status.map_or(0, |s| s.wal_syncs),
                    appends_per_sync: status.map_or(0.0, |s| {
                        s.wal_synced_appends as f64 / s.wal_syncs.max(1) as f64
                    }),
                    mean_sync_ms: status.map_or(0.0, |s| {
                        s.wal_sync_micros as f64 / 1000.0 / s.wal_syncs.max(1) as f64
                    }),
                    slow_syncs: status.map_or(0, |s| s.wal_slow_syncs),
                }
            })
            .collect();
        Report {
            cluster: map.cluster_name.clone(),
            map_version: map.map_version,
            replication_factor: map.replication_factor,
            nodes,
            meta,
            shards,
        }
    }

    /// What keeps the cluster from being healthy: unreachable nodes (not
    /// counting removed ones) and shards without a leader.
    pub fn problems(&self) -> Vec<String> {
        let nodes = self
            .nodes
            .iter()
            .filter(|n| !n.reachable && n.state != "removed")
            .map(|n| format!("node {} is unreachable: {}", n.id, n.error));
        let shards = self
            .meta
            .iter()
            .chain(&self.shards)
            .filter(|s| s.leader_node.is_none())
            .map(|s| format!("shard {} has no leader", s.id));
        nodes.chain(shards).collect()
    }

    /// `node list`: one line per node.
    pub fn print_nodes(&self) {
        println!(
            "{:<6} {:<14} {:<22} {:>8} {:<9} {:<9} {:>8} {:>8}",
            "NODE", "ISLAND", "ADDRESS", "CAPACITY", "STATE", "REACHABLE", "REPLICAS", "LEADERS"
        );
        for n in &self.nodes {
            println!(
                "{:<6} {:<14} {:<22} {:>8} {:<9} {:<9} {:>8} {:>8}",
                n.id,
                n.island,
                n.address,
                n.capacity,
                n.state,
                if n.reachable { "yes" } else { "no" },
                n.replicas,
                n.leaders
            );
        }
    }

    pub fn print_table(&self) {
        println!(
            "cluster {} (map v{}, RF {})",
            self.cluster, self.map_version, self.replication_factor
        );
        println!();
        println!(
            "{:<6} {:<14} {:<22} {:<8} {:>8} {:>8} {:>10} {:>12} {:>8} {:>10}",
            "NODE",
            "ISLAND",
            "ADDRESS",
            "STATE",
            "REPLICAS",
            "LEADERS",
            "WAL SYNCS",
            "APPENDS/SYNC",
            "SYNC MS",
            "SLOW SYNCS"
        );
        for n in &self.nodes {
            let state = if n.reachable {
                n.state.clone()
            } else {
                "down".into()
            };
            println!(
                "{:<6} {:<14} {:<22} {:<8} {:>8} {:>8} {:>10} {:>12.1} {:>8.2} {:>10}",
                n.id,
                n.island,
                n.address,
                state,
                n.replicas,
                n.leaders,
                n.wal_syncs,
                n.appends_per_sync,
                n.mean_sync_ms,
                n.slow_syncs
            );
        }
        println!();
        println!(
            "{:<6} {:<39} {:<8} REPLICAS (node@island role)",
            "SHARD", "HASH RANGE", "LEADER"
        );
        for s in self.meta.iter().chain(&self.shards) {
            let range = if s.id == 0 {
                "meta".to_string()
            } else {
                format!("{}..={}", s.range_start, s.range_last)
            };
            let replicas: Vec<String> = s
                .replicas
                .iter()
                .map(|r| format!("n{}@{} {}", r.node_id, r.island, r.role))
                .collect();
            let leader = s.leader_node.map_or("-".into(), |n| format!("n{n}"));
            println!(
                "{:<6} {:<39} {:<8} {}",
                s.id,
                range,
                leader,
                replicas.join(", ")
            );
        }
    }
}

/// The cluster map as JSON.
#[derive(Serialize)]
pub struct MapOut {
    pub map_version: u64,
    pub nodes: Vec<serde_json::Value>,
    pub shards: Vec<serde_json::Value>,
}

impl MapOut {
    pub fn from_map(map: &ClusterMap) -> MapOut {
        let shard = |s: &Shard| {
            serde_json::json!({
                "id": s.id,
                "range_start": format!("{:#018x}", s.range_start),
                "range_last": format!("{:#018x}", s.range_last),
                "epoch": s.epoch,
                "replicas": s.replicas.iter().map(|r| serde_json::json!({"replica_id": r.replica_id, "node_id": r.node_id})).collect::<Vec<_>>(),
            })
        };
        MapOut {
            map_version: map.map_version,
            nodes: map
                .nodes
                .iter()
                .map(|n| serde_json::json!({"id": n.id, "island": n.island, "address": n.address, "capacity": n.capacity, "state": state_name(n.state)}))
                .collect(),
            shards: map.meta.iter().chain(&map.shards).map(shard).collect(),
        }
    }
}

/// One move, for `moves list`.
#[derive(Serialize)]
pub struct MoveOut {
    pub id: u64,
    pub shard: u64,
    pub from_node: u64,
    pub from_replica: u64,
    pub to_node: u64,
    pub to_replica: u64,
    pub state: String,
    pub reason: String,
    pub started_ms: u64,
    /// The new replica's matched log index, and the leader's last.
    pub matched_index: u64,
    pub leader_last_index: u64,
    /// Bytes the shard's leader has sent the new replica (snapshot and
    /// log entries; a new shard leader counts from 0).
    pub bytes_sent: u64,
    /// Why the move is not advancing ("" while it is).
    pub stuck: String,
}

impl From<&atoll_client::Move> for MoveOut {
    fn from(m: &atoll_client::Move) -> Self {
        MoveOut {
            id: m.id,
            shard: m.shard_id,
            from_node: m.from_node,
            from_replica: m.from_replica,
            to_node: m.to_node,
            to_replica: m.to_replica,
            state: atoll_client::MoveState::try_from(m.state)
                .map_or("unknown".into(), |s| s.as_str_name().to_lowercase()),
            reason: m.reason.clone(),
            started_ms: m.started_ms,
            matched_index: m.matched_index,
            leader_last_index: m.leader_last_index,
            bytes_sent: m.bytes_sent,
            stuck: m.stuck.clone(),
        }
    }
}

pub fn print_moves(moves: &[MoveOut]) {
    if moves.is_empty() {
        println!("no moves in progress");
        return;
    }
    println!(
        "{:<5} {:<6} {:<14} {:<14} {:<14} {:>19} {:>14} STUCK",
        "MOVE", "SHARD", "FROM", "TO", "STATE", "MATCHED/LAST", "BYTES SENT"
    );
    for m in moves {
        println!(
            "{:<5} {:<6} {:<14} {:<14} {:<14} {:>19} {:>14} {}",
            m.id,
            m.shard,
            replica_name(m.from_node, m.from_replica),
            replica_name(m.to_node, m.to_replica),
            m.state,
            format!("{}/{}", m.matched_index, m.leader_last_index),
            m.bytes_sent,
            m.stuck
        );
    }
}

/// A move's source or target replica: `n4 r17`, or `-` for none.
fn replica_name(node: u64, replica: u64) -> String {
    match replica {
        0 => "-".to_string(),
        r => format!("{} r{r}", crate::node_name(node)),
    }
}
