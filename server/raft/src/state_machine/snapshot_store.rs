//! A replica's snapshot files (docs/design/elastic.md, "Snapshots that
//! scale").
//!
//! The last snapshot a replica built or installed is kept as
//! `<dir>/r<replica>-<index>.snap` and handed out for every send until a
//! newer one replaces it, so a send never waits for a build (which would
//! stop the replica applying meanwhile) and a restart builds nothing. A
//! file being written is a `*.tmp` until it is complete and synced; one
//! left by a crash is deleted when the replica opens.
//!
//! The cost is disk: a replica keeps one copy of its state besides RocksDB.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use atoll_proto::ReplicaId;
use atoll_storage::EngineError;
use tempfile::{NamedTempFile, TempPath};

use super::snapshot::{Item, ItemReader};
use crate::types::{Snapshot, SnapshotMeta};

/// What a snapshot is held in: an open file, and, for one received and not
/// yet installed, its temporary path (deleted if the install fails).
#[derive(Debug)]
pub struct SnapshotFile {
    pub file: tokio::fs::File,
    pub temp: Option<TempPath>,
}

impl SnapshotFile {
    /// A file that is kept elsewhere, or never kept.
    pub fn of(file: std::fs::File) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            temp: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Kept {
    meta: SnapshotMeta,
    path: PathBuf,
}

/// The snapshot files of one replica.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    replica: ReplicaId,
    current: Mutex<Option<Kept>>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Io(format!("{what} {}: {e}", path.display()))
}

/// The meta of a snapshot file, from its header.
fn read_meta(path: &Path) -> Result<SnapshotMeta, EngineError> {
    let file = std::fs::File::open(path).map_err(|e| io("open", path, e))?;
    match ItemReader::new(std::io::BufReader::new(file)).next_item()? {
        Some(Item::Header { applied, .. }) => Ok(SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
        }),
        _ => Err(EngineError::Corruption(format!(
            "snapshot file {} has no header",
            path.display()
        ))),
    }
}

fn index_of(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.as_ref().map_or(0, |id| id.index)
}

