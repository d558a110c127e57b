//! Checks of client input against Atoll's limits. A rejected request gets
//! `INVALID_ARGUMENT` naming the limit, and nothing is written.

use atoll_proto::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_SCAN_LIMIT, MAX_TTL_MS,
};
use atoll_proto::v1::{Limit, WriteId as WireWriteId};
use atoll_raft::{SessionWrite, WriteId};

use crate::errors::ApiError;

pub fn key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::invalid(Limit::KeyEmpty, "key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(
            Limit::KeyTooLarge,
            format!(
                "key is {} bytes; the limit is {MAX_KEY_BYTES} bytes (4 KiB)",
                key.len()
            ),
        ));
    }
    Ok(())
}

pub fn value(value: &[u8], max: u64) -> Result<(), ApiError> {
    if value.len() as u64 > max {
        return Err(ApiError::invalid(
            Limit::ValueTooLarge,
            format!("value is {} bytes; the limit is {max} bytes", value.len()),
        ));
    }
    Ok(())
}

pub fn ttl(ttl_ms: u64) -> Result<(), ApiError> {
    if ttl_ms > MAX_TTL_MS {
        return Err(ApiError::invalid(
            Limit::TtlTooLarge,
            format!("ttl is {ttl_ms} ms; the limit is {MAX_TTL_MS} ms (10 years)"),
        ));
    }
    Ok(())
}

/// Checks the op count and total size of a batch.
pub fn batch(ops: usize, bytes: usize) -> Result<(), ApiError> {
    if ops == 0 {
        return Err(ApiError::invalid(
            Limit::MissingField,
            "batch has no operations",
        ));
    }
    if ops > MAX_BATCH_OPS {
        return Err(ApiError::invalid(
            Limit::BatchTooManyOps,
            format!("batch has {ops} operations; the limit is {MAX_BATCH_OPS}"),
        ));
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(ApiError::invalid(
            Limit::BatchTooLarge,
            format!("batch carries {bytes} bytes of keys and values; the limit is {MAX_BATCH_BYTES} bytes (4 MiB)"),
        ));
    }
    Ok(())
}

/// A page size: 0 means the default; larger than the maximum is clamped.
pub fn scan_limit(limit: u32) -> usize {
    match limit {
        0 => 1000,
        n => n.min(MAX_SCAN_LIMIT) as usize,
    }
}

/// A write's id in its client's session (docs/design/sessions.md); no id,
/// or client id 0, is an untracked write.
pub fn write_id(id: Option<WireWriteId>) -> Result<WriteId, ApiError> {
    let Some(id) = id.filter(|w| w.client_id != 0) else {
        return Ok(WriteId::Untracked);
    };
    if id.lowest_awaited == 0 {
        return Err(ApiError::invalid(
            Limit::MissingField,
            "write_id.lowest_awaited is missing (clients built before sessions do not send it; \
             upgrade the client)",
        ));
    }
    if id.seq < id.lowest_awaited || id.seq < id.session_start {
        return Err(ApiError::invalid(
            Limit::Unspecified,
            format!(
                "write_id.seq {} is below its lowest_awaited {} or session_start {}",
                id.seq, id.lowest_awaited, id.session_start
            ),
        ));
    }
    Ok(WriteId::Session(SessionWrite {
        client_id: id.client_id,
        seq: id.seq,
        lowest_awaited: id.lowest_awaited,
        session_start: id.session_start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_themselves() {
        let err = key(&[b'k'; MAX_KEY_BYTES + 1]).unwrap_err();
        assert!(matches!(
            err,
            ApiError::InvalidArgument {
                limit: Limit::KeyTooLarge,
                ..
            }
        ));
        assert!(key(&[b'k'; MAX_KEY_BYTES]).is_ok());
        assert!(matches!(
            key(b"").unwrap_err(),
            ApiError::InvalidArgument {
                limit: Limit::KeyEmpty,
                ..
            }
        ));
        assert!(matches!(
            value(&[0; 11], 10).unwrap_err(),
            ApiError::InvalidArgument {
                limit: Limit::ValueTooLarge,
                ..
            }
        ));
        assert!(matches!(
            batch(MAX_BATCH_OPS + 1, 0).unwrap_err(),
            ApiError::InvalidArgument {
                limit: Limit::BatchTooManyOps,
                ..
            }
        ));
        assert!(matches!(
            batch(1, MAX_BATCH_BYTES + 1).unwrap_err(),
            ApiError::InvalidArgument {
                limit: Limit::BatchTooLarge,
                ..
            }
        ));
    }
}
