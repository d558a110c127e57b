//! The `atoll.v1.Cluster` service: the cluster map, this node's replica
//! states, and a cluster-wide status gathered from every node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::cluster_server::Cluster;
use atoll_proto::v1::{self as wire, ReplicaRole};
use atoll_proto::NodeId;
use atoll_raft::types::ServerState;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// How long `Status` waits for each node.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn role(state: ServerState) -> ReplicaRole {
    match state {
        ServerState::Leader => ReplicaRole::Leader,
        ServerState::Follower => ReplicaRole::Follower,
        ServerState::Candidate => ReplicaRole::Candidate,
        ServerState::Learner => ReplicaRole::Learner,
        ServerState::Shutdown => ReplicaRole::Shutdown,
    }
}

/// This node's replicas and their Raft state.
pub fn node_status(node: &Node) -> wire::NodeStatusResponse {
    let replicas = node
        .replicas()
        .iter()
        .map(|r| {
            let m = r.metrics();
            let proposed = r.proposer.stats();
            wire::ReplicaStatus {
                shard_id: r.spec.shard.get(),
                replica_id: r.spec.replica.get(),
                role: role(m.state) as i32,
                term: m.current_term,
                leader_replica_id: m.current_leader.map_or(0, |l| l.get()),
                last_log_index: m.last_log_index.unwrap_or(0),
                last_applied_index: m.last_applied.map_or(0, |l| l.index),
                snapshot_index: m.snapshot.map_or(0, |l| l.index),
                purged_index: m.purged.map_or(0, |l| l.index),
                proposed_entries: proposed.entries.load(Ordering::Relaxed),
                proposed_writes: proposed.writes.load(Ordering::Relaxed),
            }
        })
        .collect();
    wire::NodeStatusResponse {
        node_id: node.id.get(),
        island: node.island.clone(),
        replicas,
        map_version: node.map().map_version,
        wal_syncs: node.committer().stats().syncs.load(Ordering::Relaxed),
        wal_synced_appends: node.committer().stats().waiters.load(Ordering::Relaxed),
        wal_sync_micros: node.committer().stats().sync_micros.load(Ordering::Relaxed),
        wal_slow_syncs: node.committer().stats().slow_syncs.load(Ordering::Relaxed),
    }
}

async fn remote_status(address: String) -> Result<wire::NodeStatusResponse, String> {
    let call = async {
        let mut client = ClusterClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .node_status(wire::NodeStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.message().to_string())
    };
    tokio::time::timeout(NODE_STATUS_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn get_cluster_map(
        &self,
        _request: Request<wire::GetClusterMapRequest>,
    ) -> Result<Response<wire::GetClusterMapResponse>, Status> {
        let map = self.node.map();
        let leaders = self
            .node
            .replicas()
            .iter()
            .filter_map(|r| {
                let m = r.metrics();
                let leader = m.current_leader?;
                let hint = self.node.leader_hint(r.spec.shard, Some(leader))?;
                Some(wire::ShardLeader {
                    shard_id: r.spec.shard.get(),
                    replica_id: leader.get(),
                    node_id: hint.node_id,
                    term: m.current_term,
                })
            })
            .collect();
        Ok(Response::new(wire::GetClusterMapResponse {
            map: Some((*map).clone()),
            leaders,
        }))
    }

    async fn node_status(
        &self,
        _request: Request<wire::NodeStatusRequest>,
    ) -> Result<Response<wire::NodeStatusResponse>, Status> {
        Ok(Response::new(node_status(&self.node)))
    }

    async fn status(
        &self,
        _request: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::StatusResponse>, Status> {
        let map = self.node.map();
        let calls = map.nodes.iter().map(|n| {
            let node = self.node.clone();
            let (id, address) = (n.id, n.address.clone());
            async move {
                let result = if NodeId(id) == node.id {
                    Ok(node_status(&node))
                } else {
                    remote_status(address).await
                };
                match result {
                    Ok(status) => wire::NodeReport {
                        node_id: id,
                        error: String::new(),
                        status: Some(status),
                    },
                    Err(error) => wire::NodeReport {
                        node_id: id,
                        error,
                        status: None,
                    },
                }
            }
        });
        let nodes = futures::future::join_all(calls).await;
        Ok(Response::new(wire::StatusResponse {
            map: Some((*map).clone()),
            nodes,
        }))
    }
}
