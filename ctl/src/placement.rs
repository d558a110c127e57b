//! `atollctl placement show`: how the replicas, leaderships and bytes of
//! the cluster sit on its nodes and islands, against each node's share of
//! its island's capacity.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use atoll_client::{PlacementLimits, PlacementPlanResponse, StatusResponse};
use atoll_proto::size::ByteSize;
use atoll_proto::v1::{NodeState, ReplicaRole};
use serde::Serialize;

#[derive(Serialize)]
pub struct NodeShare {
    pub id: u64,
    pub island: String,
    pub state: String,
    pub capacity: u64,
    /// Replicas the map puts on the node (the meta shard's included).
    pub replicas: usize,
    /// Shards the node's replicas lead, as the node reported (0 when it did
    /// not answer).
    pub leaders: usize,
    /// RocksDB's estimate of the node's replicas' data, as it reported.
    pub bytes: u64,
    /// The node's part of its island's replicas.
    pub replica_share: f64,
    /// The node's part of its island's capacity (of the nodes that are up;
    /// 0 for a node that is not): what placement aims `replica_share` at.
    pub capacity_share: f64,
}

#[derive(Serialize)]
pub struct IslandShare {
    pub island: String,
    pub nodes: usize,
    pub capacity: u64,
    pub replicas: usize,
    pub leaders: usize,
    pub bytes: u64,
}

/// The limits on moves an operator set in the map; `None` where the node
/// config's hold (`cluster.max_moves`, `cluster.max_moves_into_node`,
/// `raft.snapshot_rate`).
#[derive(Serialize)]
pub struct LimitsOut {
    pub max_moves: Option<u32>,
    pub max_moves_into_node: Option<u32>,
    /// Bytes per second.
    pub snapshot_rate: Option<u64>,
}

impl From<&PlacementLimits> for LimitsOut {
    fn from(l: &PlacementLimits) -> Self {
        LimitsOut {
            max_moves: Some(l.max_moves).filter(|n| *n > 0),
            max_moves_into_node: Some(l.max_moves_into_node).filter(|n| *n > 0),
            snapshot_rate: Some(l.snapshot_rate).filter(|n| *n > 0),
        }
    }
}

impl fmt::Display for LimitsOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CONFIG: &str = "node config";
        let count = |n: Option<u32>| n.map_or(CONFIG.into(), |n| n.to_string());
        write!(
            f,
            "moves at once: {}, into one node: {}, snapshot rate: {}",
            count(self.max_moves),
            count(self.max_moves_into_node),
            self.snapshot_rate
                .map_or(CONFIG.into(), |r| format!("{}/s", ByteSize(r)))
        )
    }
}

#[derive(Serialize)]
pub struct Shares {
    pub map_version: u64,
    pub placement_paused: bool,
    pub limits: LimitsOut,
    pub moves_in_progress: usize,
    pub nodes: Vec<NodeShare>,
    pub islands: Vec<IslandShare>,
}

fn state_name(state: i32) -> String {
    NodeState::try_from(state).map_or("unknown".into(), |s| s.as_str_name().to_lowercase())
}

