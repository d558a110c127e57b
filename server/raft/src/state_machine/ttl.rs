//! The log clock and the expiry index (docs/design/ttl-and-clocks.md).
//!
//! Expiry is judged by the log clock, the largest proposer time of any
//! applied entry, never by a reader's or an applier's own clock: so every
//! replica, and every read at a given applied index, agrees on which keys
//! are live. The clock is stored in the same batch as the data it judges.

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot, WriteBatch};

fn clock_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::CLOCK, &[])
}

/// The log clock of `replica` in an engine view (0 before any entry).
pub fn read_clock(view: &dyn EngineSnapshot, replica: ReplicaId) -> Result<u64, EngineError> {
    match view.get(Cf::ApplyState, &clock_key(replica))? {
        None => Ok(0),
        Some(bytes) => {
            let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                EngineError::Corruption(format!("log clock of {} bytes", bytes.len()))
            })?;
            Ok(u64::from_be_bytes(raw))
        }
    }
}

pub(super) fn write_clock(replica: ReplicaId, ms: u64, batch: &mut WriteBatch) {
    batch.put(
        Cf::ApplyState,
        clock_key(replica),
        ms.to_be_bytes().to_vec(),
    );
}

/// Deletes the expiry index of `replica` (its clock is rewritten by the
/// caller).
pub(super) fn clear_index(replica: ReplicaId, batch: &mut WriteBatch) {
    let (start, end) = keys::tag_range(replica, apply_tag::EXPIRY);
    batch.delete_range(Cf::ApplyState, start, end);
}

/// Whether `replica` stores a record due to expire at or before `now_ms`:
/// the leader's sweeper proposes an expiry sweep when it does.
pub fn has_due(engine: &dyn Engine, replica: ReplicaId, now_ms: u64) -> Result<bool, EngineError> {
    let (start, end) = keys::expiry_range(replica, now_ms);
    Ok(!engine.scan(Cf::ApplyState, &start, &end, 1)?.is_empty())
}
