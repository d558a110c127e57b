//! The node's identity: which cluster and which node id its data directory
//! belongs to. Written at first start (or when a join gets the node its
//! id), checked at every start, so a data directory is never reused under
//! another identity: a restart with a different `initial_shards`,
//! `initial_nodes` or `node_id` would otherwise rebind its replica ids to
//! other shards and ranges.

use atoll_proto::v1::{ClusterMap, Shard};
use atoll_proto::ReplicaId;
use atoll_raft::codec::{decode, encode};
use atoll_storage::keys::{apply_tag, tagged_key};
use atoll_storage::{Cf, Engine, EngineError, WriteBatch};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::config::NodeConfig;

/// Who a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_name: String,
    /// The map's `cluster_id`: a fingerprint of the initial layout (every
    /// shard's id, hash range and replicas, and the replication factor),
    /// fixed at bootstrap. Addresses and capacities may change between
    /// starts; this may not.
    pub cluster_id: u64,
    pub node_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "node {node} has run in this cluster before (node {peer} knows its data directory as \
         incarnation {known:#018x}), but this data directory is empty: a node that lost its data \
         must not come back under its old id, as it may have forgotten its votes and the writes \
         it acknowledged. Remove it (`atollctl node remove {node} --dead`) and start it on an \
         empty data directory with cluster.join, which gives it a new id"
    )]
    DataLost { node: u64, peer: u64, known: u64 },
    #[error(
        "this data directory belongs to cluster {stored_name:?} (id {stored_id:#018x}) as node {stored_node}, \
         but the configuration says cluster {name:?} (id {id:#018x}) as node {node}: \
         cluster.name, cluster.initial_nodes, cluster.initial_shards, cluster.replication_factor \
         and node_id must stay as they were at the first start (or use a new data_dir)",
        stored_name = .stored.cluster_name, stored_id = .stored.cluster_id, stored_node = .stored.node_id,
        name = .configured.cluster_name, id = .configured.cluster_id, node = .configured.node_id
    )]
    Mismatch {
        stored: Identity,
        configured: Identity,
    },
    #[error(transparent)]
    Storage(#[from] EngineError),
}

impl Identity {
    /// The identity of node `node_id` in the cluster whose initial map is
    /// `initial`.
    pub fn of(initial: &ClusterMap, node_id: u64) -> Identity {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(initial.cluster_name.as_bytes());
        h.update(&initial.replication_factor.to_be_bytes());
        let shard = |h: &mut xxhash_rust::xxh3::Xxh3, s: &Shard| {
            for n in [s.id, s.range_start, s.range_last] {
                h.update(&n.to_be_bytes());
            }
            for r in &s.replicas {
                h.update(&r.replica_id.to_be_bytes());
                h.update(&r.node_id.to_be_bytes());
            }
        };
        for s in initial.meta.iter().chain(&initial.shards) {
            shard(&mut h, s);
        }
        Identity {
            cluster_name: initial.cluster_name.clone(),
            cluster_id: h.digest(),
            node_id,
        }
    }
}

/// The identity row: stored under replica id 0, which no replica has.
fn identity_key() -> Vec<u8> {
    tagged_key(ReplicaId(0), apply_tag::IDENTITY, &[])
}

/// The stored identity, if any.
pub fn read(engine: &dyn Engine) -> Result<Option<Identity>, IdentityError> {
    match engine.get(Cf::ApplyState, &identity_key())? {
        Some(bytes) => Ok(Some(decode(&bytes, "node identity")?)),
        None => Ok(None),
    }
}

fn incarnation_key() -> Vec<u8> {
    tagged_key(ReplicaId(0), apply_tag::INCARNATION, &[])
}

