//! Scans: the keys of one hash tag in key order (`Scan`), and one shard's
//! keys in storage order (`ScanAll`), both read from the local engine after
//! the caller's read barrier.

use atoll_proto::keyhash::{hash_tag, key_hash};
use atoll_proto::v1::{self as wire, Limit};
use atoll_raft::{Replica, ShardKind};
use atoll_storage::keys::{data_key_with_hash, data_range, split_data_key};
use atoll_storage::{Cf, Engine, Record};

use crate::errors::ApiError;
use crate::kv_service::kv;
use crate::node::{now_ms, Node};
use crate::validate;

/// The position right after `data_key`.
fn successor(data_key: &[u8]) -> Vec<u8> {
    [data_key, &[0]].concat()
}

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

/// Keys of `req.start`'s tag in `[start, end)`, in key order.
pub fn tag_range(
    engine: &dyn Engine,
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
    let now = now_ms();
    let mut kvs = Vec::new();
    let mut from = data_key_with_hash(hash, &req.start);
    // Pages of raw rows: expired keys and other tags with the same hash are
    // skipped, so one page may not fill the answer.
    loop {
        let rows = engine.scan(Cf::Data, &from, &end, limit + 1)?;
        for (dkey, stored) in &rows {
            let Some((_, key)) = split_data_key(dkey) else {
                continue;
            };
            if kvs.len() == limit {
                return Ok(wire::ScanResponse {
                    kvs,
                    resume_key: key.to_vec(),
                });
            }
            if hash_tag(key) != Some(tag) {
                continue;
            }
            let record = Record::decode(stored)?;
            if !record.is_expired(now) {
                kvs.push(kv(key.to_vec(), record));
            }
        }
        match rows.last() {
            Some((last, _)) if rows.len() > limit => from = successor(last),
            _ => {
                return Ok(wire::ScanResponse {
                    kvs,
                    resume_key: Vec::new(),
                })
            }
        }
    }
}

/// Up to `limit` keys of `replica`'s shard from `cursor`, in storage order.
pub fn shard_page(
    node: &Node,
    replica: &Replica,
    cursor: Vec<u8>,
    limit: u32,
) -> Result<wire::ScanAllResponse, ApiError> {
    let ShardKind::Data { first, last } = replica.spec.kind else {
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
    let rows = node.engine().scan(Cf::Data, &from, &end, limit)?;
    let shard_done = rows.len() < limit;
    let cursor = rows.last().map_or(from, |(last, _)| successor(last));
    let now = now_ms();
    let mut kvs = Vec::with_capacity(rows.len());
    for (dkey, stored) in rows {
        let Some((_, key)) = split_data_key(&dkey) else {
            continue;
        };
        let record = Record::decode(&stored)?;
        if !record.is_expired(now) {
            kvs.push(kv(key.to_vec(), record));
        }
    }
    Ok(wire::ScanAllResponse {
        kvs,
        cursor,
        shard_done,
    })
}
