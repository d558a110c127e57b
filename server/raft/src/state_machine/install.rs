//! Installing a snapshot in bounded memory, by ingestion, and so that a
//! crash at any point is finished at the next start (docs/design/elastic.md,
//! "Snapshots that scale").
//!
//! 1. **Stage**: one pass over the file checks it whole (every item's and
//!    record's crc32, header, trailer, shard, hash range, key order) and
//!    writes its records to a bulk load (SST files). Nothing of the store
//!    has changed yet, so a refused snapshot changes nothing.
//! 2. **Keep**: the caller makes the file the replica's kept snapshot,
//!    synced, before anything changes.
//! 3. **Mark** the replica `installing` with the snapshot's index, synced.
//! 4. **Replace**: delete the replica's data range, dedup rows, sessions and
//!    expiry index; ingest the staged files; index the records that expire
//!    (a second pass over the file, in bounded batches); then one synced
//!    batch writes the applied state, sessions, dedup rows, cluster map and
//!    log clock, and clears the mark.
//!
//! A replica found marked at start redoes steps 1 and 4 from its kept
//! snapshot, which step 2 made durable before the mark: so its state is
//! never a mix of the old state and the snapshot's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atoll_proto::v1::ClusterMap;
use atoll_proto::{ReplicaId, ShardId};
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{BulkLoad, Cf, Engine, EngineError, Record, WriteBatch};

use super::dedup::DedupRow;
use super::range::write_range;
use super::snapshot::{self, Item};
use super::{meta, ttl, AppliedState, DedupTable, SessionTable, ShardKind, SnapshotStore};
use super::{StateMachine, StoredSession};
use crate::codec::encode;
use crate::types::SnapshotMeta;

/// Expiry index rows written per batch while indexing an installed
/// snapshot.
const EXPIRY_ROWS_PER_BATCH: usize = 16 * 1024;

/// The replica a snapshot is installed into.
pub(super) struct Target {
    pub engine: Arc<dyn Engine>,
    pub replica: ReplicaId,
    pub shard: ShardId,
    pub kind: ShardKind,
    /// Where staged SST files are written (the snapshot directory).
    pub staging: PathBuf,
}

/// What an install leaves for the state machine to take over.
pub(super) struct Installed {
    pub applied: AppliedState,
    /// What the replica serves now: the snapshot's range.
    pub kind: ShardKind,
    pub map: Option<ClusterMap>,
    pub clock_ms: u64,
    /// The snapshot's index: the log before it is not this replica's.
    pub since: u64,
}

/// A checked snapshot whose records are staged, not yet part of the store.
pub(super) struct Staged<'a> {
    load: Box<dyn BulkLoad + 'a>,
    /// The hash range the snapshot covers.
    range: Option<(u64, u64)>,
    dedup_rows: Vec<DedupRow>,
    sessions: BTreeMap<u64, StoredSession>,
    map: Option<Vec<u8>>,
    clock_ms: Option<u64>,
    records: u64,
    /// When staging began, and how long it took.
    started: std::time::Instant,
    staging: std::time::Duration,
    /// Whether any record expires: only then is the file read again to
    /// index them.
    expiring: bool,
}

fn refused(what: String) -> EngineError {
    EngineError::Corruption(format!("snapshot refused: {what}"))
}

fn rewind(file: &mut File) -> Result<(), EngineError> {
    file.seek(SeekFrom::Start(0))
        .map(|_| ())
        .map_err(|e| EngineError::Io(format!("snapshot file: {e}")))
}

fn installing_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::INSTALLING, &[])
}

