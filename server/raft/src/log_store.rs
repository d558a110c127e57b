//! The Raft log of one replica, in the node's shared engine: entries in
//! `raft_log`, vote / committed / purged in `raft_state`.
//!
//! Appends are written unsynced (so readers see them at once) and reported
//! flushed only after the node's [`GroupCommitter`] has synced the WAL: one
//! fsync for the appends of every shard on the node.
//!
//! The latest entries are also kept in memory ([`EntryCache`]): a leader
//! sends each new entry to its followers right after appending it, and
//! reading it back from the engine (an iterator, a decode and a checksum
//! per entry, per follower) cost more than any other step of replication.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, state_tag};
use atoll_storage::{Cf, Engine, EngineError, GroupCommitter, WriteBatch};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{decode, encode, io_err};
use crate::types::{Entry, LogId, LogState, TypeConfig, Vote};

/// Most entries the cache of one replica holds. A follower that keeps up
/// needs the last few; one further behind is sent entries from the engine.
pub const CACHED_ENTRIES: usize = 64;
/// Most encoded bytes the cache of one replica holds (so a node's caches
/// take at most this much per replica); a single larger entry is not
/// cached.
pub const CACHED_BYTES: usize = 256 * 1024;

/// The newest entries of a log, in index order: always the log's tail
/// (its last entry is the log's last) or empty. Appends add to it,
/// truncation and purging remove from it as from the engine, and the
/// oldest entries go once it holds [`CACHED_ENTRIES`] or [`CACHED_BYTES`].
#[derive(Default)]
struct EntryCache {
    /// Each entry with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn push(&mut self, entry: Entry, size: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows || size > CACHED_BYTES {
            // Not the log's tail any more (or never cachable): start over.
            self.clear();
            if size > CACHED_BYTES {
                return;
            }
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > CACHED_ENTRIES || self.bytes > CACHED_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Removes the entries from index `first` on.
    fn truncate_from(&mut self, first: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= first)
        {
            self.pop_back();
        }
    }

    /// Removes the entries up to index `last`, inclusive.
    fn purge_to(&mut self, last: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= last)
        {
            self.pop_front();
        }
    }

    /// The entries `start..end`, if the cache holds all of them.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// One replica's log. Cloning gives a reader over the same log.
#[derive(Clone)]
pub struct LogStore {
    replica: ReplicaId,
    engine: Arc<dyn Engine>,
    committer: Arc<GroupCommitter>,
    cache: Arc<Mutex<EntryCache>>,
    /// The committed log id openraft last gave [`save_committed`], not yet
    /// written: it goes into the next append's batch rather than into a
    /// RocksDB write of its own (one per apply, on every replica).
    ///
    /// [`save_committed`]: RaftLogStorage::save_committed
    unsaved_committed: Arc<Mutex<Option<Option<LogId>>>>,
    /// Test-only and unsafe: report appends flushed before the WAL sync.
    ack_before_fsync: bool,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("replica", &self.replica)
            .finish()
    }
}

impl LogStore {
    pub fn new(
        replica: ReplicaId,
        engine: Arc<dyn Engine>,
        committer: Arc<GroupCommitter>,
    ) -> Self {
        Self {
            replica,
            engine,
            committer,
            cache: Arc::default(),
            unsaved_committed: Arc::default(),
            ack_before_fsync: false,
        }
    }

