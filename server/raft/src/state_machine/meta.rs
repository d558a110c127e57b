//! The meta shard's state: the cluster map (an encoded `atoll.v1.ClusterMap`)
//! in `apply_state`, replaced only by a compare-and-set on its version.

use atoll_proto::v1::ClusterMap;
use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{frame, Cf, Engine, EngineError, WriteBatch};
use prost::Message;

use crate::command::Outcome;
use crate::meta_command::{self, Change, MetaCommand};

const FORMAT: u8 = 1;

fn map_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::META, &[])
}

fn decode_map(stored: &[u8]) -> Result<ClusterMap, EngineError> {
    let payload = frame::decode(stored, FORMAT, "cluster map")?;
    ClusterMap::decode(payload).map_err(|e| EngineError::Corruption(format!("cluster map: {e}")))
}

/// The cluster map stored by a meta replica, if any.
pub fn read_cluster_map(
    engine: &dyn Engine,
    replica: ReplicaId,
) -> Result<Option<ClusterMap>, EngineError> {
    engine
        .get(Cf::ApplyState, &map_key(replica))?
        .map(|b| decode_map(&b))
        .transpose()
}

/// The node's own copy of the latest map it has seen, kept under replica
/// id 0 (which no replica has), so a node without a meta replica restarts
/// with the map it last followed rather than one it must fetch first.
pub fn read_node_map(engine: &dyn Engine) -> Result<Option<ClusterMap>, EngineError> {
    read_cluster_map(engine, ReplicaId(0))
}

/// Stores `map` as the node's own copy, synced.
pub fn store_node_map(engine: &dyn Engine, map: &ClusterMap) -> Result<(), EngineError> {
    let mut batch = WriteBatch::new();
    store(ReplicaId(0), map, &mut batch);
    engine.write(batch, true)
}

fn store(replica: ReplicaId, map: &ClusterMap, batch: &mut WriteBatch) {
    batch.put(
        Cf::ApplyState,
        map_key(replica),
        frame::encode(FORMAT, &map.encode_to_vec()),
    );
}

/// Applies `SetClusterMap` to the current map (`None` before the first).
pub(super) fn apply_set_map(
    replica: ReplicaId,
    current: &mut Option<ClusterMap>,
    expected_version: u64,
    map: &[u8],
    batch: &mut WriteBatch,
) -> Outcome {
    let current_version = current.as_ref().map_or(0, |m| m.map_version);
    if expected_version != current_version {
        return Outcome::MapVersionMismatch { current_version };
    }
    let new = match ClusterMap::decode(map) {
        Ok(m) if m.map_version > current_version => m,
        Ok(m) => {
            return Outcome::Rejected {
                reason: format!(
                    "new map version {} is not above {}",
                    m.map_version, current_version
                ),
            }
        }
        Err(e) => {
            return Outcome::Rejected {
                reason: format!("undecodable cluster map: {e}"),
            }
        }
    };
    let version = new.map_version;
    batch.put(Cf::ApplyState, map_key(replica), frame::encode(FORMAT, map));
    *current = Some(new);
    Outcome::Written { version }
}

/// Applies a [`MetaCommand`] to the current map: on success the map's
/// version goes up by one (unless the map already said so).
pub(super) fn apply_meta(
    replica: ReplicaId,
    current: &mut Option<ClusterMap>,
    command: &MetaCommand,
    batch: &mut WriteBatch,
) -> Outcome {
    let Some(map) = current.as_mut() else {
        return Outcome::Rejected {
            reason: "the cluster has no map yet".into(),
        };
    };
    let mut changed = map.clone();
    match meta_command::apply(&mut changed, command) {
        Err(reason) => Outcome::Rejected { reason },
        Ok((Change::AlreadyDone, node)) => Outcome::MapChanged {
            version: map.map_version,
            allocated: node,
        },
        Ok((Change::Changed, node)) => {
            changed.map_version += 1;
            store(replica, &changed, batch);
            *map = changed;
            Outcome::MapChanged {
                version: map.map_version,
                allocated: node,
            }
        }
    }
}

/// Writes a map received in a snapshot (stored form); returns it.
pub(super) fn restore(
    replica: ReplicaId,
    stored: &[u8],
    batch: &mut WriteBatch,
) -> Result<ClusterMap, EngineError> {
    let map = decode_map(stored)?;
    batch.put(Cf::ApplyState, map_key(replica), stored.to_vec());
    Ok(map)
}
