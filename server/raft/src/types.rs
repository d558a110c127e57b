//! openraft's type configuration for Atoll. Every openraft type the rest of
//! the code names is aliased here, so a move to openraft 0.10 stays local.

use atoll_proto::{NodeId, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Request};

/// Where a replica lives: the openraft `Node` of a membership config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    pub node: NodeId,
}

openraft::declare_raft_types!(
    /// Atoll's openraft type config.
    pub TypeConfig:
        D = Request,
        R = Outcome,
        NodeId = ReplicaId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<ReplicaId>;
pub type Vote = openraft::Vote<ReplicaId>;
pub type StoredMembership = openraft::StoredMembership<ReplicaId, ReplicaNode>;
pub type Membership = openraft::Membership<ReplicaId, ReplicaNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<ReplicaId, ReplicaNode>;
pub type StorageError = openraft::StorageError<ReplicaId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<ReplicaId, ReplicaNode>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<ReplicaId>;
pub type VoteRequest = openraft::raft::VoteRequest<ReplicaId>;
pub type VoteResponse = openraft::raft::VoteResponse<ReplicaId>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<ReplicaId>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<ReplicaId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<ReplicaId, ReplicaNode>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<ReplicaId, ReplicaNode>;
pub type ForwardToLeader = openraft::error::ForwardToLeader<ReplicaId, ReplicaNode>;
pub type ServerState = openraft::ServerState;