/// The incarnation of this data directory: chosen at random and stored,
/// synced, the first time it is asked for. A directory that is lost and
/// started again empty gets another one, so the cluster, which records
/// the first it hears, can tell it from the directory it knew (a node
/// that forgot its votes and log must not vote or acknowledge entries
/// under its old id).
pub fn incarnation(engine: &dyn Engine) -> Result<u64, IdentityError> {
    let key = incarnation_key();
    if let Some(bytes) = engine.get(Cf::ApplyState, &key)? {
        let stored: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            EngineError::Corruption(format!(
                "the node's incarnation row has {} bytes, not 8",
                bytes.len()
            ))
        })?;
        return Ok(u64::from_be_bytes(stored));
    }
    let chosen = rand::random::<u64>().max(1);
    let mut batch = WriteBatch::new();
    batch.put(Cf::ApplyState, key, chosen.to_be_bytes().to_vec());
    engine.write(batch, true)?;
    Ok(chosen)
}

/// How long a node of the initial layout, starting on an empty data
/// directory, waits for each of its peers to say whether it knows it.
const ASK_PEERS_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses to start node `config.node_id` of the initial layout on an
/// empty data directory when a peer's map records an incarnation for it:
/// the node ran before and lost its data (as etcd refuses a member that
/// "has already been bootstrapped"). Peers that do not answer are passed
/// over, so the first start of a cluster needs none of them; if none
/// answers, the peers' own check of the incarnation on every Raft call
/// still keeps the node out once the map records it.
pub async fn refuse_if_known(
    config: &NodeConfig,
    initial: &ClusterMap,
) -> Result<(), IdentityError> {
    let node = config.node_id;
    let peers = (config.cluster.initial_nodes.iter()).filter(|n| n.id != node);
    let asked = peers.map(|peer| async move {
        let map = crate::join::map_at_within(&peer.address, ASK_PEERS_TIMEOUT).await;
        (peer.id, map)
    });
    for (peer, map) in futures::future::join_all(asked).await {
        let map = match map {
            Ok(map) if map.cluster_id == initial.cluster_id => map,
            Ok(_) => continue,
            Err(why) => {
                tracing::debug!(peer, %why, "asking a peer whether it knows this node");
                continue;
            }
        };
        let known = map
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map_or(0, |n| n.incarnation);
        if known != 0 {
            return Err(IdentityError::DataLost { node, peer, known });
        }
    }
    Ok(())
}

/// Stores the identity a join gave, and deletes the join token it was
/// asked with (`token_key`), in one synced write.
pub fn store_joined(
    engine: &dyn Engine,
    identity: &Identity,
    token_key: &[u8],
) -> Result<(), IdentityError> {
    let mut batch = WriteBatch::new();
    batch.put(Cf::ApplyState, identity_key(), encode(identity)?);
    batch.delete(Cf::ApplyState, token_key.to_vec());
    engine.write(batch, true)?;
    Ok(())
}

/// Stores `identity` if the engine holds none yet; otherwise checks that
/// the stored one is the same.
pub fn check(engine: &dyn Engine, identity: &Identity) -> Result<(), IdentityError> {
    match read(engine)? {
        Some(stored) => {
            if &stored != identity {
                return Err(IdentityError::Mismatch {
                    stored,
                    configured: identity.clone(),
                });
            }
            Ok(())
        }
        None => {
            let mut batch = WriteBatch::new();
            batch.put(Cf::ApplyState, identity_key(), encode(identity)?);
            engine.write(batch, true)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_storage::MemEngine;

    use super::*;

    fn identity(name: &str, cluster_id: u64, node_id: u64) -> Identity {
        Identity {
            cluster_name: name.into(),
            cluster_id,
            node_id,
        }
    }

    #[test]
    fn the_first_identity_sticks() {
        let engine = MemEngine::new();
        check(&engine, &identity("a", 1, 1)).unwrap();
        check(&engine, &identity("a", 1, 1)).unwrap();
        for other in [
            identity("b", 1, 1),
            identity("a", 2, 1),
            identity("a", 1, 2),
        ] {
            let err = check(&engine, &other).unwrap_err();
            assert!(matches!(err, IdentityError::Mismatch { .. }), "{err}");
        }
    }

    #[test]
    fn the_incarnation_is_chosen_once_per_data_directory() {
        let engine = MemEngine::new();
        let first = incarnation(&engine).unwrap();
        assert_ne!(first, 0);
        assert_eq!(incarnation(&engine).unwrap(), first);
        assert_ne!(incarnation(&MemEngine::new()).unwrap(), first);
    }
}
