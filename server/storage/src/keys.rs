//! Key layout of every column family (DESIGN section 3).
//!
//! - `data`: `hash(partition_key) BE ++ key`, so one shard's data is one
//!   contiguous range.
//! - `raft_log`: `replica BE ++ index BE`.
//! - `raft_state`: `replica BE ++ tag`.
//! - `apply_state`: `replica BE ++ tag [++ more]`.

use atoll_proto::keyhash::key_hash;
use atoll_proto::ReplicaId;

/// Tags of `raft_state` rows.
pub mod state_tag {
    pub const VOTE: u8 = b'v';
    pub const COMMITTED: u8 = b'c';
    pub const PURGED: u8 = b'p';
}

/// Tags of `apply_state` rows.
pub mod apply_tag {
    /// Last applied log id and membership.
    pub const APPLIED: u8 = b'a';
    /// Dedup rows, one per key, as earlier versions stored them:
    /// `++ client_id BE ++ seq BE` (read, then rewritten as groups).
    pub const DEDUP: u8 = b'd';
    /// Groups of dedup rows: `++ ordinal of the first row BE`.
    pub const DEDUP_GROUP: u8 = b'g';
    /// A client session's header: `++ client_id BE`.
    pub const SESSION: u8 = b's';
    /// A client session's kept outcome: `++ client_id BE ++ seq BE`.
    pub const SESSION_ROW: u8 = b'r';
    /// The meta shard's cluster map; under replica id 0, the node's own
    /// copy of the latest map it has seen.
    pub const META: u8 = b'm';
    /// The node's identity (cluster name, cluster id, node id), under
    /// replica id 0, written at first start and checked at every start.
    pub const IDENTITY: u8 = b'i';
    /// A joining node's random join token (u64 BE), under replica id 0,
    /// kept from before it asks to join until its identity is written, so
    /// a retried join gets the same node id.
    pub const JOIN_TOKEN: u8 = b'j';
    /// The incarnation of the node's data directory (u64 BE), under
    /// replica id 0: random, chosen when the directory first starts.
    pub const INCARNATION: u8 = b'e';
    /// The log clock: the largest proposer time of any applied entry (Unix
    /// ms, u64 BE). Every replica judges TTL expiry by it.
    pub const CLOCK: u8 = b't';
    /// The expiry index: `++ expires_at BE ++ data key`, empty value, one
    /// row per write of a record with a TTL (see [`super::expiry_key`]).
    pub const EXPIRY: u8 = b'x';
    /// Set while a snapshot is being installed: the snapshot's index (u64
    /// BE). A replica found with it at start finishes the install.
    pub const INSTALLING: u8 = b'n';
    /// The hash range a data replica owns, `first BE ++ last BE`, once it
    /// differs from its shard's first range (a split narrowed it, or
    /// seeded it) or a snapshot set it.
    pub const RANGE: u8 = b'h';
}

/// The `data` key of a user key.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    data_key_with_hash(key_hash(key), key)
}

/// The `data` key of a user key whose hash is known.
pub fn data_key_with_hash(hash: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&hash.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits a `data` key into its hash and user key.
pub fn split_data_key(data_key: &[u8]) -> Option<(u64, &[u8])> {
    if data_key.len() < 8 {
        return None;
    }
    let mut h = [0u8; 8];
    h.copy_from_slice(&data_key[..8]);
    Some((u64::from_be_bytes(h), &data_key[8..]))
}

/// The `data` range `[start, end)` of the hash range `[first, last]`
/// (an empty `end` is unbounded).
pub fn data_range(first: u64, last: u64) -> (Vec<u8>, Vec<u8>) {
    let start = first.to_be_bytes().to_vec();
    let end = match last.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => Vec::new(),
    };
    (start, end)
}

/// The `raft_log` key of one entry.
pub fn log_key(replica: ReplicaId, index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&replica.get().to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// The index of a `raft_log` key.
pub fn log_index(log_key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = log_key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Every key that starts with `replica BE`, as `[start, end)`: all of one
/// replica's rows in `raft_log`, `raft_state` or `apply_state`.
pub fn replica_range(replica: ReplicaId) -> (Vec<u8>, Vec<u8>) {
    let start = replica.get().to_be_bytes().to_vec();
    let end = match replica.get().checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => Vec::new(),
    };
    (start, end)
}

/// A `raft_state` or `apply_state` key: `replica BE ++ tag ++ rest`.
pub fn tagged_key(replica: ReplicaId, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + rest.len());
    out.extend_from_slice(&replica.get().to_be_bytes());
    out.push(tag);
    out.extend_from_slice(rest);
    out
}

/// The range of every `apply_state` key of `replica` with `tag`.
pub fn tag_range(replica: ReplicaId, tag: u8) -> (Vec<u8>, Vec<u8>) {
    (
        tagged_key(replica, tag, &[]),
        tagged_key(replica, tag + 1, &[]),
    )
}

/// The expiry-index row of a record with a TTL: sorted by expiry time, so
/// the rows due by some time are one range.
pub fn expiry_key(replica: ReplicaId, expires_at_ms: u64, data_key: &[u8]) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + data_key.len());
    rest.extend_from_slice(&expires_at_ms.to_be_bytes());
    rest.extend_from_slice(data_key);
    tagged_key(replica, apply_tag::EXPIRY, &rest)
}

/// Splits an expiry-index row's key into its expiry time and data key.
pub fn split_expiry_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.get(9..)?;
    let at: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(at), &rest[8..]))
}

/// The expiry-index rows of `replica` due at or before `last_ms`.
pub fn expiry_range(replica: ReplicaId, last_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let start = tagged_key(replica, apply_tag::EXPIRY, &[]);
    let end = match last_ms.checked_add(1) {
        Some(next) => tagged_key(replica, apply_tag::EXPIRY, &next.to_be_bytes()),
        None => tagged_key(replica, apply_tag::EXPIRY + 1, &[]),
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_of_a_range_sort_inside_it() {
        let (start, end) = data_range(10, 20);
        let inside = data_key_with_hash(20, &[0xff; 64]);
        assert!(inside >= start && inside < end);
        let outside = data_key_with_hash(21, b"");
        assert!(outside >= end);
    }

    #[test]
    fn last_range_is_unbounded() {
        let (_, end) = data_range(5, u64::MAX);
        assert!(end.is_empty());
    }

    #[test]
    fn log_keys_sort_by_index_within_a_replica() {
        let r = ReplicaId(3);
        assert!(log_key(r, 9) < log_key(r, 10));
        assert!(log_key(r, u64::MAX) < log_key(ReplicaId(4), 0));
        assert_eq!(log_index(&log_key(r, 42)), Some(42));
    }

    #[test]
    fn expiry_keys_sort_by_time_and_split_back() {
        let r = ReplicaId(7);
        let early = expiry_key(r, 1_000, &data_key(b"zzz"));
        let late = expiry_key(r, 1_001, &data_key(b"aaa"));
        assert!(early < late);
        assert_eq!(
            split_expiry_key(&late),
            Some((1_001, data_key(b"aaa").as_slice()))
        );
        let (start, end) = expiry_range(r, 1_000);
        assert!(early >= start && early < end);
        assert!(late >= end, "a row due later is outside the range");
        let (_, all) = expiry_range(r, u64::MAX);
        assert!(expiry_key(r, u64::MAX, b"k") < all);
    }
}
