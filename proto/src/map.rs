//! Look-ups on the cluster map shared by client and server.

use crate::v1::{ClusterMap, Node, Shard};
use crate::{NodeId, ShardId};

impl ClusterMap {
    /// The data shard whose hash range holds `hash`.
    pub fn shard_for_hash(&self, hash: u64) -> Option<&Shard> {
        // Shards are kept in hash order; ranges tile the space.
        let i = self.shards.partition_point(|s| s.range_last < hash);
        self.shards.get(i).filter(|s| s.contains(hash))
    }

    /// The data shard that owns `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&Shard> {
        self.shard_for_hash(crate::keyhash::key_hash(key))
    }

    /// A shard (data or meta) by id.
    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        if id.is_meta() {
            return self.meta.as_ref();
        }
        self.shards.iter().find(|s| s.id == id.get())
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id.get())
    }
}

impl Shard {
    /// Whether the shard's range holds `hash`.
    pub fn contains(&self, hash: u64) -> bool {
        self.range_start <= hash && hash <= self.range_last
    }

    /// The node that hosts replica `replica_id`.
    pub fn node_of(&self, replica_id: u64) -> Option<NodeId> {
        self.replicas
            .iter()
            .find(|r| r.replica_id == replica_id)
            .map(|r| NodeId(r.node_id))
    }

    /// This shard's replica on `node`, if any.
    pub fn replica_on(&self, node: NodeId) -> Option<u64> {
        self.replicas
            .iter()
            .find(|r| r.node_id == node.get())
            .map(|r| r.replica_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: u64, start: u64, last: u64) -> Shard {
        Shard {
            id,
            range_start: start,
            range_last: last,
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_shard_of_a_hash() {
        let map = ClusterMap {
            shards: vec![shard(1, 0, 99), shard(2, 100, 199), shard(3, 200, u64::MAX)],
            ..Default::default()
        };
        assert_eq!(map.shard_for_hash(0).map(|s| s.id), Some(1));
        assert_eq!(map.shard_for_hash(100).map(|s| s.id), Some(2));
        assert_eq!(map.shard_for_hash(u64::MAX).map(|s| s.id), Some(3));
    }
}
