//! The hash range a data replica owns. It starts as its shard's range in
//! the map; a split narrows the parent's and gives the child its own, and a
//! snapshot carries the range it was built at. Once changed it is stored
//! (`apply_tag::RANGE`), in the same batch as the state it describes, and
//! the stored range is the replica's from then on, whatever the map a node
//! holds says: a map may lag a split the replica already applied.

use std::sync::RwLock;

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, EngineError, EngineSnapshot, WriteBatch};

use super::ShardKind;

fn range_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::RANGE, &[])
}

/// The stored range of `replica` in a view, if one is stored.
pub fn read_range(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<Option<(u64, u64)>, EngineError> {
    let Some(bytes) = view.get(Cf::ApplyState, &range_key(replica))? else {
        return Ok(None);
    };
    if bytes.len() != 16 {
        return Err(EngineError::Corruption(format!(
            "hash range of {} bytes",
            bytes.len()
        )));
    }
    let (mut first, mut last) = ([0u8; 8], [0u8; 8]);
    first.copy_from_slice(&bytes[..8]);
    last.copy_from_slice(&bytes[8..]);
    let (first, last) = (u64::from_be_bytes(first), u64::from_be_bytes(last));
    if first > last {
        return Err(EngineError::Corruption(format!(
            "hash range of replica {replica} ends before it starts: [{first:#x}, {last:#x}]"
        )));
    }
    Ok(Some((first, last)))
}

/// Stores `range` as `replica`'s.
pub fn write_range(replica: ReplicaId, (first, last): (u64, u64), batch: &mut WriteBatch) {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&first.to_be_bytes());
    value.extend_from_slice(&last.to_be_bytes());
    batch.put(Cf::ApplyState, range_key(replica), value);
}

/// What `replica` serves: its stored range if it has one, else `spec` (the
/// range its shard has in the map it was started from).
pub fn current_kind(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
    spec: ShardKind,
) -> Result<ShardKind, EngineError> {
    Ok(match spec {
        ShardKind::Meta => ShardKind::Meta,
        ShardKind::Data { .. } => match read_range(view, replica)? {
            Some((first, last)) => ShardKind::Data { first, last },
            None => spec,
        },
    })
}

/// A replica's range as it has applied it, shared with the request path:
/// a read checks its keys against it after its read barrier, so a key a
/// split gave to another shard is never read from this one.
#[derive(Debug)]
pub struct OwnedRange(RwLock<ShardKind>);

impl OwnedRange {
    pub fn new(kind: ShardKind) -> Self {
        Self(RwLock::new(kind))
    }

    /// What the replica serves now.
    pub fn kind(&self) -> ShardKind {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the replica owns `hash` (never, for the meta shard).
    pub fn contains(&self, hash: u64) -> bool {
        match self.kind() {
            ShardKind::Data { first, last } => (first..=last).contains(&hash),
            ShardKind::Meta => false,
        }
    }

    /// Published once the batch that changed the range has landed.
    pub(super) fn set(&self, kind: ShardKind) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = kind;
    }
}

#[cfg(test)]
mod tests {
    use atoll_storage::{Engine, MemEngine};

    use super::*;

    #[test]
    fn a_stored_range_overrides_the_maps() {
        let engine = MemEngine::new();
        let r = ReplicaId(4);
        let map = ShardKind::Data { first: 0, last: 99 };
        let view = engine.snapshot();
        assert_eq!(current_kind(view.as_ref(), r, map).unwrap(), map);
        let mut batch = WriteBatch::new();
        write_range(r, (0, 49), &mut batch);
        engine.write(batch, true).unwrap();
        let view = engine.snapshot();
        assert_eq!(
            current_kind(view.as_ref(), r, map).unwrap(),
            ShardKind::Data { first: 0, last: 49 }
        );
        assert_eq!(read_range(view.as_ref(), ReplicaId(5)).unwrap(), None);
    }
}
