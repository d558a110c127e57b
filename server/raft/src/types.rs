//! openraft's type configuration for Atoll. Every openraft type the rest of
//! the code names is aliased here, so an openraft upgrade stays local.

use atoll_proto::{NodeId, ReplicaId};
use openraft::type_config::alias;
use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Request};
use crate::state_machine::StateMachine;

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
        AsyncRuntime = openraft::TokioRuntime,
);

/// What a snapshot is held in: a file (see `state_machine::snapshot_store`).
pub type SnapshotData = crate::state_machine::SnapshotFile;

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type EntryPayload = alias::EntryPayloadOf<TypeConfig>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<ReplicaId, ReplicaNode>;
pub type ChangeMembers = openraft::ChangeMembers<ReplicaId, ReplicaNode>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
pub type LeaderId = alias::LeaderIdOf<TypeConfig>;
pub type Fatal = openraft::error::Fatal<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<TypeConfig, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<TypeConfig>;
pub type CheckIsLeaderError = openraft::error::LinearizableReadError<TypeConfig>;
pub type ForwardToLeader = openraft::error::ForwardToLeader<TypeConfig>;
pub type ServerState = openraft::ServerState;
