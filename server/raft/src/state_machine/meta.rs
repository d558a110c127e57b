//! The meta shard's state: the cluster map (an encoded `atoll.v1.ClusterMap`)
//! in `apply_state`, replaced only by a compare-and-set on its version.

use atoll_proto::v1::ClusterMap;
use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{frame, Cf, Engine, EngineError, WriteBatch};
use prost::Message;

use crate::command::Outcome;

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

pub(super) fn stored_version(engine: &dyn Engine, replica: ReplicaId) -> Result<u64, EngineError> {
    Ok(read_cluster_map(engine, replica)?.map_or(0, |m| m.map_version))
}

/// Applies `SetClusterMap`.
pub(super) fn apply_set_map(
    replica: ReplicaId,
    current_version: &mut u64,
    expected_version: u64,
    map: &[u8],
    batch: &mut WriteBatch,
) -> Outcome {
    if expected_version != *current_version {
        return Outcome::MapVersionMismatch {
            current_version: *current_version,
        };
    }
    let new_version = match ClusterMap::decode(map) {
        Ok(m) if m.map_version > *current_version => m.map_version,
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
    batch.put(Cf::ApplyState, map_key(replica), frame::encode(FORMAT, map));
    *current_version = new_version;
    Outcome::Written {
        version: new_version,
    }
}

/// Writes a map received in a snapshot (stored form); returns its version.
pub(super) fn restore(
    replica: ReplicaId,
    stored: &[u8],
    batch: &mut WriteBatch,
) -> Result<u64, EngineError> {
    let map = decode_map(stored)?;
    batch.put(Cf::ApplyState, map_key(replica), stored.to_vec());
    Ok(map.map_version)
}
