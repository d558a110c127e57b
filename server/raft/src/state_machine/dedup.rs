//! The bounded dedup table of earlier versions: the first outcome of every
//! recent client write they identified by a [`LegacyWriteId`], so replaying
//! a log they wrote gives the answers it gave then. Client writes now go
//! through [sessions](super::sessions); this table takes rows only from
//! such old entries, and its rows age out by the log clock.
//!
//! Eviction is decided per row from the entry's own timestamp and the row
//! count, oldest row first, so every replica keeps exactly the same rows in
//! the same order.
//!
//! Rows are stored in `apply_state` in groups: the rows one `apply` call
//! added are one value, `replica ++ 'g' ++ ordinal BE` (the ordinal of its
//! first row; rows are numbered in insertion order), written in the same
//! batch as the writes they describe. One insert per apply call rather than
//! one per write: every memtable insert is a skiplist search. Each group also
//! records the *floor*, the ordinal of the oldest row still live, so a
//! reader keeps exactly the rows the table kept; a group is deleted once all
//! its rows are below the floor. Rows stored one per key (`'d'`, by earlier
//! versions) are read too, as the newest rows, and rewritten as a group by
//! the next apply.

use std::collections::{HashMap, VecDeque};

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::command::{LegacyWriteId, Outcome};

/// Most rows kept per replica.
pub const MAX_ROWS: usize = 100_000;
/// Rows older than this (by entry time) are dropped.
pub const ROW_TTL_MS: u64 = 10 * 60 * 1000;
/// Most rows in one stored group written by a snapshot install.
const RESTORE_GROUP_ROWS: usize = 4096;

/// One remembered write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRow {
    pub id: LegacyWriteId,
    pub index: u64,
    pub now_ms: u64,
    pub outcome: Outcome,
}

/// A stored group of rows, as read.
#[derive(Deserialize)]
struct Group {
    /// Ordinal of the oldest live row when the group was written.
    floor: u64,
    rows: Vec<DedupRow>,
}

/// A stored group of rows, as written (the same encoding as [`Group`]).
#[derive(Serialize)]
struct GroupRef<'a> {
    floor: u64,
    rows: Vec<&'a DedupRow>,
}

#[derive(Debug, Default)]
pub struct DedupTable {
    rows: HashMap<LegacyWriteId, DedupRow>,
    /// Live rows in insertion order, oldest first, with their ordinals.
    order: VecDeque<(u64, LegacyWriteId)>,
    /// Ordinal of the next row inserted.
    next: u64,
    /// Ordinal of the first row not stored yet (`next` when all are).
    unsaved: u64,
    /// Stored groups, oldest first: ordinal of the first row, row count.
    groups: VecDeque<(u64, u64)>,
    /// Rows stored one per key are still on disk; the next flush deletes
    /// them (they are among the unsaved rows).
    legacy: bool,
}

fn group_key(replica: ReplicaId, first: u64) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::DEDUP_GROUP, &first.to_be_bytes())
}

fn group_ordinal(key: &[u8]) -> Result<u64, EngineError> {
    key.get(9..17)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EngineError::Corruption(format!("dedup group key {key:?}")))
}

/// What a view holds of one replica's rows.
#[derive(Default)]
struct Stored {
    /// Live rows, oldest first, with their ordinals.
    rows: Vec<(u64, DedupRow)>,
    groups: VecDeque<(u64, u64)>,
    /// Ordinal after the last stored row.
    next: u64,
    /// Ordinal of the first row stored one per key, if there are any.
    legacy_from: Option<u64>,
}

fn read_stored(view: &dyn EngineSnapshot, replica: ReplicaId) -> Result<Stored, EngineError> {
    let mut groups = Vec::new();
    let (start, end) = keys::tag_range(replica, apply_tag::DEDUP_GROUP);
    view.for_each(Cf::ApplyState, &start, &end, &mut |k, v| {
        groups.push((group_ordinal(k)?, decode::<Group>(v, "dedup group")?));
        Ok(true)
    })?;
    let floor = groups.last().map_or(0, |(_, g)| g.floor);
    let mut stored = Stored::default();
    for (first, group) in groups {
        stored.groups.push_back((first, group.rows.len() as u64));
        stored.next = first + group.rows.len() as u64;
        let live = (first..)
            .zip(group.rows)
            .filter(|(ordinal, _)| *ordinal >= floor);
        stored.rows.extend(live);
    }
    let mut legacy: Vec<DedupRow> = Vec::new();
    let (start, end) = keys::tag_range(replica, apply_tag::DEDUP);
    view.for_each(Cf::ApplyState, &start, &end, &mut |_, v| {
        legacy.push(decode(v, "dedup row")?);
        Ok(true)
    })?;
    if !legacy.is_empty() {
        legacy.sort_by_key(|r| r.index);
        stored.legacy_from = Some(stored.next);
        for row in legacy {
            stored.rows.push((stored.next, row));
            stored.next += 1;
        }
    }
    Ok(stored)
}