    /// Entries held in memory.
    pub fn cached_entries(&self) -> usize {
        self.cache().entries.len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsaved_committed(&self) -> std::sync::MutexGuard<'_, Option<Option<LogId>>> {
        self.unsaved_committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the committed id openraft last saved, if it is not written yet,
    /// to `batch`.
    fn put_unsaved_committed(&self, batch: &mut WriteBatch) -> Result<(), std::io::Error> {
        if let Some(committed) = self.unsaved_committed().take() {
            batch.put(
                Cf::RaftState,
                self.state_key(state_tag::COMMITTED),
                encode(&committed).map_err(io_err)?,
            );
        }
        Ok(())
    }

    /// Test-only and unsafe: report appends durable before they are.
    pub fn ack_before_fsync(mut self, on: bool) -> Self {
        self.ack_before_fsync = on;
        self
    }

    fn state_key(&self, tag: u8) -> Vec<u8> {
        keys::tagged_key(self.replica, tag, &[])
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
    ) -> Result<Option<T>, EngineError> {
        match self.engine.get(Cf::RaftState, &self.state_key(tag))? {
            Some(bytes) => decode(&bytes, "raft state").map(Some),
            None => Ok(None),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, EngineError> {
        Ok(self
            .read_state::<Option<LogId>>(state_tag::PURGED)?
            .flatten())
    }

    fn log_end(&self) -> Vec<u8> {
        keys::replica_range(self.replica).1
    }

    /// Writes the Raft state of a replica that starts from an applied log
    /// id `at` without its log (a split's child, docs/design/elastic.md):
    /// its log is purged up to `at`, which is committed, and its vote is
    /// for itself in `at`'s term, not committed, so its first election is
    /// for a later term and every entry it appends sorts after `at`.
    pub fn seed(replica: ReplicaId, at: LogId, batch: &mut WriteBatch) -> Result<(), EngineError> {
        let key = |tag| keys::tagged_key(replica, tag, &[]);
        let vote = Vote::new(at.leader_id.term, replica);
        batch.put(Cf::RaftState, key(state_tag::VOTE), encode(&vote)?);
        batch.put(Cf::RaftState, key(state_tag::PURGED), encode(&Some(at))?);
        batch.put(Cf::RaftState, key(state_tag::COMMITTED), encode(&Some(at))?);
        Ok(())
    }

    /// Deletes every row of this replica from `raft_log` and `raft_state`
    /// (when the replica is removed from the node).
    pub fn destroy(&self, batch: &mut WriteBatch) {
        let (start, end) = keys::replica_range(self.replica);
        batch.delete_range(Cf::RaftLog, start.clone(), end.clone());
        batch.delete_range(Cf::RaftState, start, end);
    }
}

fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    Some((start, end))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = end.and_then(|end| self.cache().get(start, end)) {
            return Ok(entries);
        }
        let start_key = keys::log_key(self.replica, start);
        let end_key = match end {
            Some(end) => keys::log_key(self.replica, end),
            None => self.log_end(),
        };
        let rows = self
            .engine
            .scan(Cf::RaftLog, &start_key, &end_key, usize::MAX)
            .map_err(io_err)?;
        rows.iter()
            .map(|(_, v)| decode::<Entry>(v, "log entry").map_err(io_err))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.read_state(state_tag::VOTE).map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState, std::io::Error> {
        let last_purged_log_id = self.last_purged().map_err(io_err)?;
        let (start, end) = keys::replica_range(self.replica);
        let last = self
            .engine
            .last_in_range(Cf::RaftLog, &start, &end)
            .map_err(io_err)?;
        let last_log_id = match last {
            Some((_, v)) => Some(decode::<Entry>(&v, "log entry").map_err(io_err)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(
            Cf::RaftState,
            self.state_key(state_tag::VOTE),
            encode(vote).map_err(io_err)?,
        );
        self.engine.write(batch, true).map_err(io_err)
    }

    /// Kept in memory until the next append or purge writes it. A saved
    /// committed id only lets a restarted replica re-apply entries it had
    /// not applied yet; an older one (or none) is safe, since openraft
    /// starts from the later of it and the state machine's applied id, and
    /// the state machine writes its applied id with every apply.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        *self.unsaved_committed() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        if let Some(committed) = *self.unsaved_committed() {
            return Ok(committed);
        }
        Ok(self
            .read_state::<Option<LogId>>(state_tag::COMMITTED)
            .map_err(io_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        self.put_unsaved_committed(&mut batch)?;
        let mut appended = Vec::new();
        for entry in entries {
            let key = keys::log_key(self.replica, entry.log_id.index);
            let bytes = encode(&entry).map_err(io_err)?;
            appended.push((entry, bytes.len()));
            batch.put(Cf::RaftLog, key, bytes);
        }
        self.engine.write(batch, false).map_err(io_err)?;
        {
            let mut cache = self.cache();
            for (entry, size) in appended {
                cache.push(entry, size);
            }
        }
        if self.ack_before_fsync {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.committer.after_sync(move |res| {
            callback.io_completed(res.map_err(io_err));
        });
        Ok(())
    }

    /// Deletes every entry after `last_log_id` (all of them if `None`).
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let first_deleted = match last_log_id {
            Some(id) => match id.index.checked_add(1) {
                Some(next) => next,
                None => return Ok(()),
            },
            None => 0,
        };
        // Out of the cache first: a reader must not find an entry the
        // engine no longer has.
        self.cache().truncate_from(first_deleted);
        let mut batch = WriteBatch::new();
        batch.delete_range(
            Cf::RaftLog,
            keys::log_key(self.replica, first_deleted),
            self.log_end(),
        );
        self.engine.write(batch, true).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::new();
        self.put_unsaved_committed(&mut batch)?;
        let (start, _) = keys::replica_range(self.replica);
        // Record the purge point first in the batch: the deletion and the new
        // purge point land together.
        batch.put(
            Cf::RaftState,
            self.state_key(state_tag::PURGED),
            encode(&Some(log_id)).map_err(io_err)?,
        );
        match log_id.index.checked_add(1) {
            Some(next) => batch.delete_range(Cf::RaftLog, start, keys::log_key(self.replica, next)),
            None => batch.delete_range(Cf::RaftLog, start, self.log_end()),
        }
        self.cache().purge_to(log_id.index);
        self.engine.write(batch, false).map_err(io_err)
    }
}
