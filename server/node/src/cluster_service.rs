//! The `atoll.v1.Cluster` service: the cluster map and its changes, this
//! node's replica states, and a cluster-wide status gathered from every
//! node.
//!
//! A change of the map is one command of the meta shard's log
//! (docs/design/elastic.md, "Meta commands"). Any node takes it: a node
//! with a meta replica proposes it there, and forwards it to the leader
//! when that replica does not lead; a node without one forwards it to a
//! node that has one. A forwarded call counts its hops, so a call never
//! circles while leadership moves.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::cluster_server::Cluster;
use atoll_proto::v1::{self as wire, NodeState, ReplicaRole};
use atoll_proto::{NodeId, ShardId};
use atoll_raft::meta_command::{Lifecycle, MetaCommand};
use atoll_raft::state_machine::read_cluster_map;
use atoll_raft::types::ServerState;
use atoll_raft::{Command, Outcome, ShardKind, WriteId};
use atoll_storage::keys::data_range;
use atoll_storage::Cf;
use rand::seq::SliceRandom;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::errors::ApiError;
use crate::node::Node;

/// How long `Status` waits for each node.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `WatchClusterMap` waits for a newer map.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);
/// The deadline of a change forwarded to another node.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a change may be forwarded: from a node without a meta replica
/// to one with a meta replica, and from there to the leader.
const MAX_HOPS: u32 = 2;
/// The gRPC metadata key that counts a forwarded change's hops.
const HOPS_HEADER: &str = "atoll-meta-hops";

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
            let membership = m.membership_config.membership();
            let proposed = r.proposer.stats();
            let range = match r.kind() {
                ShardKind::Data { first, last } => Some((first, last)),
                ShardKind::Meta => None,
            };
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
                voters: membership.voter_ids().map(|r| r.get()).collect(),
                learners: membership.learner_ids().map(|r| r.get()).collect(),
                joint: membership.get_joint_config().len() > 1,
                range_start: range.map_or(0, |(first, _)| first),
                range_last: range.map_or(0, |(_, last)| last),
                approximate_bytes: range.map_or(0, |(first, last)| {
                    let (start, end) = data_range(first, last);
                    (node.engine())
                        .approximate_bytes(Cf::Data, &start, &end)
                        .unwrap_or(0)
                }),
                quiet: r.quiescence().is_quiet(),
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
        incarnation: node.incarnation,
        snapshot_bytes_sent: node.pool().pacing().bytes_sent(),
        snapshot_rate: node.pool().pacing().rate(),
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

fn hops_of<T>(request: &Request<T>) -> u32 {
    request
        .metadata()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// The addresses of the nodes with a meta replica, other than `except`,
/// in random order (so forwarded changes spread over them).
pub(crate) fn meta_addresses(map: &wire::ClusterMap, except: NodeId) -> Vec<String> {
    let mut addresses: Vec<String> = (map.meta.iter())
        .flat_map(|meta| &meta.replicas)
        .filter(|r| r.node_id != except.get())
        .filter_map(|r| map.node(NodeId(r.node_id)))
        .filter(|n| Lifecycle::of(n) != Lifecycle::Removed)
        .map(|n| n.address.clone())
        .collect();
    addresses.shuffle(&mut rand::rng());
    addresses
}

async fn connect(address: &str) -> Result<ClusterClient<Channel>, Status> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| Status::invalid_argument(format!("{address}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(FORWARD_TIMEOUT)
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("{address}: {e}")))?;
    Ok(ClusterClient::new(channel))
}

/// Whether a forwarded call failed before the other node acted on it, so
/// another node may be asked.
fn unreached(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.details().is_empty()
}

