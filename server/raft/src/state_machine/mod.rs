//! The replicated state machine of one replica: key-value data for data
//! shards, the cluster map for the meta shard. State lives in the node's
//! engine; applying a group of entries is one write batch that also records
//! the last applied log id, so the state is always consistent with it.

mod apply;
mod dedup;
mod install;
mod meta;
pub mod range;
pub mod sessions;
pub mod snapshot;
mod snapshot_store;
mod split;
pub mod ttl;

use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use atoll_proto::v1::ClusterMap;
use atoll_proto::{ReplicaId, ShardId};
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, WriteBatch};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

pub use self::dedup::{DedupRow, DedupTable};
pub use self::meta::{read_cluster_map, read_node_map, store_node_map};
pub use self::range::OwnedRange;
use self::sessions::Verdict;
pub use self::sessions::{SessionTable, StoredSession};
pub use self::snapshot_store::{SnapshotFile, SnapshotStore};
use crate::codec::{encode, io_err};
use crate::command::{write_version, Command, Outcome, Request, WriteId, WRITES_PER_ENTRY};
use crate::types::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The last applied log id and membership, stored with every applied batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// What a replica serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardKind {
    /// A data shard owning the hash range `[first, last]`.
    Data { first: u64, last: u64 },
    /// The meta shard (cluster map).
    Meta,
}

impl ShardKind {
    fn range(self) -> Option<(u64, u64)> {
        match self {
            ShardKind::Data { first, last } => Some((first, last)),
            ShardKind::Meta => None,
        }
    }
}

/// One replica's state machine.
pub struct StateMachine {
    replica: ReplicaId,
    shard: ShardId,
    /// What the replica serves as of its applied state ([`range`]), and
    /// where that is published for the request path once it has landed.
    kind: ShardKind,
    owned: Arc<OwnedRange>,
    engine: Arc<dyn Engine>,
    /// The last snapshot built or installed.
    snapshots: Arc<SnapshotStore>,
    applied: AppliedState,
    /// Outcomes of the writes of earlier versions' log entries.
    dedup: DedupTable,
    sessions: SessionTable,
    /// Meta shard: the stored cluster map (none yet before bootstrap).
    cluster_map: Option<ClusterMap>,
    /// The log clock ([`ttl`]), and where it is published for the leader's
    /// [`ttl::Stamper`].
    clock_ms: u64,
    published_clock: Arc<ttl::SharedClock>,
}

impl StateMachine {
    /// Opens the state machine of `replica`, loading its applied state.
    pub fn open(
        replica: ReplicaId,
        shard: ShardId,
        kind: ShardKind,
        engine: Arc<dyn Engine>,
        snapshot_dir: &Path,
    ) -> Result<Self, EngineError> {
        let snapshots = SnapshotStore::open(snapshot_dir, replica)?;
        let kind = range::current_kind(engine.snapshot().as_ref(), replica, kind)?;
        let target = install::Target {
            engine: engine.clone(),
            replica,
            shard,
            kind,
            staging: snapshot_dir.to_owned(),
        };
        target.finish_interrupted(&snapshots)?;
        let kind = range::current_kind(engine.snapshot().as_ref(), replica, kind)?;
        let applied = snapshot::read_applied(engine.snapshot().as_ref(), replica)?;
        let dedup = DedupTable::load(engine.as_ref(), replica)?;
        let sessions = SessionTable::load(engine.as_ref(), replica)?;
        let cluster_map = read_cluster_map(engine.as_ref(), replica)?;
        if let Some(range) = kind.range() {
            ttl::build_index_once(engine.as_ref(), replica, range)?;
        }
        let clock_ms = ttl::read_clock(engine.snapshot().as_ref(), replica)?;
        let applied_index = applied.last_applied.as_ref().map_or(0, |id| id.index);
        let since = range::read_since(engine.snapshot().as_ref(), replica, applied_index)?;
        // A kept snapshot is never ahead of the state it was built from or
        // installed into; one that is belongs to other data (a data dir
        // restored from elsewhere) and is dropped.
        if let Some(kept) = snapshots.current_meta() {
            if kept.last_log_id > applied.last_applied {
                tracing::warn!(
                    replica = %replica,
                    snapshot = ?kept.last_log_id,
                    applied = ?applied.last_applied,
                    "dropping a kept snapshot ahead of the applied state"
                );
                snapshots.forget()?;
            }
        }
        let snapshots = Arc::new(snapshots);
        Ok(Self {
            replica,
            shard,
            kind,
            owned: Arc::new(OwnedRange::new(kind, since)),
            engine,
            snapshots,
            applied,
            dedup,
            sessions,
            cluster_map,
            clock_ms,
            published_clock: Arc::new(ttl::SharedClock::new(clock_ms)),
        })
    }