impl Target {
    /// Step 1: checks the snapshot in `file` whole and stages its records.
    pub fn stage(&self, file: &mut File) -> Result<Staged<'_>, EngineError> {
        rewind(file)?;
        let started = std::time::Instant::now();
        let ours = self.kind.range();
        let mut staged = Staged {
            load: self.engine.bulk_load(Cf::Data, &self.staging)?,
            range: ours,
            dedup_rows: Vec::new(),
            sessions: BTreeMap::new(),
            map: None,
            clock_ms: None,
            records: 0,
            started,
            staging: std::time::Duration::ZERO,
            expiring: false,
        };
        let mut last_key: Option<Vec<u8>> = None;
        snapshot::read_items(BufReader::new(&mut *file), |item| {
            match item {
                Item::Header { shard, .. } if shard != self.shard => {
                    return Err(refused(format!(
                        "it is of shard {shard}, offered to a replica of shard {}",
                        self.shard
                    )));
                }
                // The snapshot's range is the replica's, or narrower: a
                // split the replica has not applied yet narrowed it.
                Item::Header { range: theirs, .. } if !within(theirs, ours) => {
                    return Err(refused(format!(
                        "it covers hash range {theirs:?}, this replica owns {ours:?}"
                    )));
                }
                Item::Header { range: theirs, .. } => staged.range = theirs,
                Item::Record { data_key, stored } => {
                    let range = staged.range;
                    let owned = keys::split_data_key(&data_key).is_some_and(|(hash, _)| {
                        range.is_some_and(|(first, last)| (first..=last).contains(&hash))
                    });
                    if !owned {
                        return Err(refused(format!(
                            "a record's key lies outside hash range {range:?}"
                        )));
                    }
                    if last_key.as_ref().is_some_and(|last| *last >= data_key) {
                        return Err(refused("its records are out of key order".into()));
                    }
                    let record = Record::decode(&stored)?;
                    staged.expiring |= record.expires_at_ms != 0;
                    staged.records += 1;
                    staged.load.put(&data_key, &stored)?;
                    last_key = Some(data_key);
                }
                Item::Dedup(row) => staged.dedup_rows.push(row),
                // A session comes in items of at most a few rows each.
                Item::Session(part) => match staged.sessions.entry(part.client_id) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(part);
                    }
                    std::collections::btree_map::Entry::Occupied(mut whole) => {
                        whole.get_mut().rows.extend(part.rows);
                    }
                },
                Item::Meta { map } => staged.map = Some(map),
                Item::Clock { ms } => staged.clock_ms = Some(ms),
                Item::Trailer { .. } => {}
            }
            Ok(())
        })?;
        staged.staging = started.elapsed();
        Ok(staged)
    }

    /// Step 3: marks the replica as installing the snapshot at `meta`.
    pub fn mark(&self, meta: &SnapshotMeta) -> Result<(), EngineError> {
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        let mut batch = WriteBatch::new();
        batch.put(
            Cf::ApplyState,
            installing_key(self.replica),
            index.to_be_bytes().to_vec(),
        );
        self.engine.write(batch, true)
    }

    /// Step 4: replaces the replica's state with the staged snapshot read
    /// from `file`, and clears the mark.
    pub fn replace(
        &self,
        staged: Staged<'_>,
        meta: &SnapshotMeta,
        file: &mut File,
    ) -> Result<Installed, EngineError> {
        let old_clock = ttl::read_clock(self.engine.snapshot().as_ref(), self.replica)?;
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        let mut clear = WriteBatch::new();
        if let Some((first, last)) = self.kind.range() {
            let (start, end) = keys::data_range(first, last);
            clear.delete_range(Cf::Data, start, end);
        }
        DedupTable::clear(self.replica, &mut clear);
        SessionTable::clear(self.replica, &mut clear);
        ttl::clear_index(self.replica, &mut clear);
        self.engine.write(clear, true)?;

        let Staged {
            load,
            range,
            dedup_rows,
            sessions,
            map,
            clock_ms,
            records,
            started,
            staging,
            expiring,
        } = staged;
        let bytes = load.staged_bytes();
        load.commit()?;
        if expiring {
            self.index_expiring(file)?;
        }

        let mut batch = WriteBatch::new();
        DedupTable::restore(self.replica, &dedup_rows, &mut batch)?;
        for session in sessions.values() {
            SessionTable::restore(self.replica, session, &mut batch)?;
        }
        let map = match map {
            Some(map) => Some(meta::restore(self.replica, &map, &mut batch)?),
            None => None,
        };
        // The snapshot covers a longer prefix of the log than this replica
        // applied, so its clock is not behind ours; max keeps the clock
        // monotonic even for an older snapshot without one.
        let clock_ms = old_clock.max(clock_ms.unwrap_or(0));
        ttl::write_clock(self.replica, clock_ms, &mut batch);
        let kind = match range {
            Some(range) => {
                write_range(self.replica, range, index, &mut batch);
                ShardKind::Data {
                    first: range.0,
                    last: range.1,
                }
            }
            None => ShardKind::Meta,
        };
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        batch.put(
            Cf::ApplyState,
            keys::tagged_key(self.replica, apply_tag::APPLIED, &[]),
            encode(&applied)?,
        );
        batch.delete(Cf::ApplyState, installing_key(self.replica));
        self.engine.write(batch, true)?;
        tracing::info!(
            replica = %self.replica,
            index,
            records,
            staged_bytes = bytes,
            staging_ms = staging.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "installed a snapshot"
        );
        Ok(Installed {
            applied,
            kind,
            map,
            clock_ms,
            since: index,
        })
    }

    /// Writes the expiry index rows of the snapshot's records, a bounded
    /// batch at a time (the file was checked whole by [`Target::stage`]).
    fn index_expiring(&self, file: &mut File) -> Result<(), EngineError> {
        rewind(file)?;
        let mut batch = WriteBatch::new();
        snapshot::read_items(BufReader::new(&mut *file), |item| {
            if let Item::Record { data_key, stored } = item {
                let record = Record::decode(&stored)?;
                if record.expires_at_ms != 0 {
                    let row = keys::expiry_key(self.replica, record.expires_at_ms, &data_key);
                    batch.put(Cf::ApplyState, row, Vec::new());
                }
                if batch.len() >= EXPIRY_ROWS_PER_BATCH {
                    self.engine.write(std::mem::take(&mut batch), false)?;
                }
            }
            Ok(())
        })?;
        // Made durable by the final, synced batch (one WAL).
        self.engine.write(batch, false)
    }

    /// Finishes an install that a crash interrupted: the replica is marked,
    /// and its kept snapshot is the one it was installing.
    pub fn finish_interrupted(&self, snapshots: &SnapshotStore) -> Result<(), EngineError> {
        let Some(mark) = self
            .engine
            .get(Cf::ApplyState, &installing_key(self.replica))?
        else {
            return Ok(());
        };
        let index = <[u8; 8]>::try_from(mark.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| EngineError::Corruption("installing mark of a wrong size".into()))?;
        let kept = snapshots.current_file();
        let Some((meta, path)) =
            kept.filter(|(meta, _)| meta.last_log_id.as_ref().map_or(0, |id| id.index) == index)
        else {
            return Err(EngineError::Corruption(format!(
                "replica {} was installing the snapshot at index {index}, which is not kept",
                self.replica
            )));
        };
        tracing::warn!(
            replica = %self.replica,
            index,
            "finishing a snapshot install that was interrupted"
        );
        let mut file = open(&path)?;
        let staged = self.stage(&mut file)?;
        self.replace(staged, &meta, &mut file)?;
        Ok(())
    }
}

