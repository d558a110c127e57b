//! Snapshot format and building.
//!
//! A snapshot is a sequence of items, each `len (u32 BE) ++ frame`, where
//! the frame is crc32-checked postcard (see [`crate::codec`]). It starts with
//! a header and ends with a trailer that counts the records, so a truncated
//! snapshot is detected. Records travel in their stored form (with their own
//! crc32) and are checked again on install.

use std::io::{Read, Write};
use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot};
use serde::{Deserialize, Serialize};

use super::dedup::{self, DedupRow};
use super::sessions::{self, StoredSession};
use super::{ttl, AppliedState};
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
    /// The log clock ([`super::ttl`]); snapshots of earlier versions lack it.
    Clock {
        ms: u64,
    },
    /// A client session, or more rows of the one in the item before
    /// (snapshots of earlier versions have none).
    Session(StoredSession),
}

/// Most session rows one snapshot item carries.
const SESSION_ROWS_PER_ITEM: usize = 1024;

/// Writes one item to `out`.
pub fn write_item(out: &mut impl Write, item: &Item) -> Result<(), EngineError> {
    let frame = encode(item)?;
    let len = u32::try_from(frame.len())
        .map_err(|_| EngineError::Io("snapshot item too large".into()))?;
    out.write_all(&len.to_be_bytes()).map_err(io)?;
    out.write_all(&frame).map_err(io)
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::Io(format!("snapshot file: {e}"))
}

/// Reads checked items one at a time.
pub struct ItemReader<R> {
    input: R,
}

impl<R: Read> ItemReader<R> {
    pub fn new(input: R) -> Self {
        Self { input }
    }

    /// The next item, or `None` at the end of the input.
    pub fn next_item(&mut self) -> Result<Option<Item>, EngineError> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.input
            .read_exact(&mut body)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    EngineError::Corruption("snapshot: truncated item".into())
                }
                _ => io(e),
            })?;
        decode::<Item>(&body, "snapshot item").map(Some)
    }
}

/// Reads every item of a snapshot, checking its header and trailer: calls
/// `f` for each item between them, in order.
pub fn read_items(
    input: impl Read,
    mut f: impl FnMut(Item) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mut reader = ItemReader::new(input);
    let bad = |m: &str| EngineError::Corruption(format!("snapshot: {m}"));
    match reader.next_item()? {
        Some(header @ Item::Header { .. }) => f(header)?,
        _ => return Err(bad("missing header")),
    }
    let mut records = 0u64;
    loop {
        match reader.next_item()? {
            None => return Err(bad("missing trailer (truncated)")),
            Some(Item::Trailer { records: n }) if n == records => break,
            Some(Item::Trailer { records: n }) => {
                return Err(bad(&format!("trailer counts {n} records, found {records}")))
            }
            Some(Item::Header { .. }) => return Err(bad("second header")),
            Some(item) => {
                if matches!(item, Item::Record { .. }) {
                    records += 1;
                }
                f(item)?;
            }
        }
    }
    match reader.next_item()? {
        None => Ok(()),
        Some(_) => Err(bad("data after the trailer")),
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
/// the applied state, log clock, data range (`range`, unless the view
/// stores a narrower one), sessions, dedup rows and meta
/// map all come from the same point in time, because apply writes them in one batch. The
/// expiry index is not sent: install rebuilds it from the records.
pub fn build(
    engine: &Arc<dyn Engine>,
    replica: ReplicaId,
    shard: ShardId,
    range: Option<(u64, u64)>,
    out: &mut impl Write,
) -> Result<AppliedState, EngineError> {
    let view = engine.snapshot();
    let applied = read_applied(view.as_ref(), replica)?;
    // The range as of the view: a split since `range` was read narrowed it.
    let range = match range {
        Some(range) => Some(super::range::read_range(view.as_ref(), replica)?.unwrap_or(range)),
        None => None,
    };
    write_item(
        out,
        &Item::Header {
            shard,
            range,
            applied: applied.clone(),
        },
    )?;
    let ms = ttl::read_clock(view.as_ref(), replica)?;
    write_item(out, &Item::Clock { ms })?;
    let mut records = 0u64;
    if let Some((first, last)) = range {
        let (start, end) = keys::data_range(first, last);
        view.for_each(Cf::Data, &start, &end, &mut |k, v| {
            write_item(
                out,
                &Item::Record {
                    data_key: k.to_vec(),
                    stored: v.to_vec(),
                },
            )?;
            records += 1;
            Ok(true)
        })?;
    }
    for row in dedup::stored_rows(view.as_ref(), replica)? {
        write_item(out, &Item::Dedup(row))?;
    }
    for session in sessions::stored_sessions(view.as_ref(), replica)? {
        let StoredSession {
            client_id,
            floor,
            last_active_ms,
            rows,
        } = session;
        let mut chunks = rows.chunks(SESSION_ROWS_PER_ITEM).peekable();
        // A session without rows still goes, as one item.
        loop {
            let part = StoredSession {
                client_id,
                floor,
                last_active_ms,
                rows: chunks.next().unwrap_or_default().to_vec(),
            };
            write_item(out, &Item::Session(part))?;
            if chunks.peek().is_none() {
                break;
            }
        }
    }
    if let Some(map) = view.get(
        Cf::ApplyState,
        &keys::tagged_key(replica, apply_tag::META, &[]),
    )? {
        write_item(out, &Item::Meta { map })?;
    }
    write_item(out, &Item::Trailer { records })?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let header = Item::Header {
            shard: ShardId(1),
            range: None,
            applied: AppliedState::default(),
        };
        write_item(&mut out, &header).unwrap();
        write_item(
            &mut out,
            &Item::Record {
                data_key: b"k".to_vec(),
                stored: b"v".to_vec(),
            },
        )
        .unwrap();
        write_item(&mut out, &Item::Trailer { records: 1 }).unwrap();
        out
    }

    fn count(data: &[u8]) -> Result<usize, EngineError> {
        let mut n = 0;
        read_items(data, |_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    #[test]
    fn a_truncated_or_flipped_snapshot_is_rejected() {
        let out = sample();
        assert_eq!(count(&out).unwrap(), 2);
        assert!(count(&out[..out.len() - 3]).is_err());
        let mut flipped = out.clone();
        flipped[12] ^= 0x40;
        assert!(count(&flipped).is_err());
        let mut extra = out.clone();
        extra.extend_from_slice(&out);
        assert!(count(&extra).is_err(), "data after the trailer");
    }
}