    /// The applied log clock, kept current as entries apply.
    pub fn log_clock(&self) -> Arc<ttl::SharedClock> {
        self.published_clock.clone()
    }

    /// The range the replica owns, kept current as entries apply.
    pub fn owned_range(&self) -> Arc<OwnedRange> {
        self.owned.clone()
    }

    /// Deletes every row of a replica's state machine (its data range too).
    pub fn destroy(replica: ReplicaId, kind: ShardKind, batch: &mut WriteBatch) {
        let (start, end) = keys::replica_range(replica);
        batch.delete_range(Cf::ApplyState, start, end);
        if let Some((first, last)) = kind.range() {
            let (start, end) = keys::data_range(first, last);
            batch.delete_range(Cf::Data, start, end);
        }
    }

    fn applied_key(&self) -> Vec<u8> {
        keys::tagged_key(self.replica, apply_tag::APPLIED, &[])
    }

    /// Applies `entries` and returns their outcomes: a split alone in a
    /// batch of its own ([`split`]), the entries between splits in one
    /// write batch each.
    pub fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<Outcome>, EngineError> {
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut run = Vec::with_capacity(entries.len());
        for entry in entries {
            let EntryPayload::Normal(Request {
                command: Command::Split(split),
                now_ms,
                ..
            }) = &entry.payload
            else {
                run.push(entry);
                continue;
            };
            outcomes.extend(self.apply_run(std::mem::take(&mut run))?);
            outcomes.push(self.apply_split(entry.log_id, *now_ms, split)?);
        }
        outcomes.extend(self.apply_run(run)?);
        Ok(outcomes)
    }

