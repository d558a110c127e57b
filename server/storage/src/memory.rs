//! An in-memory [`Engine`] for tests: a sorted map per column family.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::engine::{BatchOp, BulkLoad, Cf, Engine, EngineSnapshot, KvPair, Visitor, WriteBatch};
use crate::error::{EngineError, Result};

type Tables = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory engine. Cloning shares the same store.
#[derive(Clone, Debug, Default)]
pub struct MemEngine {
    tables: Arc<RwLock<Tables>>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Tables>> {
        self.tables.read().map_err(|_| EngineError::Closed)
    }
}

fn range_pairs<'a>(
    table: Option<&'a BTreeMap<Vec<u8>, Vec<u8>>>,
    start: &[u8],
    end: &[u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end.to_vec())
    };
    let valid = end.is_empty() || start < end;
    let bounds = (Bound::Included(start.to_vec()), upper);
    table
        .filter(move |_| valid)
        .into_iter()
        .flat_map(move |t| t.range(bounds.clone()))
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read()?.get(&cf).and_then(|t| t.get(key)).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<()> {
        let mut tables = self.tables.write().map_err(|_| EngineError::Closed)?;
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => {
                    tables.entry(cf).or_default().insert(key, value);
                }
                BatchOp::Delete { cf, key } => {
                    tables.entry(cf).or_default().remove(&key);
                }
                BatchOp::DeleteRange { cf, start, end } => {
                    let table = tables.entry(cf).or_default();
                    let doomed: Vec<Vec<u8>> = range_pairs(Some(table), &start, &end)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        table.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        Ok(())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let tables = self.read()?;
        let pairs = range_pairs(tables.get(&cf), start, end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(pairs)
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>> {
        let tables = self.read()?;
        let last = range_pairs(tables.get(&cf), start, end)
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone()));
        Ok(last)
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot + '_> {
        let copy = self.read().map(|t| t.clone()).unwrap_or_default();
        Box::new(MemSnapshot { tables: copy })
    }

    /// The bytes of the keys and values in the range.
    fn approximate_bytes(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<u64> {
        let tables = self.read()?;
        let bytes = range_pairs(tables.get(&cf), start, end)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        Ok(bytes)
    }

    /// Stages rows in memory: this engine holds everything there anyway.
    fn bulk_load(&self, cf: Cf, _dir: &Path) -> Result<Box<dyn BulkLoad + '_>> {
        Ok(Box::new(MemBulkLoad {
            engine: self,
            cf,
            rows: WriteBatch::new(),
            last: None,
            bytes: 0,
        }))
    }
}

struct MemBulkLoad<'a> {
    engine: &'a MemEngine,
    cf: Cf,
    rows: WriteBatch,
    last: Option<Vec<u8>>,
    bytes: u64,
}

impl BulkLoad for MemBulkLoad<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return Err(EngineError::Io("bulk load: keys out of order".into()));
        }
        self.last = Some(key.to_vec());
        self.bytes += (key.len() + value.len()) as u64;
        self.rows.put(self.cf, key.to_vec(), value.to_vec());
        Ok(())
    }

    fn staged_bytes(&self) -> u64 {
        self.bytes
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.engine.write(self.rows, true)
    }
}

struct MemSnapshot {
    tables: Tables,
}

impl EngineSnapshot for MemSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables.get(&cf).and_then(|t| t.get(key)).cloned())
    }

    fn for_each(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut Visitor<'_>) -> Result<()> {
        for (k, v) in range_pairs(self.tables.get(&cf), start, end) {
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_range_removes_only_the_half_open_range() {
        let engine = MemEngine::new();
        let mut batch = WriteBatch::new();
        for k in [b"a", b"b", b"c", b"d"] {
            batch.put(Cf::Data, k.to_vec(), b"v".to_vec());
        }
        batch.delete_range(Cf::Data, b"b".to_vec(), b"d".to_vec());
        engine.write(batch, true).unwrap();
        let left: Vec<_> = engine
            .scan(Cf::Data, b"", b"\xff", 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![b"a".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn snapshot_does_not_see_later_writes() {
        let engine = MemEngine::new();
        let snap = engine.snapshot();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Data, b"k".to_vec(), b"v".to_vec());
        engine.write(batch, false).unwrap();
        assert_eq!(snap.get(Cf::Data, b"k").unwrap(), None);
        assert_eq!(engine.get(Cf::Data, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
