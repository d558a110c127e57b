//! Snapshot format and building.
//!
//! A snapshot is a sequence of items, each `len (u32 BE) ++ frame`, where
//! the frame is crc32-checked postcard (see [`crate::codec`]). It starts with
//! a header and ends with a trailer that counts the records, so a truncated
//! snapshot is detected. Records travel in their stored form (with their own
//! crc32) and are checked again on install.

use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot};
use serde::{Deserialize, Serialize};

use super::dedup::DedupRow;
use super::AppliedState;
use crate::codec::{decode, encode};

/// One item of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    Header {
        shard: ShardId,
        range: Option<(u64, u64)>,
        applied: AppliedState,
    },
    Record {
        data_key: Vec<u8>,
        stored: Vec<u8>,
    },
    Dedup(DedupRow),
    Meta {
        map: Vec<u8>,
    },
    Trailer {
        records: u64,
    },
}

/// Appends one item to `out`.
pub fn write_item(out: &mut Vec<u8>, item: &Item) -> Result<(), EngineError> {
    let frame = encode(item)?;
    let len = u32::try_from(frame.len())
        .map_err(|_| EngineError::Io("snapshot item too large".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&frame);
    Ok(())
}

/// Splits a snapshot into its checked items.
pub fn read_items(data: &[u8]) -> Result<Vec<Item>, EngineError> {
    let mut items = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(EngineError::Corruption(
                "snapshot: truncated item length".into(),
            ));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let body = rest
            .get(4..4 + len)
            .ok_or_else(|| EngineError::Corruption("snapshot: truncated item".into()))?;
        items.push(decode::<Item>(body, "snapshot item")?);
        rest = &rest[4 + len..];
    }
    let records = items
        .iter()
        .filter(|i| matches!(i, Item::Record { .. }))
        .count() as u64;
    match (items.first(), items.last()) {
        (Some(Item::Header { .. }), Some(Item::Trailer { records: n })) if *n == records => {
            Ok(items)
        }
        _ => Err(EngineError::Corruption(
            "snapshot: missing header or trailer, or wrong record count".into(),
        )),
    }
}

/// Reads the applied state of `replica` from an engine view.
pub fn read_applied(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<AppliedState, EngineError> {
    match view.get(
        Cf::ApplyState,
        &keys::tagged_key(replica, apply_tag::APPLIED, &[]),
    )? {
        Some(bytes) => decode(&bytes, "applied state"),
        None => Ok(AppliedState::default()),
    }
}

/// Serializes a replica's state machine from one consistent engine view:
/// the applied state, data range, dedup rows and meta map all come from
/// the same point in time, because apply writes them in one batch.
pub fn build(
    engine: &Arc<dyn Engine>,
    replica: ReplicaId,
    shard: ShardId,
    range: Option<(u64, u64)>,
) -> Result<(AppliedState, Vec<u8>), EngineError> {
    let view = engine.snapshot();
    let applied = read_applied(view.as_ref(), replica)?;
    let mut out = Vec::new();
    write_item(
        &mut out,
        &Item::Header {
            shard,
            range,
            applied: applied.clone(),
        },
    )?;
    let mut records = 0u64;
    if let Some((first, last)) = range {
        let (start, end) = keys::data_range(first, last);
        view.for_each(Cf::Data, &start, &end, &mut |k, v| {
            write_item(
                &mut out,
                &Item::Record {
                    data_key: k.to_vec(),
                    stored: v.to_vec(),
                },
            )?;
            records += 1;
            Ok(true)
        })?;
    }
    let (start, end) = keys::tag_range(replica, apply_tag::DEDUP);
    view.for_each(Cf::ApplyState, &start, &end, &mut |_, v| {
        write_item(&mut out, &Item::Dedup(decode(v, "dedup row")?))?;
        Ok(true)
    })?;
    if let Some(map) = view.get(
        Cf::ApplyState,
        &keys::tagged_key(replica, apply_tag::META, &[]),
    )? {
        write_item(&mut out, &Item::Meta { map })?;
    }
    write_item(&mut out, &Item::Trailer { records })?;
    Ok((applied, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_snapshot_is_rejected() {
        let mut out = Vec::new();
        write_item(
            &mut out,
            &Item::Header {
                shard: ShardId(1),
                range: None,
                applied: AppliedState::default(),
            },
        )
        .unwrap();
        write_item(
            &mut out,
            &Item::Record {
                data_key: b"k".to_vec(),
                stored: b"v".to_vec(),
            },
        )
        .unwrap();
        write_item(&mut out, &Item::Trailer { records: 1 }).unwrap();
        assert_eq!(read_items(&out).unwrap().len(), 3);
        assert!(read_items(&out[..out.len() - 3]).is_err());
        let mut flipped = out.clone();
        flipped[12] ^= 0x40;
        assert!(read_items(&flipped).is_err());
    }
}
