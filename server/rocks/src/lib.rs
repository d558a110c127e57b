//! [`RocksEngine`]: the node's one RocksDB instance, with one column family
//! per [`Cf`]. This is the only crate that builds RocksDB's C++ code.

use std::path::{Path, PathBuf};

use atoll_storage::{
    BatchOp, BulkLoad, Cf, Engine, EngineError, EngineSnapshot, KvPair, Result, Visitor, WriteBatch,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, ErrorKind, IngestExternalFileOptions,
    IteratorMode, Options, ReadOptions, SnapshotWithThreadMode, SstFileWriter, WriteOptions, DB,
};

/// Tuning knobs for the RocksDB instance.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Shared block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// Size of each column family's memtable (RocksDB's default, 64 MiB).
    /// Every write inserts into a skiplist of this size: 8 MiB took 8-21%
    /// less CPU per write on the bench machine, but open-loop rounds then
    /// had p99 spikes of 150-260 ms that are not explained yet
    /// (`benches/README.md`, item 10).
    pub write_buffer_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 256 << 20,
            background_jobs: 2,
            write_buffer_bytes: 64 << 20,
        }
    }
}

/// A RocksDB-backed [`Engine`].
pub struct RocksEngine {
    db: DB,
    /// The options each column family was opened with, in [`Cf::ALL`]
    /// order: SST files written for a bulk load use them too.
    cf_options: Vec<Options>,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.db.path())
            .finish()
    }
}

fn io_error(e: rocksdb::Error) -> EngineError {
    match e.kind() {
        ErrorKind::Corruption => EngineError::Corruption(e.to_string()),
        _ => EngineError::Io(e.to_string()),
    }
}

/// An exclusive upper bound above every key we store (keys are < 8 KiB), for
/// ranges whose `end` is empty (unbounded).
fn upper_bound(end: &[u8]) -> Vec<u8> {
    if end.is_empty() {
        vec![0xff; 8 * 1024 + 16]
    } else {
        end.to_vec()
    }
}

/// Read options of a range read. Ranges of `data` are scans (ScanAll,
/// Scan, snapshots) that read each block once: they bypass the block
/// cache, so a scan of a large shard neither grows the node's memory nor
/// evicts the blocks point reads use.
fn range_read_options(cf: Cf, start: &[u8], end: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.fill_cache(cf != Cf::Data);
    opts.set_iterate_lower_bound(start.to_vec());
    if !end.is_empty() {
        opts.set_iterate_upper_bound(end.to_vec());
    }
    opts
}

impl RocksEngine {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(options.background_jobs);
        db_opts.set_paranoid_checks(true);
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let cf_options: Vec<Options> = Cf::ALL
            .iter()
            .map(|_| {
                let mut cf_opts = Options::default();
                cf_opts.set_block_based_table_factory(&table);
                cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
                cf_opts.set_write_buffer_size(options.write_buffer_bytes);
                cf_opts
            })
            .collect();
        let cfs = (Cf::ALL.iter().zip(&cf_options))
            .map(|(cf, opts)| ColumnFamilyDescriptor::new(cf.name(), opts.clone()));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(io_error)?;
        Ok(Self { db, cf_options })
    }

    fn cf_options(&self, cf: Cf) -> Result<&Options> {
        let at = Cf::ALL.iter().position(|c| *c == cf);
        at.and_then(|i| self.cf_options.get(i))
            .ok_or_else(|| EngineError::Io(format!("column family {} is missing", cf.name())))
    }

    fn cf(&self, cf: Cf) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| EngineError::Io(format!("column family {} is missing", cf.name())))
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(io_error)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => wb.put_cf(self.cf(cf)?, key, value),
                BatchOp::Delete { cf, key } => wb.delete_cf(self.cf(cf)?, key),
                BatchOp::DeleteRange { cf, start, end } => {
                    wb.delete_range_cf(self.cf(cf)?, start, upper_bound(&end))
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(wb, &opts).map_err(io_error)
    }

    fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(io_error)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let iter = self.db.iterator_cf_opt(
            self.cf(cf)?,
            range_read_options(cf, start, end),
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(io_error)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>> {
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(cf)?, range_read_options(cf, start, end));
        iter.seek_to_last();
        if iter.valid() {
            if let (Some(k), Some(v)) = (iter.key(), iter.value()) {
                return Ok(Some((k.to_vec(), v.to_vec())));
            }
        }
        iter.status().map_err(io_error)?;
        Ok(None)
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        Box::new(RocksSnapshot {
            engine: self,
            snap: self.db.snapshot(),
        })
    }

    fn approximate_bytes(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<u64> {
        let end = upper_bound(end);
        let range = rocksdb::Range::new(start, &end);
        let sizes = self.db.get_approximate_sizes_cf(self.cf(cf)?, &[range]);
        Ok(sizes.first().copied().unwrap_or(0))
    }

    fn bulk_load(&self, cf: Cf, dir: &Path) -> Result<Box<dyn BulkLoad + '_>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Io(format!("create {}: {e}", dir.display())))?;
        Ok(Box::new(RocksBulkLoad {
            engine: self,
            cf,
            options: self.cf_options(cf)?,
            dir: dir.to_owned(),
            writer: None,
            files: Vec::new(),
            staged: 0,
        }))
    }
}