impl Shares {
    pub fn from_status(status: &StatusResponse) -> Shares {
        let map = status.map.clone().unwrap_or_default();
        let mut replicas: HashMap<u64, usize> = HashMap::new();
        for shard in map.meta.iter().chain(&map.shards) {
            for r in &shard.replicas {
                *replicas.entry(r.node_id).or_default() += 1;
            }
        }
        let mut leaders: HashMap<u64, usize> = HashMap::new();
        let mut bytes: HashMap<u64, u64> = HashMap::new();
        for report in &status.nodes {
            let Some(s) = &report.status else { continue };
            let led = s
                .replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Leader as i32);
            leaders.insert(s.node_id, led.count());
            bytes.insert(
                s.node_id,
                s.replicas.iter().map(|r| r.approximate_bytes).sum(),
            );
        }
        let up = |state: i32| state == NodeState::Up as i32;
        let mut islands: BTreeMap<String, IslandShare> = BTreeMap::new();
        let mut up_capacity: HashMap<String, u64> = HashMap::new();
        for n in map
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Removed as i32)
        {
            let island = islands
                .entry(n.island.clone())
                .or_insert_with(|| IslandShare {
                    island: n.island.clone(),
                    nodes: 0,
                    capacity: 0,
                    replicas: 0,
                    leaders: 0,
                    bytes: 0,
                });
            island.nodes += 1;
            island.replicas += replicas.get(&n.id).copied().unwrap_or(0);
            island.leaders += leaders.get(&n.id).copied().unwrap_or(0);
            island.bytes += bytes.get(&n.id).copied().unwrap_or(0);
            if up(n.state) {
                island.capacity += n.capacity;
                *up_capacity.entry(n.island.clone()).or_default() += n.capacity;
            }
        }
        let part = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let nodes = (map.nodes.iter())
            .filter(|n| n.state != NodeState::Removed as i32)
            .map(|n| {
                let held = replicas.get(&n.id).copied().unwrap_or(0);
                let island = &islands[&n.island];
                let capacity = if up(n.state) { n.capacity } else { 0 };
                NodeShare {
                    id: n.id,
                    island: n.island.clone(),
                    state: state_name(n.state),
                    capacity: n.capacity,
                    replicas: held,
                    leaders: leaders.get(&n.id).copied().unwrap_or(0),
                    bytes: bytes.get(&n.id).copied().unwrap_or(0),
                    replica_share: part(held as f64, island.replicas as f64),
                    capacity_share: part(
                        capacity as f64,
                        up_capacity.get(&n.island).copied().unwrap_or(0) as f64,
                    ),
                }
            })
            .collect();
        Shares {
            map_version: map.map_version,
            placement_paused: map.placement_paused,
            limits: LimitsOut::from(&map.placement_limits.unwrap_or_default()),
            moves_in_progress: map.moves.len(),
            nodes,
            islands: islands.into_values().collect(),
        }
    }

    pub fn print(&self) {
        println!(
            "map version {}, placement {}, {} move(s) in progress",
            self.map_version,
            if self.placement_paused {
                "paused"
            } else {
                "running"
            },
            self.moves_in_progress
        );
        println!("{}", self.limits);
        println!(
            "{:<6} {:<12} {:<9} {:>8} {:>8} {:>7} {:>14} {:>7} {:>7}",
            "NODE",
            "ISLAND",
            "STATE",
            "CAPACITY",
            "REPLICAS",
            "LEADERS",
            "BYTES",
            "SHARE",
            "TARGET"
        );
        for n in &self.nodes {
            println!(
                "{:<6} {:<12} {:<9} {:>8} {:>8} {:>7} {:>14} {:>6.1}% {:>6.1}%",
                n.id,
                n.island,
                n.state,
                n.capacity,
                n.replicas,
                n.leaders,
                n.bytes,
                100.0 * n.replica_share,
                100.0 * n.capacity_share
            );
        }
        println!();
        println!(
            "{:<12} {:>5} {:>8} {:>8} {:>7} {:>14}",
            "ISLAND", "NODES", "CAPACITY", "REPLICAS", "LEADERS", "BYTES"
        );
        for i in &self.islands {
            println!(
                "{:<12} {:>5} {:>8} {:>8} {:>7} {:>14}",
                i.island, i.nodes, i.capacity, i.replicas, i.leaders, i.bytes
            );
        }
    }
}

/// `placement plan`, in a stable JSON shape.
#[derive(Serialize)]
pub struct PlanOut {
    pub map_version: u64,
    pub paused: bool,
    pub moves: Vec<PlannedOut>,
    pub silent_nodes: Vec<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Serialize)]
pub struct PlannedOut {
    pub shard_id: u64,
    /// 0: the shard is short of a replica.
    pub from_node: u64,
    pub to_node: u64,
    pub reason: String,
    pub bytes: u64,
}

impl From<&PlacementPlanResponse> for PlanOut {
    fn from(plan: &PlacementPlanResponse) -> PlanOut {
        PlanOut {
            map_version: plan.map_version,
            paused: plan.paused,
            moves: (plan.moves.iter())
                .map(|m| PlannedOut {
                    shard_id: m.shard_id,
                    from_node: m.from_node,
                    to_node: m.to_node,
                    reason: m.reason.clone(),
                    bytes: m.bytes,
                })
                .collect(),
            silent_nodes: plan.silent_nodes.clone(),
            error: plan.error.clone(),
        }
    }
}

pub fn print_plan(plan: &PlacementPlanResponse) {
    if !plan.error.is_empty() {
        println!("placement has no target: {}", plan.error);
        return;
    }
    let total: u64 = plan.moves.iter().map(|m| m.bytes).sum();
    println!(
        "map version {}: {} move(s), {} bytes{}",
        plan.map_version,
        plan.moves.len(),
        total,
        if plan.paused {
            " (placement paused: none starts until resume)"
        } else {
            ""
        }
    );
    if !plan.silent_nodes.is_empty() {
        let silent: Vec<String> = plan.silent_nodes.iter().map(|n| format!("n{n}")).collect();
        println!("silent nodes (repaired around): {}", silent.join(","));
    }
    if plan.moves.is_empty() {
        return;
    }
    println!(
        "{:<6} {:<6} {:<6} {:<10} {:>14}",
        "SHARD", "FROM", "TO", "REASON", "BYTES"
    );
    for m in &plan.moves {
        println!(
            "{:<6} {:<6} {:<6} {:<10} {:>14}",
            m.shard_id,
            crate::node_name(m.from_node),
            crate::node_name(m.to_node),
            m.reason,
            m.bytes
        );
    }
}