    /// Applies `entries`, none of them a split, in one write batch.
    fn apply_run(&mut self, entries: Vec<Entry>) -> Result<Vec<Outcome>, EngineError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.engine.clone();
        let mut applier = apply::Applier::new(engine.as_ref(), self.replica, self.kind.range());
        let clock_before = self.clock_ms;
        // Whether any entry carried a stamp (blank and membership entries
        // do not).
        let mut stamped = false;
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id;
            self.applied.last_applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(Outcome::Done),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(log_id), m);
                    outcomes.push(Outcome::Done);
                }
                EntryPayload::Normal(req) => {
                    stamped = true;
                    // The clock never goes back, whatever the proposer's
                    // clock says (a new leader's may be behind).
                    self.clock_ms = self.clock_ms.max(req.now_ms);
                    self.dedup.evict(self.clock_ms);
                    let index = log_id.index;
                    let outcome = match &req.command {
                        Command::Group { writes } => Outcome::Group(
                            writes
                                .iter()
                                .enumerate()
                                .map(|(position, w)| {
                                    if position >= WRITES_PER_ENTRY {
                                        return Ok(Outcome::Rejected {
                                            reason: format!(
                                                "a group holds at most {WRITES_PER_ENTRY} writes"
                                            ),
                                        });
                                    }
                                    self.apply_write(
                                        &mut applier,
                                        index,
                                        write_version(index, position),
                                        w.write_id,
                                        &w.command,
                                    )
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        command => self.apply_write(
                            &mut applier,
                            index,
                            write_version(index, 0),
                            req.write_id,
                            command,
                        )?,
                    };
                    outcomes.push(outcome);
                }
            }
        }
        let mut batch = applier.batch;
        self.dedup.flush(self.replica, &mut batch)?;
        self.sessions.flush(&mut batch)?;
        if self.clock_ms != clock_before {
            ttl::write_clock(self.replica, self.clock_ms, &mut batch);
        }
        batch.put(Cf::ApplyState, self.applied_key(), encode(&self.applied)?);
        self.engine.write(batch, false)?;
        if stamped {
            self.published_clock.applied(self.clock_ms);
        }
        Ok(outcomes)
    }

    /// Applies one write of the entry at `index`, as `version`, at the log
    /// clock, unless its id shows it was applied before (then it answers
    /// with the first outcome) or its session refuses it.
    fn apply_write(
        &mut self,
        applier: &mut apply::Applier<'_>,
        index: u64,
        version: u64,
        write_id: WriteId,
        command: &Command,
    ) -> Result<Outcome, EngineError> {
        let now_ms = self.clock_ms;
        match write_id {
            WriteId::Untracked => self.apply_command(applier, version, command),
            WriteId::Legacy(id) => {
                if let Some(first) = self.dedup.get(&id) {
                    return Ok(first.clone());
                }
                let outcome = self.apply_command(applier, version, command)?;
                self.dedup.insert(DedupRow {
                    id,
                    index,
                    now_ms,
                    outcome: outcome.clone(),
                });
                Ok(outcome)
            }
            WriteId::Session(write) => match self.sessions.check(&write, now_ms) {
                Verdict::Refuse(refusal) => Ok(refusal),
                Verdict::Answer(first) => applier.answer_again(first),
                Verdict::Apply => {
                    let outcome = self.apply_command(applier, version, command)?;
                    self.sessions.record(&write, &outcome)?;
                    Ok(outcome)
                }
            },
        }
    }

    /// Applies one command, as `version`, at the log clock.
    fn apply_command(
        &mut self,
        applier: &mut apply::Applier<'_>,
        version: u64,
        command: &Command,
    ) -> Result<Outcome, EngineError> {
        let now_ms = self.clock_ms;
        Ok(match (command, self.kind) {
            (
                Command::SetClusterMap {
                    expected_version,
                    map,
                },
                ShardKind::Meta,
            ) => meta::apply_set_map(
                self.replica,
                &mut self.cluster_map,
                *expected_version,
                map,
                &mut applier.batch,
            ),
            (Command::Meta(command), ShardKind::Meta) => meta::apply_meta(
                self.replica,
                &mut self.cluster_map,
                command,
                &mut applier.batch,
            ),
            (_, ShardKind::Meta) => Outcome::Rejected {
                reason: "data commands go to data shards".into(),
            },
            (Command::ExpireDue { limit }, ShardKind::Data { .. }) => {
                applier.expire_due(now_ms, *limit)?
            }
            (_, ShardKind::Data { .. }) => applier.apply(version, now_ms, command)?,
        })
    }

    /// Takes over the state an install wrote.
    fn take_over(&mut self, installed: install::Installed) -> Result<(), EngineError> {
        self.applied = installed.applied;
        self.kind = installed.kind;
        self.owned.set(installed.kind, installed.since);
        if let Some(map) = installed.map {
            self.cluster_map = Some(map);
        }
        self.clock_ms = installed.clock_ms;
        self.published_clock.applied(installed.clock_ms);
        self.dedup = DedupTable::load(self.engine.as_ref(), self.replica)?;
        self.sessions = SessionTable::load(self.engine.as_ref(), self.replica)?;
        Ok(())
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            replica: self.replica,
            shard: self.shard,
            kind: self.kind,
            engine: self.engine.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// Builds snapshots from a consistent engine view, off the apply path, and
/// keeps the newest.
pub struct SnapshotBuilder {
    replica: ReplicaId,
    shard: ShardId,
    kind: ShardKind,
    engine: Arc<dyn Engine>,
    snapshots: Arc<SnapshotStore>,
}

/// A new, already unlinked file in `dir`.
pub fn snapshot_file(dir: &Path) -> Result<std::fs::File, EngineError> {
    tempfile::tempfile_in(dir)
        .map_err(|e| EngineError::Io(format!("snapshot file in {}: {e}", dir.display())))
}

const RECEIVED_PREFIX: &str = "recv-";
/// Files staged for ingestion ([`atoll_storage::BulkLoad`]) start so.
const STAGED_PREFIX: &str = "ingest-";

/// A new file in `dir` for a snapshot being received; deleted unless the
/// replica it is for keeps it after installing it.
pub fn received_snapshot_file(dir: &Path) -> Result<tempfile::NamedTempFile, EngineError> {
    tempfile::Builder::new()
        .prefix(RECEIVED_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| EngineError::Io(format!("snapshot file in {}: {e}", dir.display())))
}

/// Deletes the files of snapshots whose receipt or install a crash
/// interrupted.
pub fn clear_received_snapshots(dir: &Path) -> Result<(), EngineError> {
    let io = |e: std::io::Error| EngineError::Io(format!("snapshot dir {}: {e}", dir.display()));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let interrupted =
            name.is_some_and(|n| n.starts_with(RECEIVED_PREFIX) || n.starts_with(STAGED_PREFIX));
        if interrupted {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    Ok(())
}

impl SnapshotBuilder {
    async fn build(&self) -> Result<Snapshot, EngineError> {
        let (engine, replica, shard, range) = (
            self.engine.clone(),
            self.replica,
            self.shard,
            self.kind.range(),
        );
        let snapshots = self.snapshots.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || {
            let mut out = BufWriter::new(snapshots.new_file()?);
            let applied = snapshot::build(&engine, replica, shard, range, &mut out)?;
            let file = out
                .into_inner()
                .map_err(|e| EngineError::Io(e.to_string()))?;
            file.as_file()
                .sync_all()
                .map_err(|e| EngineError::Io(format!("sync a snapshot file: {e}")))?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
            };
            // The snapshot kept, which a racing install may have made newer.
            snapshots.keep(file.into_temp_path(), &meta)
        })
        .await
        .map_err(|e| EngineError::Io(format!("snapshot task: {e}")))??;
        let file = std::fs::File::open(&path)
            .map_err(|e| EngineError::Io(format!("open {}: {e}", path.display())))?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile::of(file),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        self.build().await.map_err(io_err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    /// Applies the entries in one write batch, then answers their callers.
    async fn apply<S>(&mut self, entries: S) -> Result<(), std::io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        let (entries, responders): (Vec<_>, Vec<_>) =
            entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let outcomes = self.apply_entries(entries).map_err(io_err)?;
        for (responder, outcome) in responders.into_iter().zip(outcomes) {
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let SnapshotFile { file, temp } = snapshot;
        let mut file = file.into_std().await;
        let target = self.install_target();
        let snapshots = self.snapshots.clone();
        let meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let staged = target.stage(&mut file)?;
            // Kept, synced, before anything changes: a crash from here on
            // finishes the install from it at the next start.
            let (kept, _) = match temp {
                Some(temp) => snapshots.keep(temp, &meta)?,
                None => snapshots.keep_copy(&mut file, &meta)?,
            };
            if kept != meta {
                return Err(EngineError::Io(format!(
                    "a snapshot newer than the one installed is kept: {:?}",
                    kept.last_log_id
                )));
            }
            target.mark(&meta)?;
            target.replace(staged, &meta, &mut file)
        })
        .await
        .map_err(|e| io_err(EngineError::Io(format!("snapshot install task: {e}"))))?
        .map_err(io_err)?;
        self.take_over(installed).map_err(io_err)
    }

    /// The kept snapshot; one is built only if none is kept yet.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        if let Some(kept) = self.snapshots.current().await.map_err(io_err)? {
            return Ok(Some(kept));
        }
        if self.applied.last_applied.is_none() {
            return Ok(None);
        }
        self.builder().build().await.map(Some).map_err(io_err)
    }
}