/// Whether the range `theirs` lies within `ours` (both none: the meta
/// shard).
fn within(theirs: Option<(u64, u64)>, ours: Option<(u64, u64)>) -> bool {
    match (theirs, ours) {
        (Some((first, last)), Some((our_first, our_last))) => {
            our_first <= first && first <= last && last <= our_last
        }
        (None, None) => true,
        _ => false,
    }
}

fn open(path: &Path) -> Result<File, EngineError> {
    File::open(path).map_err(|e| EngineError::Io(format!("open {}: {e}", path.display())))
}

impl StateMachine {
    pub(super) fn install_target(&self) -> Target {
        Target {
            engine: self.engine.clone(),
            replica: self.replica,
            shard: self.shard,
            kind: self.kind,
            staging: self.snapshots.dir().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_storage::MemEngine;
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::command::{Command, Request, WriteId};
    use crate::types::{Entry, EntryPayload, LeaderId, LogId};

    const WHOLE: ShardKind = ShardKind::Data {
        first: 0,
        last: u64::MAX,
    };

    fn put(index: u64, key: &str, ttl_ms: u64) -> Entry {
        let leader = LeaderId {
            term: 1,
            node_id: ReplicaId(1),
        };
        Entry {
            log_id: LogId::new(leader, index),
            payload: EntryPayload::Normal(Request {
                write_id: WriteId::Untracked,
                now_ms: 1_000,
                command: Command::Put {
                    key: key.into(),
                    value: b"v".to_vec(),
                    ttl_ms,
                },
            }),
        }
    }

    fn stored(engine: &Arc<dyn Engine>, key: &str) -> bool {
        let found = engine.get(Cf::Data, &keys::data_key(key.as_bytes()));
        found.unwrap().is_some()
    }

    #[tokio::test]
    async fn an_install_interrupted_after_its_mark_is_finished_at_the_next_start() {
        let source: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let source_dir = tempfile::tempdir().unwrap();
        let mut leader =
            StateMachine::open(ReplicaId(1), ShardId(1), WHOLE, source, source_dir.path()).unwrap();
        let entries = vec![put(1, "a", 0), put(2, "b", 60_000), put(3, "c", 0)];
        leader.apply_entries(entries).unwrap();
        let snap = leader.get_current_snapshot().await.unwrap().unwrap();

        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            StateMachine::open(ReplicaId(2), ShardId(1), WHOLE, engine.clone(), dir.path()).unwrap()
        };
        let mut follower = open();
        follower.apply_entries(vec![put(1, "old", 0)]).unwrap();

        // Steps 1 to 3, then a crash before step 4.
        let mut file = snap.snapshot.file.into_std().await;
        let target = follower.install_target();
        let staged = target.stage(&mut file).unwrap();
        follower.snapshots.keep_copy(&mut file, &snap.meta).unwrap();
        target.mark(&snap.meta).unwrap();
        drop(staged);
        drop(follower);
        assert!(stored(&engine, "old"), "nothing replaced before the crash");

        let mut reopened = open();
        let (applied, _) = reopened.applied_state().await.unwrap();
        assert_eq!(applied, snap.meta.last_log_id);
        assert!(!stored(&engine, "old"), "the old state is gone");
        for key in ["a", "b", "c"] {
            assert!(stored(&engine, key), "{key} installed");
        }
        assert!(
            ttl::has_due(engine.as_ref(), ReplicaId(2), 1_000 + 60_000).unwrap(),
            "the expiry index is rebuilt"
        );
        let mark = engine.get(Cf::ApplyState, &installing_key(ReplicaId(2)));
        assert_eq!(mark.unwrap(), None, "the mark is cleared");
    }

    #[tokio::test]
    async fn a_marked_replica_without_its_snapshot_refuses_to_open() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            engine: engine.clone(),
            replica: ReplicaId(2),
            shard: ShardId(1),
            kind: WHOLE,
            staging: dir.path().to_owned(),
        };
        target.mark(&SnapshotMeta::default()).unwrap();
        let opened = StateMachine::open(ReplicaId(2), ShardId(1), WHOLE, engine, dir.path());
        let refused = opened.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("which is not kept"), "{refused}");
    }
}
