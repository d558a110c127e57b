//! The engine trait: the few operations the replicas of a node need from the
//! store they share.

use std::path::Path;

use crate::error::Result;

/// Column families (DESIGN section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// `hash BE ++ key` -> framed record.
    Data,
    /// `replica BE ++ index BE` -> framed log entry.
    RaftLog,
    /// `replica BE ++ tag` -> vote, committed, purged.
    RaftState,
    /// `replica BE ++ tag ...` -> last applied, membership, dedup rows, meta.
    ApplyState,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 4] = [Cf::Data, Cf::RaftLog, Cf::RaftState, Cf::ApplyState];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Data => "data",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::ApplyState => "apply_state",
        }
    }
}

/// One mutation in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes `[start, end)` (an empty `end` is unbounded).
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Mutations applied atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put { cf, key, value });
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete { cf, key });
    }

    pub fn delete_range(&mut self, cf: Cf, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(BatchOp::DeleteRange { cf, start, end });
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A key and its raw stored value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A node's store. Ranges are half-open, `[start, end)`, and an empty `end`
/// means "no upper bound". Every method is blocking; callers on an async runtime keep
/// calls short (point reads, bounded scans) or move them to a blocking thread.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically. The batch is visible to readers when this
    /// returns; it is durable when `sync` is true, or after a later
    /// [`Engine::sync_wal`].
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()>;

    /// Makes every write that has returned so far durable (one fsync).
    fn sync_wal(&self) -> Result<()>;

    /// Up to `limit` pairs of `[start, end)` in ascending key order.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>>;

    /// The greatest pair in `[start, end)`.
    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>>;

    /// A consistent point-in-time view.
    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_>;

    /// Roughly how many bytes `[start, end)` of `cf` takes on disk (RocksDB:
    /// its SST files, not what is still in memtables). For decisions that
    /// weigh sizes, never for accounting.
    fn approximate_bytes(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<u64>;

    /// Starts a bulk load of sorted rows into `cf`, staged in files under
    /// `dir` (RocksDB: SST files, ingested whole). Nothing is visible, and
    /// nothing of the store changes, until [`BulkLoad::commit`]; dropping
    /// the load discards what it staged. Staged files' names begin with
    /// `ingest-`: a caller may delete such files that a crash left in `dir`.
    fn bulk_load(&self, cf: Cf, dir: &Path) -> Result<Box<dyn BulkLoad + '_>>;
}

/// Sorted rows on their way into one column family in one step, without
/// holding them in memory (see [`Engine::bulk_load`]).
pub trait BulkLoad {
    /// Stages a row. Keys must strictly increase.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Bytes staged so far.
    fn staged_bytes(&self) -> u64;

    /// Adds every staged row to the store at once. A staged row replaces a
    /// stored one with the same key; other stored rows stay, so a caller
    /// replacing a range deletes it first.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Called for each pair of a range; returns whether to go on.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A point-in-time view of an [`Engine`].
pub trait EngineSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Calls `f` for every pair of `[start, end)` in ascending order, until it
    /// returns `Ok(false)` or an error.
    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut Visitor<'_>) -> Result<()>;
}