/// Largest SST file a bulk load writes before it starts another.
const SST_FILE_BYTES: u64 = 64 << 20;

/// A bulk load staged in SST files of at most [`SST_FILE_BYTES`], written
/// with the column family's own options and ingested in one call. Memory
/// is one file's block buffer, whatever the load's size.
struct RocksBulkLoad<'a> {
    engine: &'a RocksEngine,
    cf: Cf,
    options: &'a Options,
    dir: PathBuf,
    writer: Option<SstFileWriter<'a>>,
    files: Vec<PathBuf>,
    /// Bytes in files already finished.
    staged: u64,
}

impl RocksBulkLoad<'_> {
    /// Finishes the file being written, if any.
    fn finish_file(&mut self) -> Result<()> {
        if let Some(mut writer) = self.writer.take() {
            writer.finish().map_err(io_error)?;
            self.staged += writer.file_size();
        }
        Ok(())
    }
}

impl BulkLoad for RocksBulkLoad<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self
            .writer
            .as_ref()
            .is_some_and(|w| w.file_size() >= SST_FILE_BYTES)
        {
            self.finish_file()?;
        }
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let path = self.dir.join(format!(
                    "ingest-{}-{}.sst",
                    std::process::id(),
                    NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                let writer = SstFileWriter::create(self.options);
                writer.open(&path).map_err(io_error)?;
                self.files.push(path);
                self.writer.insert(writer)
            }
        };
        writer.put(key, value).map_err(io_error)
    }

    fn staged_bytes(&self) -> u64 {
        self.staged + self.writer.as_ref().map_or(0, |w| w.file_size())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finish_file()?;
        if self.files.is_empty() {
            return Ok(());
        }
        let mut opts = IngestExternalFileOptions::default();
        // Linked into the database, not copied.
        opts.set_move_files(true);
        let cf = self.engine.cf(self.cf)?;
        self.engine
            .db
            .ingest_external_file_cf_opts(cf, &opts, self.files.iter().collect())
            .map_err(io_error)
    }
}

/// Numbers the files of bulk loads, so two loads never share a name.
static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for RocksBulkLoad<'_> {
    /// Deletes the staged files: after a commit, the links RocksDB left.
    fn drop(&mut self) {
        drop(self.writer.take());
        for file in &self.files {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %file.display(), error = %e, "could not delete a staged SST file");
                }
            }
        }
    }
}

struct RocksSnapshot<'a> {
    engine: &'a RocksEngine,
    snap: SnapshotWithThreadMode<'a, DB>,
}

impl EngineSnapshot for RocksSnapshot<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get_cf(self.engine.cf(cf)?, key).map_err(io_error)
    }

    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        let iter = self.snap.iterator_cf_opt(
            self.engine.cf(cf)?,
            range_read_options(cf, start, end),
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(io_error)?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, RocksEngine) {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path(), &RocksOptions::default()).unwrap();
        (dir, engine)
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = RocksEngine::open(dir.path(), &RocksOptions::default()).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(Cf::RaftLog, b"k".to_vec(), b"v".to_vec());
            engine.write(batch, false).unwrap();
            engine.sync_wal().unwrap();
        }
        let engine = RocksEngine::open(dir.path(), &RocksOptions::default()).unwrap();
        assert_eq!(engine.get(Cf::RaftLog, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn scans_are_bounded_and_ordered() {
        let (_dir, engine) = open();
        let mut batch = WriteBatch::new();
        for k in [&b"a"[..], b"b", b"c", b"d"] {
            batch.put(Cf::Data, k.to_vec(), k.to_vec());
        }
        engine.write(batch, false).unwrap();
        let keys = |v: Vec<KvPair>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(engine.scan(Cf::Data, b"b", b"d", 10).unwrap()),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(keys(engine.scan(Cf::Data, b"b", b"", 10).unwrap()).len(), 3);
        assert_eq!(
            engine
                .last_in_range(Cf::Data, b"a", b"c")
                .unwrap()
                .unwrap()
                .0,
            b"b".to_vec()
        );
        assert_eq!(engine.last_in_range(Cf::Data, b"x", b"").unwrap(), None);
    }

    #[test]
    fn unbounded_delete_range_clears_the_tail() {
        let (_dir, engine) = open();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Data, vec![0xff; 100], b"v".to_vec());
        batch.put(Cf::Data, b"a".to_vec(), b"v".to_vec());
        batch.delete_range(Cf::Data, b"b".to_vec(), Vec::new());
        engine.write(batch, false).unwrap();
        assert_eq!(engine.scan(Cf::Data, b"", b"", 10).unwrap().len(), 1);
    }

    #[test]
    fn snapshot_is_point_in_time() {
        let (_dir, engine) = open();
        let snap = engine.snapshot();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Data, b"k".to_vec(), b"v".to_vec());
        engine.write(batch, false).unwrap();
        let mut seen = 0;
        snap.for_each(Cf::Data, b"", b"", &mut |_, _| {
            seen += 1;
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, 0);
    }
}
