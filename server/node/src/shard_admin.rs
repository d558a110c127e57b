//! The internal `atoll.v1.ShardAdmin` service: membership changes of one
//! shard, carried out by the node whose replica leads it. The meta
//! leader's controller moves replicas with these calls
//! (docs/design/elastic.md, "One move"); a node whose replica does not
//! lead answers `NOT_LEADER` with the leader's address.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use atoll_proto::v1::shard_admin_client::ShardAdminClient;
use atoll_proto::v1::shard_admin_server::ShardAdmin;
use atoll_proto::v1::{self as wire, ClusterMap};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use atoll_raft::types::{ChangeMembers, ClientWriteError, RaftError, ReplicaNode, ServerState};
use atoll_raft::{Command, Outcome, Replica, SplitCommand, SplitReplica, WriteId};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::errors::ApiError;
use crate::node::Node;

pub struct ShardAdminService {
    node: Arc<Node>,
}

impl ShardAdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The local replica of `shard` if it leads, else `NOT_LEADER`. It is
    /// woken: what is asked of it goes to its followers.
    fn leader(&self, shard: u64) -> Result<Replica, ApiError> {
        let shard = ShardId(shard);
        let replica = self
            .node
            .replica(shard)
            .ok_or(ApiError::NotLeader { leader: None })?;
        let metrics = replica.metrics();
        if metrics.state != ServerState::Leader {
            return Err(ApiError::NotLeader {
                leader: self.node.leader_hint(shard, metrics.current_leader),
            });
        }
        replica.wake();
        Ok(replica)
    }

    /// Changes the membership of `replica`'s shard (its leader), in a joint
    /// step where voters change; answers once the change is committed.
    async fn change(
        &self,
        replica: &Replica,
        changes: ChangeMembers,
    ) -> Result<Response<wire::AdminResponse>, Status> {
        replica
            .raft
            .change_membership(changes, false)
            .await
            .map_err(|e| change_error(&self.node, replica.spec.shard, e))?;
        Ok(Response::new(wire::AdminResponse {}))
    }
}

/// A membership change's error as the API's.
fn change_error(node: &Node, shard: ShardId, e: RaftError<ClientWriteError>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::NotLeader {
            leader: node.leader_hint(shard, f.leader_id),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::Refused(e.to_string())
        }
        other => ApiError::ShardUnavailable(other.to_string()),
    }
}

fn ids(set: impl IntoIterator<Item = ReplicaId>) -> Vec<u64> {
    set.into_iter().map(|r| r.get()).collect()
}

#[tonic::async_trait]
impl ShardAdmin for ShardAdminService {
    async fn membership(
        &self,
        request: Request<wire::MembershipRequest>,
    ) -> Result<Response<wire::MembershipResponse>, Status> {
        let replica = self.leader(request.into_inner().shard_id)?;
        let metrics = replica.metrics();
        let stored = &metrics.membership_config;
        let membership = stored.membership();
        let halves = membership.get_joint_config();
        let (old_voters, voters) = match halves.as_slice() {
            [old, new] => (old.clone(), new.clone()),
            [only] => (BTreeSet::new(), only.clone()),
            _ => (BTreeSet::new(), BTreeSet::new()),
        };
        let learners: Vec<ReplicaId> = membership.learner_ids().collect();
        let committed = stored.log_id().as_ref().map(|l| l.index)
            <= metrics.last_applied.as_ref().map(|l| l.index);
        let nodes: BTreeMap<ReplicaId, NodeId> =
            membership.nodes().map(|(id, n)| (*id, n.node)).collect();
        let progress = (metrics.replication.iter())
            .flatten()
            .map(|(id, matched)| wire::ReplicaProgress {
                replica_id: id.get(),
                node_id: nodes.get(id).map_or(0, |n| n.get()),
                matched_index: matched.as_ref().map_or(0, |l| l.index),
                bytes_sent: replica.bytes_sent_to(*id),
            })
            .collect();
        Ok(Response::new(wire::MembershipResponse {
            leader_replica: replica.spec.replica.get(),
            voters: ids(voters),
            old_voters: ids(old_voters),
            learners: ids(learners),
            committed,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            progress,
        }))
    }

    async fn add_learner(
        &self,
        request: Request<wire::AddLearnerRequest>,
    ) -> Result<Response<wire::AdminResponse>, Status> {
        let r = request.into_inner();
        let replica = self.leader(r.shard_id)?;
        if let Some(why) = replica.unfit_to_add_members() {
            return Err(ApiError::ShardUnavailable(why).into());
        }
        let node = ReplicaNode {
            node: NodeId(r.node_id),
        };
        replica
            .raft
            .add_learner(ReplicaId(r.replica_id), node, false)
            .await
            .map_err(|e| change_error(&self.node, replica.spec.shard, e))?;
        Ok(Response::new(wire::AdminResponse {}))
    }