impl ClusterService {
    /// Applies `command` to the map through the meta shard's leader,
    /// wherever it is: `applied` answers from its outcome (the map version
    /// after it, and a registered node's id); `forward` sends the request
    /// on to another node.
    async fn change<Req, Resp, F, Fut>(
        &self,
        request: Request<Req>,
        command: MetaCommand,
        applied: impl FnOnce(u64, Option<u64>) -> Resp,
        forward: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: Fn(ClusterClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let hops = hops_of(&request);
        let body = request.into_inner();
        let targets = match self.node.replica(ShardId::META) {
            Some(meta) => {
                // A new cluster's first meta leader publishes the initial
                // map within a second; a change before it has nothing to
                // apply to.
                let stored = read_cluster_map(self.node.engine().as_ref(), meta.spec.replica)
                    .map_err(ApiError::from)?;
                if stored.is_none() {
                    return Err(ApiError::ShardUnavailable(
                        "the cluster map is not published yet; try again".into(),
                    )
                    .into());
                }
                let command = Command::Meta(command);
                match self
                    .node
                    .propose_command(&meta, command, WriteId::Untracked)
                    .await
                {
                    Ok(Outcome::MapChanged { version, allocated }) => {
                        return Ok(Response::new(applied(version, allocated)))
                    }
                    Ok(Outcome::Rejected { reason }) => {
                        return Err(ApiError::Refused(reason).into())
                    }
                    Ok(other) => {
                        return Err(ApiError::Internal(format!(
                            "a change of the map answered {other:?}"
                        ))
                        .into())
                    }
                    Err(ApiError::NotLeader { leader: Some(hint) }) => vec![hint.address],
                    Err(ApiError::NotLeader { leader: None }) => {
                        return Err(ApiError::ShardUnavailable(
                            "the meta shard has no leader right now".into(),
                        )
                        .into())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => meta_addresses(&self.node.map(), self.node.id),
        };
        forward_to(hops, body, targets, forward).await
    }
}

/// Sends `body` on to the first of `targets` that takes it, counting one
/// more hop (refused once a call has made [`MAX_HOPS`]).
async fn forward_to<Req, Resp, F, Fut>(
    hops: u32,
    body: Req,
    targets: Vec<String>,
    forward: F,
) -> Result<Response<Resp>, Status>
where
    Req: Clone,
    F: Fn(ClusterClient<Channel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    if hops >= MAX_HOPS {
        return Err(ApiError::ShardUnavailable(format!(
            "the meta shard's leader was not reached in {MAX_HOPS} hops (leadership may be moving)"
        ))
        .into());
    }
    let mut last =
        ApiError::ShardUnavailable("no node with a meta replica is known".into()).into_status();
    for address in targets {
        let client = match connect(&address).await {
            Ok(client) => client,
            Err(status) => {
                last = status;
                continue;
            }
        };
        let mut forwarded = Request::new(body.clone());
        forwarded
            .metadata_mut()
            .insert(HOPS_HEADER, (hops + 1).into());
        match forward(client, forwarded).await {
            Err(status) if unreached(&status) => last = status,
            answer => return answer,
        }
    }
    Err(last)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn watch_cluster_map(
        &self,
        request: Request<wire::WatchClusterMapRequest>,
    ) -> Result<Response<wire::WatchClusterMapResponse>, Status> {
        let known = request.into_inner().known_version;
        let map = self.node.watch_map(known, WATCH_WAIT).await;
        Ok(Response::new(wire::WatchClusterMapResponse {
            map: Some((*map).clone()),
        }))
    }

    async fn join_cluster(
        &self,
        request: Request<wire::JoinClusterRequest>,
    ) -> Result<Response<wire::JoinClusterResponse>, Status> {
        let r = request.get_ref();
        let command = MetaCommand::RegisterNode {
            island: r.island.clone(),
            address: r.address.clone(),
            capacity: r.capacity,
            token: r.token,
        };
        let applied = |map_version, node: Option<u64>| wire::JoinClusterResponse {
            node_id: node.unwrap_or(0),
            map_version,
        };
        self.change(request, command, applied, |mut c, r| async move {
            c.join_cluster(r).await
        })
        .await
    }

    async fn set_node_state(
        &self,
        request: Request<wire::SetNodeStateRequest>,
    ) -> Result<Response<wire::MapChangeResponse>, Status> {
        let r = request.get_ref();
        let Some(state) = NodeState::try_from(r.state)
            .ok()
            .and_then(Lifecycle::from_proto)
        else {
            return Err(ApiError::invalid(
                wire::Limit::MissingField,
                format!("state {} is not a node state", r.state),
            )
            .into());
        };
        if state == Lifecycle::Draining {
            crate::planner::can_drain(&self.node.map(), r.node_id).map_err(ApiError::Refused)?;
        }
        let command = MetaCommand::SetNodeState {
            node: r.node_id,
            state,
            dead: r.dead,
        };
        let applied = |map_version, _| wire::MapChangeResponse { map_version };
        self.change(request, command, applied, |mut c, r| async move {
            c.set_node_state(r).await
        })
        .await
    }

    async fn move_replica(
        &self,
        request: Request<wire::MoveReplicaRequest>,
    ) -> Result<Response<wire::MapChangeResponse>, Status> {
        let r = request.get_ref();
        if r.to_node == 0 {
            return Err(ApiError::Refused("name the node to move the replica to".into()).into());
        }
        let map = self.node.map();
        let shard = map
            .shard(ShardId(r.shard_id))
            .ok_or_else(|| ApiError::Refused(format!("shard {} is not in the map", r.shard_id)))?;
        let from_replica = shard.replica_on(NodeId(r.from_node)).ok_or_else(|| {
            ApiError::Refused(format!(
                "node {} holds no replica of shard {}",
                r.from_node, r.shard_id
            ))
        })?;
        let command = MetaCommand::BeginMove {
            shard: r.shard_id,
            epoch: shard.epoch,
            from_replica,
            to_node: r.to_node,
            reason: "operator".into(),
            now_ms: crate::node::now_ms(),
        };
        let applied = |map_version, _| wire::MapChangeResponse { map_version };
        self.change(request, command, applied, |mut c, r| async move {
            c.move_replica(r).await
        })
        .await
    }

    async fn set_placement(
        &self,
        request: Request<wire::SetPlacementRequest>,
    ) -> Result<Response<wire::MapChangeResponse>, Status> {
        let command = MetaCommand::SetPlacement {
            paused: request.get_ref().paused,
        };
        let applied = |map_version, _| wire::MapChangeResponse { map_version };
        self.change(request, command, applied, |mut c, r| async move {
            c.set_placement(r).await
        })
        .await
    }

    async fn set_placement_limits(
        &self,
        request: Request<wire::SetPlacementLimitsRequest>,
    ) -> Result<Response<wire::MapChangeResponse>, Status> {
        let r = request.get_ref();
        let limits = r.limits.unwrap_or_default();
        let command = MetaCommand::SetPlacementLimits {
            max_moves: limits.max_moves,
            max_moves_into_node: limits.max_moves_into_node,
            snapshot_rate: limits.snapshot_rate,
            reset: r.reset,
        };
        let applied = |map_version, _| wire::MapChangeResponse { map_version };
        self.change(request, command, applied, |mut c, r| async move {
            c.set_placement_limits(r).await
        })
        .await
    }

    async fn split_shard(
        &self,
        request: Request<wire::SplitShardRequest>,
    ) -> Result<Response<wire::SplitShardResponse>, Status> {
        let r = request.get_ref();
        let map = self.node.map();
        let shard = (map.shards.iter())
            .find(|s| s.id == r.shard_id)
            .ok_or_else(|| {
                ApiError::Refused(format!(
                    "shard {} is not a data shard of the map",
                    r.shard_id
                ))
            })?;
        let at = match r.at {
            0 => middle(shard.range_start, shard.range_last),
            at => at,
        };
        let command = MetaCommand::BeginSplit {
            shard: shard.id,
            epoch: shard.epoch,
            at,
            reason: "operator".into(),
            now_ms: crate::node::now_ms(),
        };
        let applied = move |map_version, child: Option<u64>| wire::SplitShardResponse {
            map_version,
            child_shard_id: child.unwrap_or(0),
            at,
        };
        // Forwarded with the split point chosen here, so every hop agrees.
        let mut request = request;
        request.get_mut().at = at;
        self.change(request, command, applied, |mut c, r| async move {
            c.split_shard(r).await
        })
        .await
    }

    async fn placement_plan(
        &self,
        request: Request<wire::PlacementPlanRequest>,
    ) -> Result<Response<wire::PlacementPlanResponse>, Status> {
        let map = self.node.map();
        let targets = match self.node.replica(ShardId::META) {
            Some(meta) if meta.leader() == Some(meta.spec.replica) => {
                return Ok(Response::new(crate::controller::plan_now(&self.node)));
            }
            Some(meta) => {
                let leader = meta.leader().and_then(|leader| {
                    let mut replicas = map.meta.iter().flat_map(|m| &m.replicas);
                    let on = replicas.find(|r| r.replica_id == leader.get())?;
                    map.node(NodeId(on.node_id)).map(|n| n.address.clone())
                });
                leader.map_or_else(|| meta_addresses(&map, self.node.id), |a| vec![a])
            }
            None => meta_addresses(&map, self.node.id),
        };
        let hops = hops_of(&request);
        forward_to(hops, request.into_inner(), targets, |mut c, r| async move {
            c.placement_plan(r).await
        })
        .await
    }

    async fn list_moves(
        &self,
        _request: Request<wire::ListMovesRequest>,
    ) -> Result<Response<wire::ListMovesResponse>, Status> {
        let map = self.node.map();
        Ok(Response::new(wire::ListMovesResponse {
            map_version: map.map_version,
            moves: map.moves.clone(),
        }))
    }

    async fn set_node_capacity(
        &self,
        request: Request<wire::SetNodeCapacityRequest>,
    ) -> Result<Response<wire::MapChangeResponse>, Status> {
        let r = request.get_ref();
        let command = MetaCommand::SetCapacity {
            node: r.node_id,
            capacity: r.capacity,
        };
        let applied = |map_version, _| wire::MapChangeResponse { map_version };
        self.change(request, command, applied, |mut c, r| async move {
            c.set_node_capacity(r).await
        })
        .await
    }

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
            let removed = Lifecycle::of(n) == Lifecycle::Removed;
            async move {
                let result = if NodeId(id) == node.id {
                    Ok(node_status(&node))
                } else if removed {
                    Err("removed from the cluster".into())
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

/// The split point in the middle of `[first, last]`: the upper half starts
/// there (a one-hash range has none, and the split is refused).
pub(crate) fn middle(first: u64, last: u64) -> u64 {
    first.saturating_add((last - first) / 2 + 1)
}
