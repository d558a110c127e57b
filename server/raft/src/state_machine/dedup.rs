//! The bounded dedup table (Raft thesis section 6.3): the first outcome of
//! every recent client write, so a retried write is applied at most once and
//! answered with the first result.
//!
//! Rows live in `apply_state` (`replica ++ 'd' ++ client ++ seq`) and are
//! written in the same batch as the write they describe. Eviction is decided
//! per entry from the entry's own timestamp and the row count, so every
//! replica keeps exactly the same rows.

use std::collections::{HashMap, VecDeque};

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::command::{Outcome, WriteId};

/// Most rows kept per replica.
pub const MAX_ROWS: usize = 100_000;
/// Rows older than this (by entry time) are dropped.
pub const ROW_TTL_MS: u64 = 10 * 60 * 1000;

/// One remembered write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRow {
    pub id: WriteId,
    pub index: u64,
    pub now_ms: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
pub struct DedupTable {
    rows: HashMap<WriteId, DedupRow>,
    /// Ids in log order, oldest first.
    order: VecDeque<WriteId>,
}

fn row_key(replica: ReplicaId, id: WriteId) -> Vec<u8> {
    let mut rest = [0u8; 16];
    rest[..8].copy_from_slice(&id.client_id.to_be_bytes());
    rest[8..].copy_from_slice(&id.seq.to_be_bytes());
    keys::tagged_key(replica, apply_tag::DEDUP, &rest)
}

impl DedupTable {
    /// Loads a replica's rows.
    pub fn load(engine: &dyn Engine, replica: ReplicaId) -> Result<Self, EngineError> {
        let (start, end) = keys::tag_range(replica, apply_tag::DEDUP);
        let mut rows: Vec<DedupRow> = engine
            .scan(Cf::ApplyState, &start, &end, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(v, "dedup row"))
            .collect::<Result<_, _>>()?;
        rows.sort_by_key(|r| r.index);
        let mut table = Self::default();
        for row in rows {
            table.order.push_back(row.id);
            table.rows.insert(row.id, row);
        }
        Ok(table)
    }

    pub fn get(&self, id: &WriteId) -> Option<&Outcome> {
        self.rows.get(id).map(|r| &r.outcome)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row, oldest first (for snapshots).
    pub fn rows(&self) -> impl Iterator<Item = &DedupRow> {
        self.order.iter().filter_map(|id| self.rows.get(id))
    }

    /// Remembers `row`, then evicts what is too old or too many, recording
    /// both in `batch`.
    pub fn insert(
        &mut self,
        replica: ReplicaId,
        row: DedupRow,
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        let now_ms = row.now_ms;
        batch.put(Cf::ApplyState, row_key(replica, row.id), encode(&row)?);
        self.order.push_back(row.id);
        self.rows.insert(row.id, row);
        while let Some(oldest) = self.order.front().copied() {
            let too_old = self
                .rows
                .get(&oldest)
                .is_none_or(|r| r.now_ms.saturating_add(ROW_TTL_MS) < now_ms);
            if self.rows.len() <= MAX_ROWS && !too_old {
                break;
            }
            self.order.pop_front();
            self.rows.remove(&oldest);
            batch.delete(Cf::ApplyState, row_key(replica, oldest));
        }
        Ok(())
    }

    /// Deletes every row of `replica` (before installing a snapshot).
    pub fn clear(replica: ReplicaId, batch: &mut WriteBatch) {
        let (start, end) = keys::tag_range(replica, apply_tag::DEDUP);
        batch.delete_range(Cf::ApplyState, start, end);
    }

    /// Writes `row` for `replica` without eviction (snapshot install).
    pub fn restore_row(
        replica: ReplicaId,
        row: &DedupRow,
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        batch.put(Cf::ApplyState, row_key(replica, row.id), encode(row)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use atoll_storage::MemEngine;

    use super::*;

    fn row(seq: u64, now_ms: u64) -> DedupRow {
        DedupRow {
            id: WriteId { client_id: 1, seq },
            index: seq,
            now_ms,
            outcome: Outcome::Written { version: seq },
        }
    }

    #[test]
    fn rows_survive_reload_and_old_ones_are_evicted() {
        let engine = MemEngine::new();
        let r = ReplicaId(9);
        let mut table = DedupTable::default();
        let mut batch = WriteBatch::new();
        table.insert(r, row(1, 0), &mut batch).unwrap();
        table.insert(r, row(2, 1), &mut batch).unwrap();
        engine.write(batch, false).unwrap();
        let loaded = DedupTable::load(&engine, r).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded.get(&WriteId {
                client_id: 1,
                seq: 2
            }),
            Some(&Outcome::Written { version: 2 })
        );

        let mut table = loaded;
        let mut batch = WriteBatch::new();
        table.insert(r, row(3, ROW_TTL_MS + 5), &mut batch).unwrap();
        engine.write(batch, false).unwrap();
        let loaded = DedupTable::load(&engine, r).unwrap();
        assert_eq!(loaded.len(), 1, "rows older than the TTL are gone");
    }
}
