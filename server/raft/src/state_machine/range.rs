//! The hash range a data replica owns. It starts as its shard's range in
//! the map; a split narrows the parent's and gives the child its own, and a
//! snapshot carries the range it was built at. Once changed it is stored
//! (`apply_tag::RANGE`), in the same batch as the state it describes, and
//! the stored range is the replica's from then on, whatever the map a node
//! holds says: a map may lag a split the replica already applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, EngineError, EngineSnapshot, WriteBatch};

use super::ShardKind;

fn range_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::RANGE, &[])
}

/// A stored range: `first..=last`, and the log index of the entry that
/// set it (a split, or the snapshot installed), if the row records it.
type Stored = (u64, u64, Option<u64>);

fn read_stored(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<Option<Stored>, EngineError> {
    let Some(bytes) = view.get(Cf::ApplyState, &range_key(replica))? else {
        return Ok(None);
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..(i + 1) * 8]);
        u64::from_be_bytes(w)
    };
    // 16 bytes: written before the row recorded its index.
    let (first, last, since) = match bytes.len() {
        16 => (word(0), word(1), None),
        24 => (word(0), word(1), Some(word(2))),
        n => return Err(EngineError::Corruption(format!("hash range of {n} bytes"))),
    };
    if first > last {
        return Err(EngineError::Corruption(format!(
            "hash range of replica {replica} ends before it starts: [{first:#x}, {last:#x}]"
        )));
    }
    Ok(Some((first, last, since)))
}

/// The stored range of `replica` in a view, if one is stored.
pub fn read_range(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<Option<(u64, u64)>, EngineError> {
    Ok(read_stored(view, replica)?.map(|(first, last, _)| (first, last)))
}

/// The log index from which `replica`'s log is consistent with its range
/// (see [`OwnedRange::since`]): 0 if its range never changed, the index
/// the row records, or `applied` for a row that does not record one (at
/// or after the change, so safe to use as the floor).
pub fn read_since(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
    applied: u64,
) -> Result<u64, EngineError> {
    Ok(match read_stored(view, replica)? {
        None => 0,
        Some((_, _, since)) => since.unwrap_or(applied),
    })
}

/// Stores `range` as `replica`'s, set by the entry at log index `since`.
pub fn write_range(
    replica: ReplicaId,
    (first, last): (u64, u64),
    since: u64,
    batch: &mut WriteBatch,
) {
    let mut value = Vec::with_capacity(24);
    value.extend_from_slice(&first.to_be_bytes());
    value.extend_from_slice(&last.to_be_bytes());
    value.extend_from_slice(&since.to_be_bytes());
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
pub struct OwnedRange {
    kind: RwLock<ShardKind>,
    since: AtomicU64,
}

impl OwnedRange {
    pub fn new(kind: ShardKind, since: u64) -> Self {
        Self {
            kind: RwLock::new(kind),
            since: AtomicU64::new(since),
        }
    }

    /// What the replica serves now.
    pub fn kind(&self) -> ShardKind {
        *self.kind.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The log index of the split (or snapshot) that set the range; 0 if
    /// the range is the group's first. Entries up to it were applied to a
    /// wider range: a replica that joins the shard must not replay them
    /// against this one (it would refuse writes the others applied), so
    /// the shard's log is purged up to here and a new replica starts from
    /// a snapshot (docs/design/elastic.md, "Splits").
    pub fn since(&self) -> u64 {
        self.since.load(Ordering::Acquire)
    }

    /// Whether the replica owns `hash` (never, for the meta shard).
    pub fn contains(&self, hash: u64) -> bool {
        match self.kind() {
            ShardKind::Data { first, last } => (first..=last).contains(&hash),
            ShardKind::Meta => false,
        }
    }

    /// Published once the batch that changed the range (at log index
    /// `since`) has landed.
    pub(super) fn set(&self, kind: ShardKind, since: u64) {
        *self.kind.write().unwrap_or_else(|p| p.into_inner()) = kind;
        self.since.store(since, Ordering::Release);
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
        write_range(r, (0, 49), 7, &mut batch);
        engine.write(batch, true).unwrap();
        let view = engine.snapshot();
        assert_eq!(
            current_kind(view.as_ref(), r, map).unwrap(),
            ShardKind::Data { first: 0, last: 49 }
        );
        assert_eq!(read_range(view.as_ref(), ReplicaId(5)).unwrap(), None);
        assert_eq!(read_since(view.as_ref(), r, 9).unwrap(), 7);
        assert_eq!(read_since(view.as_ref(), ReplicaId(5), 9).unwrap(), 0);
        // A row written before it recorded its index: the applied index.
        let mut batch = WriteBatch::new();
        let old: Vec<u8> = [0u64, 49].iter().flat_map(|w| w.to_be_bytes()).collect();
        batch.put(Cf::ApplyState, range_key(r), old);
        engine.write(batch, true).unwrap();
        let view = engine.snapshot();
        assert_eq!(read_range(view.as_ref(), r).unwrap(), Some((0, 49)));
        assert_eq!(read_since(view.as_ref(), r, 9).unwrap(), 9);
    }
}
