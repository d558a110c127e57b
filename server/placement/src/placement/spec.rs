//! The inputs and the output of placement.

use std::collections::BTreeMap;

use atoll_proto::{NodeId, ShardId};

/// A node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// The node's failure domain (data center, zone, site).
    pub island: String,
    /// Relative weight, at least 1: a node of capacity 2 gets about twice
    /// the replicas of a node of capacity 1, where islands allow it.
    pub capacity: u64,
}

/// Shard -> its replica nodes; the first node of each list is the preferred
/// leader.
pub type Assignment = BTreeMap<ShardId, Vec<NodeId>>;
