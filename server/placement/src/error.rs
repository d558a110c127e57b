//! Why a placement request was refused.

use atoll_proto::{NodeId, ShardId};

/// A placement or hash-space request that cannot be satisfied as given.
///
/// Every variant names the offending input, so the message can go straight
/// to an operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// The hash space was to be cut into zero shards.
    #[error("the hash space must be cut into at least one shard, not zero")]
    ZeroShards,
    /// The replication factor was zero.
    #[error("the replication factor must be at least 1, not 0")]
    ZeroReplicationFactor,
    /// No nodes were given.
    #[error("there are no nodes to place replicas on")]
    NoNodes,
    /// Fewer distinct nodes than the replication factor.
    #[error("replication factor {needed} needs at least {needed} distinct nodes, but only {have} are given")]
    NotEnoughNodes {
        /// Nodes needed: the replication factor.
        needed: usize,
        /// Distinct nodes given.
        have: usize,
    },
    /// A node has capacity 0.
    #[error("node {0} has capacity 0; capacity is a relative weight and must be at least 1")]
    ZeroCapacity(NodeId),
    /// A node id appears more than once.
    #[error("node {0} is listed more than once")]
    DuplicateNode(NodeId),
    /// A node has an empty island label.
    #[error("node {0} has an empty island label")]
    EmptyIsland(NodeId),
    /// A shard id appears more than once.
    #[error("shard {0} is listed more than once")]
    DuplicateShard(ShardId),
    /// More replicas than the exact arithmetic supports (`2^40`).
    #[error("{replicas} replicas (shards x replication factor) is more than the supported {max}")]
    TooManyReplicas {
        /// Replicas requested: shards times replication factor.
        replicas: u128,
        /// The most replicas one placement supports.
        max: u128,
    },
}