impl SnapshotStore {
    /// The store of `replica` in `dir`: finds the newest complete snapshot
    /// file and deletes every other file of the replica.
    pub fn open(dir: &Path, replica: ReplicaId) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let prefix = format!("r{}-", replica.get());
        let mut newest: Option<Kept> = None;
        let entries = std::fs::read_dir(dir).map_err(|e| io("list", dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io("list", dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.as_deref().is_some_and(|n| n.starts_with(&prefix)) {
                continue;
            }
            let meta = match path.extension().is_some_and(|e| e == "snap") {
                true => read_meta(&path).inspect_err(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "dropping a snapshot file");
                }),
                false => Err(EngineError::Io("incomplete".into())),
            };
            let stale = match meta {
                Ok(meta)
                    if newest
                        .as_ref()
                        .is_none_or(|n| index_of(&n.meta) < index_of(&meta)) =>
                {
                    newest.replace(Kept { meta, path }).map(|old| old.path)
                }
                _ => Some(path),
            };
            if let Some(stale) = stale {
                std::fs::remove_file(&stale).map_err(|e| io("delete", &stale, e))?;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            replica,
            current: Mutex::new(newest),
        })
    }

    fn kept(&self) -> Option<Kept> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// The kept snapshot, opened for reading.
    pub async fn current(&self) -> Result<Option<Snapshot>, EngineError> {
        let Some(kept) = self.kept() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&kept.path)
            .await
            .map_err(|e| io("open", &kept.path, e))?;
        Ok(Some(Snapshot {
            meta: kept.meta,
            snapshot: SnapshotFile { file, temp: None },
        }))
    }

    /// The meta and path of the kept snapshot.
    pub fn current_file(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.kept().map(|k| (k.meta, k.path))
    }

    /// The directory of the snapshot files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The meta of the kept snapshot.
    pub fn current_meta(&self) -> Option<SnapshotMeta> {
        self.kept().map(|k| k.meta)
    }

    /// Deletes the kept snapshot.
    pub fn forget(&self) -> Result<(), EngineError> {
        let old = match self.current.lock() {
            Ok(mut current) => current.take(),
            Err(_) => return Err(EngineError::Io("snapshot store poisoned".into())),
        };
        if let Some(old) = old {
            std::fs::remove_file(&old.path).map_err(|e| io("delete", &old.path, e))?;
        }
        Ok(())
    }

    /// A new file to write a snapshot of this replica into.
    pub fn new_file(&self) -> Result<NamedTempFile, EngineError> {
        tempfile::Builder::new()
            .prefix(&format!("r{}-", self.replica.get()))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(|e| io("create a snapshot file in", &self.dir, e))
    }

    /// Keeps a synced copy of the snapshot in `file`, one that is not in
    /// this directory already (see [`SnapshotStore::keep`]).
    pub fn keep_copy(
        &self,
        file: &mut std::fs::File,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotMeta, PathBuf), EngineError> {
        use std::io::{Seek, SeekFrom};
        let mut copy = self.new_file()?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| std::io::copy(file, &mut copy))
            .and_then(|_| copy.as_file().sync_all())
            .map_err(|e| io("copy a snapshot into", &self.dir, e))?;
        self.keep(copy.into_temp_path(), meta)
    }

    /// Keeps the complete snapshot at `temp`, with `meta`, in place of the
    /// current one, unless the current one is newer (a build and an
    /// install that raced): then `temp` is deleted. Returns the meta and
    /// path of the snapshot kept. The file must be synced.
    pub fn keep(
        &self,
        temp: TempPath,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotMeta, PathBuf), EngineError> {
        if let Some(newer) = self.kept().filter(|k| index_of(&k.meta) > index_of(meta)) {
            drop(temp);
            return Ok((newer.meta, newer.path));
        }
        let name = format!("r{}-{}.snap", self.replica.get(), index_of(meta));
        let path = self.dir.join(name);
        temp.persist(&path)
            .map_err(|e| io("keep", &path, e.error))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", &self.dir, e))?;
        let kept = Kept {
            meta: meta.clone(),
            path: path.clone(),
        };
        let old = match self.current.lock() {
            Ok(mut current) => current.replace(kept),
            Err(_) => return Err(EngineError::Io("snapshot store poisoned".into())),
        };
        // A send still reading the old file keeps it open; its data stays
        // until it is closed.
        if let Some(old) = old.filter(|old| old.path != path) {
            std::fs::remove_file(&old.path).map_err(|e| io("delete", &old.path, e))?;
        }
        Ok((meta.clone(), path))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use atoll_proto::ShardId;

    use super::super::snapshot::write_item;
    use super::super::AppliedState;
    use super::*;
    use crate::types::{LeaderId, LogId};

    fn meta(index: u64) -> SnapshotMeta {
        let leader = LeaderId {
            term: 1,
            node_id: ReplicaId(1),
        };
        SnapshotMeta {
            last_log_id: Some(LogId::new(leader, index)),
            ..SnapshotMeta::default()
        }
    }

    /// Writes a snapshot file holding only a header for `meta`.
    fn write(store: &SnapshotStore, meta: &SnapshotMeta) -> PathBuf {
        let mut file = store.new_file().unwrap();
        let header = Item::Header {
            shard: ShardId(1),
            range: None,
            applied: AppliedState {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            },
        };
        write_item(&mut file, &header).unwrap();
        file.flush().unwrap();
        store.keep(file.into_temp_path(), meta).unwrap().1
    }

    #[test]
    fn the_newest_kept_snapshot_survives_a_reopen_and_the_rest_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), ReplicaId(7)).unwrap();
        assert!(store.current_meta().is_none());
        let first = write(&store, &meta(10));
        let second = write(&store, &meta(20));
        assert!(!first.exists(), "a newer snapshot replaces the older");
        let late = write(&store, &meta(15));
        assert_eq!(late, second, "an older one never replaces a newer");
        assert_eq!(store.current_meta(), Some(meta(20)));
        // A crash while writing, and another replica's file.
        let crashed = store.new_file().unwrap().into_temp_path().keep().unwrap();
        let other = SnapshotStore::open(dir.path(), ReplicaId(8)).unwrap();
        let others = write(&other, &meta(5));

        let reopened = SnapshotStore::open(dir.path(), ReplicaId(7)).unwrap();
        assert_eq!(reopened.current_meta(), Some(meta(20)));
        assert!(second.exists());
        assert!(!crashed.exists(), "an incomplete file is deleted");
        assert!(others.exists(), "other replicas' files are theirs");
    }
}
