//! Multi-raft for Atoll (DESIGN section 4): one openraft `Raft` per replica,
//! all replicas of a node sharing one engine, one group-commit thread and
//! one channel per peer node.
//!
//! Every openraft type is named in [`types`], so an openraft upgrade stays in
//! this crate.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod command;
pub mod join_guard;
pub mod log_store;
pub mod meta_command;
pub mod network;
pub mod pacing;
pub mod proposer;
pub mod quiesce;
pub mod read_index;
pub mod replica;
pub mod service;
pub mod snapshot_policy;
pub mod state_machine;
pub mod types;

pub use command::{
    BatchStep, Command, Current, Expected, LegacyWriteId, Outcome, Proposal, Request, SessionWrite,
    SplitCommand, SplitReplica, WriteId,
};
pub use network::{NetworkFaults, Origin, PeerDirectory, PeerPool, Sender};
pub use pacing::SnapshotPacing;
pub use proposer::{Proposer, ProposerStats};
pub use read_index::ReadIndex;
pub use replica::{Replica, ReplicaConfig, ReplicaSpec};
pub use service::{RaftService, ReplicaDirectory};
pub use state_machine::ShardKind;
