//! Scans: the keys of one hash tag in key order (`Scan`), and one shard's
//! keys in storage order (`ScanAll`), both read from one engine view after
//! the caller's read barrier. A page stops at `limit` keys or once its
//! bytes would pass the read page budget, whichever comes first, and says
//! where the next page starts; it always holds one key if any is left.

use atoll_proto::keyhash::{hash_tag, key_hash};
use atoll_proto::v1::{self as wire, Limit};
use atoll_raft::{Replica, ShardKind};
use atoll_storage::keys::{data_key_with_hash, data_range, split_data_key};
use atoll_storage::{Cf, EngineError, EngineSnapshot, Record};

use crate::errors::ApiError;
use crate::kv_service::{kv, read_view};
use crate::node::Node;
use crate::validate;

/// Checks that a `Scan` stays within one hash tag.
pub fn check_tag_range(req: &wire::ScanRequest) -> Result<(), ApiError> {
    validate::key(&req.start)?;
    let Some(tag) = hash_tag(&req.start) else {
        return Err(ApiError::invalid(
            Limit::ScanNeedsHashTag,
            "scan keys must carry a hash tag, e.g. {user42}:; use ScanAll for the whole key space",
        ));
    };
    if !req.end.is_empty() && hash_tag(&req.end) != Some(tag) {
        return Err(ApiError::invalid(
            Limit::ScanNeedsHashTag,
            "scan start and end must carry the same hash tag",
        ));
    }
    Ok(())
}

/// A page being filled: the live pairs kept, and their bytes.
struct Page {
    kvs: Vec<wire::KeyValue>,
    bytes: usize,
    budget: usize,
}

impl Page {
    fn new(budget: usize) -> Self {
        Page {
            kvs: Vec::new(),
            bytes: 0,
            budget,
        }
    }

    /// Bytes a pair adds to a page: its key, its stored record and some
    /// framing.
    fn size(key: &[u8], stored: &[u8]) -> usize {
        key.len() + stored.len() + 16
    }

    /// Whether the pair would pass the byte budget (a page always takes
    /// its first pair).
    fn full_before(&self, key: &[u8], stored: &[u8]) -> bool {
        !self.kvs.is_empty() && self.bytes + Self::size(key, stored) > self.budget
    }

    /// Keeps the pair if its record is live at log clock `clock`.
    fn keep(&mut self, key: &[u8], stored: &[u8], clock: u64) -> Result<(), EngineError> {
        let record = Record::decode(stored)?;
        if !record.is_expired(clock) {
            self.bytes += Self::size(key, stored);
            self.kvs.push(kv(key.to_vec(), record));
        }
        Ok(())
    }
}

/// Keys of `req.start`'s tag in `[start, end)`, in key order, as of
/// `view`, judged live by its log clock `clock`, up to `budget` bytes. A
/// page that stops early resumes at a key of the same tag, so the next
/// request is valid.
pub fn tag_range(
    view: &dyn EngineSnapshot,
    clock: u64,
    budget: usize,
    req: &wire::ScanRequest,
) -> Result<wire::ScanResponse, ApiError> {
    let tag = hash_tag(&req.start).unwrap_or_default();
    let limit = validate::scan_limit(req.limit);
    let hash = key_hash(&req.start);
    let end = if req.end.is_empty() {
        data_range(hash, hash).1
    } else {
        data_key_with_hash(hash, &req.end)
    };
    let from = data_key_with_hash(hash, &req.start);
    let mut page = Page::new(budget);
    let mut resume_key = Vec::new();
    // Other tags with the same hash share the range: skip their keys.
    view.for_each(Cf::Data, &from, &end, &mut |dkey, stored| {
        let Some((_, key)) = split_data_key(dkey) else {
            return Ok(true);
        };
        if hash_tag(key) != Some(tag) {
            return Ok(true);
        }
        if page.kvs.len() == limit || page.full_before(key, stored) {
            resume_key = key.to_vec();
            return Ok(false);
        }
        page.keep(key, stored, clock)?;
        Ok(true)
    })?;
    Ok(wire::ScanResponse {
        kvs: page.kvs,
        resume_key,
    })
}

/// Up to `limit` keys and `budget` bytes of `replica`'s shard from
/// `cursor`, in storage order. Expired rows count toward `limit`, so a page
/// reads at most `limit` rows.
pub fn shard_page(
    node: &Node,
    replica: &Replica,
    cursor: Vec<u8>,
    limit: u32,
    budget: usize,
) -> Result<wire::ScanAllResponse, ApiError> {
    let ShardKind::Data { first, last } = replica.kind() else {
        return Err(ApiError::StaleMap {
            map_version: node.map().map_version,
            message: "not a data shard".into(),
        });
    };
    let limit = validate::scan_limit(limit);
    let (start, end) = data_range(first, last);
    let from = if cursor > start { cursor } else { start };
    if !end.is_empty() && from >= end {
        return Err(ApiError::StaleMap {
            map_version: node.map().map_version,
            message: "cursor is past this shard's range".into(),
        });
    }
    let (view, clock) = read_view(node.engine().as_ref(), replica)?;
    let mut page = Page::new(budget);
    let mut rows = 0;
    let mut next = None;
    view.for_each(Cf::Data, &from, &end, &mut |dkey, stored| {
        if rows == limit || page.full_before(dkey, stored) {
            next = Some(dkey.to_vec());
            return Ok(false);
        }
        rows += 1;
        if let Some((_, key)) = split_data_key(dkey) {
            page.keep(key, stored, clock)?;
        }
        Ok(true)
    })?;
    Ok(wire::ScanAllResponse {
        kvs: page.kvs,
        shard_done: next.is_none(),
        cursor: next.unwrap_or_default(),
        owned_last: Some(last),
    })
}