/// The live rows of `replica` in a view, oldest first (for snapshots).
pub fn stored_rows(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<Vec<DedupRow>, EngineError> {
    Ok(read_stored(view, replica)?
        .rows
        .into_iter()
        .map(|(_, row)| row)
        .collect())
}

impl DedupTable {
    /// Loads a replica's rows.
    pub fn load(engine: &dyn Engine, replica: ReplicaId) -> Result<Self, EngineError> {
        let stored = read_stored(engine.snapshot().as_ref(), replica)?;
        let mut table = Self {
            next: stored.next,
            unsaved: stored.legacy_from.unwrap_or(stored.next),
            groups: stored.groups,
            legacy: stored.legacy_from.is_some(),
            ..Self::default()
        };
        for (ordinal, row) in stored.rows {
            table.order.push_back((ordinal, row.id));
            table.rows.insert(row.id, row);
        }
        Ok(table)
    }

    pub fn get(&self, id: &LegacyWriteId) -> Option<&Outcome> {
        self.rows.get(id).map(|r| &r.outcome)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = &DedupRow> {
        self.order.iter().filter_map(|(_, id)| self.rows.get(id))
    }

    /// Ordinal of the oldest live row.
    fn floor(&self) -> u64 {
        self.order
            .front()
            .map_or(self.next, |(ordinal, _)| *ordinal)
    }

    /// Remembers `row`, then evicts what is too old or too many. Nothing
    /// is stored until [`flush`](Self::flush).
    pub fn insert(&mut self, row: DedupRow) {
        let now_ms = row.now_ms;
        self.order.push_back((self.next, row.id));
        self.next += 1;
        self.rows.insert(row.id, row);
        self.evict(now_ms);
    }

    /// Evicts the rows older than [`ROW_TTL_MS`] at log clock `now_ms`, and
    /// the oldest beyond [`MAX_ROWS`].
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(&(_, oldest)) = self.order.front() {
            let too_old = self
                .rows
                .get(&oldest)
                .is_none_or(|r| r.now_ms.saturating_add(ROW_TTL_MS) < now_ms);
            if self.rows.len() <= MAX_ROWS && !too_old {
                break;
            }
            self.order.pop_front();
            self.rows.remove(&oldest);
        }
    }

    /// Records in `batch` the rows inserted since the last flush, as one
    /// group, and deletes the groups whose rows are all evicted.
    pub fn flush(&mut self, replica: ReplicaId, batch: &mut WriteBatch) -> Result<(), EngineError> {
        if self.legacy {
            let (start, end) = keys::tag_range(replica, apply_tag::DEDUP);
            batch.delete_range(Cf::ApplyState, start, end);
            self.legacy = false;
        }
        // Evicted rows are the oldest, so the new live rows are the last
        // ones inserted, with consecutive ordinals.
        let unsaved = self.unsaved;
        let count = (self.order.iter().rev())
            .take_while(|(ordinal, _)| *ordinal >= unsaved)
            .count();
        let new: Vec<&DedupRow> = (self.order.range(self.order.len() - count..))
            .filter_map(|(_, id)| self.rows.get(id))
            .collect();
        let first = self.next - count as u64;
        if !new.is_empty() {
            let group = GroupRef {
                floor: self.floor(),
                rows: new,
            };
            batch.put(Cf::ApplyState, group_key(replica, first), encode(&group)?);
            self.groups.push_back((first, group.rows.len() as u64));
        }
        self.unsaved = self.next;
        let floor = self.floor();
        while let Some(&(first, count)) = self.groups.front() {
            if first + count > floor {
                break;
            }
            batch.delete(Cf::ApplyState, group_key(replica, first));
            self.groups.pop_front();
        }
        Ok(())
    }

    /// Deletes every row of `replica` (before installing a snapshot).
    pub fn clear(replica: ReplicaId, batch: &mut WriteBatch) {
        for tag in [apply_tag::DEDUP, apply_tag::DEDUP_GROUP] {
            let (start, end) = keys::tag_range(replica, tag);
            batch.delete_range(Cf::ApplyState, start, end);
        }
    }

    /// Writes `rows`, oldest first, as the whole table of `replica`
    /// (snapshot install, after [`clear`](Self::clear)).
    pub fn restore(
        replica: ReplicaId,
        rows: &[DedupRow],
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        for (n, chunk) in rows.chunks(RESTORE_GROUP_ROWS).enumerate() {
            let group = GroupRef {
                floor: 0,
                rows: chunk.iter().collect(),
            };
            let first = (n * RESTORE_GROUP_ROWS) as u64;
            batch.put(Cf::ApplyState, group_key(replica, first), encode(&group)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use atoll_storage::MemEngine;

    use super::*;

    fn row(seq: u64, now_ms: u64) -> DedupRow {
        DedupRow {
            id: LegacyWriteId { client_id: 1, seq },
            index: seq,
            now_ms,
            outcome: Outcome::Written { version: seq },
        }
    }

    /// Inserts `rows` as one apply call would, and stores them.
    fn apply(engine: &MemEngine, table: &mut DedupTable, r: ReplicaId, rows: &[DedupRow]) {
        let mut batch = WriteBatch::new();
        for row in rows {
            table.insert(row.clone());
        }
        table.flush(r, &mut batch).unwrap();
        engine.write(batch, false).unwrap();
    }

    fn ids(table: &DedupTable) -> Vec<u64> {
        table.rows().map(|r| r.id.seq).collect()
    }

    fn stored_groups(engine: &MemEngine, r: ReplicaId) -> usize {
        let (start, end) = keys::tag_range(r, apply_tag::DEDUP_GROUP);
        engine
            .scan(Cf::ApplyState, &start, &end, usize::MAX)
            .unwrap()
            .len()
    }

    #[test]
    fn rows_survive_reload_and_old_ones_are_evicted() {
        let engine = MemEngine::new();
        let r = ReplicaId(9);
        let mut table = DedupTable::default();
        apply(&engine, &mut table, r, &[row(1, 0), row(2, 1)]);
        let loaded = DedupTable::load(&engine, r).unwrap();
        assert_eq!(ids(&loaded), [1, 2]);
        assert_eq!(
            loaded.get(&LegacyWriteId {
                client_id: 1,
                seq: 2
            }),
            Some(&Outcome::Written { version: 2 })
        );

        let mut table = loaded;
        apply(&engine, &mut table, r, &[row(3, ROW_TTL_MS + 5)]);
        assert_eq!(ids(&table), [3], "rows older than the TTL are gone");
        assert_eq!(ids(&DedupTable::load(&engine, r).unwrap()), [3]);
        assert_eq!(stored_groups(&engine, r), 1, "the evicted group is deleted");
    }

    #[test]
    fn a_reload_keeps_exactly_the_rows_the_table_kept() {
        let engine = MemEngine::new();
        let r = ReplicaId(4);
        let mut table = DedupTable::default();
        // Entry times need not grow: a later leader's clock may be behind.
        apply(
            &engine,
            &mut table,
            r,
            &[row(1, 10), row(2, 20), row(3, 30)],
        );
        apply(
            &engine,
            &mut table,
            r,
            &[row(4, 5), row(5, ROW_TTL_MS + 15)],
        );
        assert_eq!(ids(&table), [2, 3, 4, 5]);
        apply(&engine, &mut table, r, &[row(6, 0)]);
        apply(&engine, &mut table, r, &[]);
        let loaded = DedupTable::load(&engine, r).unwrap();
        assert_eq!(ids(&loaded), ids(&table));
        assert_eq!(stored_rows(engine.snapshot().as_ref(), r).unwrap().len(), 5);

        // Rows 1-3 went in one group: it stays until its last row goes.
        let mut table = loaded;
        apply(&engine, &mut table, r, &[row(7, ROW_TTL_MS + 25)]);
        assert_eq!(ids(&table), [3, 4, 5, 6, 7]);
        assert_eq!(stored_groups(&engine, r), 4);
        apply(&engine, &mut table, r, &[row(8, ROW_TTL_MS + 40)]);
        assert_eq!(ids(&table), [5, 6, 7, 8]);
        assert_eq!(
            stored_groups(&engine, r),
            4,
            "rows 1-3 are gone, and their group"
        );
        assert_eq!(ids(&DedupTable::load(&engine, r).unwrap()), ids(&table));
    }

    #[test]
    fn rows_stored_one_per_key_are_read_and_rewritten_as_a_group() {
        let engine = MemEngine::new();
        let r = ReplicaId(2);
        let mut batch = WriteBatch::new();
        for row in [row(2, 0), row(1, 0)] {
            let mut rest = [0u8; 16];
            rest[..8].copy_from_slice(&row.id.client_id.to_be_bytes());
            rest[8..].copy_from_slice(&row.id.seq.to_be_bytes());
            let key = keys::tagged_key(r, apply_tag::DEDUP, &rest);
            batch.put(Cf::ApplyState, key, encode(&row).unwrap());
        }
        engine.write(batch, false).unwrap();

        let mut table = DedupTable::load(&engine, r).unwrap();
        assert_eq!(ids(&table), [1, 2], "in log order");
        apply(&engine, &mut table, r, &[row(3, 1)]);
        let (start, end) = keys::tag_range(r, apply_tag::DEDUP);
        assert!(engine
            .scan(Cf::ApplyState, &start, &end, usize::MAX)
            .unwrap()
            .is_empty());
        assert_eq!(ids(&DedupTable::load(&engine, r).unwrap()), [1, 2, 3]);
    }

    #[test]
    fn a_restored_table_reloads_in_order() {
        let engine = MemEngine::new();
        let r = ReplicaId(3);
        let rows: Vec<DedupRow> = (0..(RESTORE_GROUP_ROWS as u64 + 10))
            .map(|seq| row(seq, 1))
            .collect();
        let mut batch = WriteBatch::new();
        DedupTable::clear(r, &mut batch);
        DedupTable::restore(r, &rows, &mut batch).unwrap();
        engine.write(batch, false).unwrap();
        let mut table = DedupTable::load(&engine, r).unwrap();
        assert_eq!(table.len(), rows.len());
        assert!(table.rows().eq(rows.iter()));
        apply(&engine, &mut table, r, &[row(1 << 20, 2)]);
        assert_eq!(DedupTable::load(&engine, r).unwrap().len(), rows.len() + 1);
    }
}