    async fn change_voters(
        &self,
        request: Request<wire::ChangeVotersRequest>,
    ) -> Result<Response<wire::AdminResponse>, Status> {
        let r = request.into_inner();
        let replica = self.leader(r.shard_id)?;
        let voters: BTreeSet<ReplicaId> = r.voters.into_iter().map(ReplicaId).collect();
        if voters.is_empty() {
            return Err(ApiError::Refused("a shard needs at least one voter".into()).into());
        }
        self.change(&replica, ChangeMembers::ReplaceAllVoters(voters))
            .await
    }

    async fn remove_learners(
        &self,
        request: Request<wire::RemoveLearnersRequest>,
    ) -> Result<Response<wire::AdminResponse>, Status> {
        let r = request.into_inner();
        let replica = self.leader(r.shard_id)?;
        let membership = replica.metrics().membership_config.membership().clone();
        let learners: BTreeSet<ReplicaId> = r
            .learners
            .into_iter()
            .map(ReplicaId)
            .filter(|id| membership.learner_ids().any(|l| l == *id))
            .collect();
        if learners.is_empty() {
            return Ok(Response::new(wire::AdminResponse {}));
        }
        self.change(&replica, ChangeMembers::RemoveNodes(learners))
            .await
    }

    async fn split(
        &self,
        request: Request<wire::SplitRequest>,
    ) -> Result<Response<wire::SplitResponse>, Status> {
        let r = request.into_inner();
        let replica = self.leader(r.shard_id)?;
        let command = Command::Split(SplitCommand {
            at: r.at,
            child: ShardId(r.child_shard_id),
            replicas: (r.replicas.iter())
                .map(|p| SplitReplica {
                    parent: ReplicaId(p.parent_replica),
                    child: ReplicaId(p.child_replica),
                    node: NodeId(p.node_id),
                })
                .collect(),
        });
        let outcome = self
            .node
            .propose_command(&replica, command, WriteId::Untracked)
            .await?;
        match outcome {
            Outcome::Split { already } => Ok(Response::new(wire::SplitResponse { already })),
            Outcome::Rejected { reason } => Err(ApiError::Refused(reason).into()),
            other => Err(ApiError::Internal(format!("a split answered {other:?}")).into()),
        }
    }

    async fn transfer_leadership(
        &self,
        request: Request<wire::TransferLeadershipRequest>,
    ) -> Result<Response<wire::AdminResponse>, Status> {
        let r = request.into_inner();
        let replica = self.leader(r.shard_id)?;
        replica
            .raft
            .trigger()
            .transfer_leader(ReplicaId(r.to_replica))
            .await
            .map_err(|e| ApiError::ShardUnavailable(e.to_string()))?;
        Ok(Response::new(wire::AdminResponse {}))
    }
}

/// Calls the ShardAdmin service of `shard`'s leader: asks the nodes of the
/// shard's replicas in `map`, and follows a `NOT_LEADER` hint once.
pub async fn on_leader<T, F, Fut>(map: &ClusterMap, shard: ShardId, call: F) -> Result<T, String>
where
    F: Fn(ShardAdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let Some(entry) = map.shard(shard) else {
        return Err(format!("shard {shard} is not in the map"));
    };
    let mut addresses: Vec<String> = (entry.replicas.iter())
        .filter_map(|r| map.node(NodeId(r.node_id)))
        .map(|n| n.address.clone())
        .collect();
    let mut last = String::from("no replica to ask");
    let mut hops = 0;
    while let Some(address) = addresses.pop() {
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30))
            .connect()
            .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => {
                last = format!("{address}: {e}");
                continue;
            }
        };
        match call(ShardAdminClient::new(channel)).await {
            Ok(answer) => return Ok(answer),
            Err(status) => {
                let error = leader_address(&status);
                last = format!("{address}: {}", status.message());
                if let Some(leader) = error.filter(|_| hops < 1) {
                    hops += 1;
                    addresses.push(leader);
                }
            }
        }
    }
    Err(last)
}

/// The leader address a `NOT_LEADER` status points to.
fn leader_address(status: &Status) -> Option<String> {
    use prost::Message;
    let detail = wire::ErrorDetail::decode(status.details()).ok()?;
    (detail.code == wire::ErrorCode::NotLeader as i32)
        .then_some(detail.leader?.address)
        .filter(|a| !a.is_empty())
}
