//! One replica: an openraft `Raft` over the node's engine, plus what the
//! request path needs next to it (the ReadIndex batcher and the write
//! proposer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_proto::{ReplicaId, ShardId};
use atoll_storage::{Engine, EngineError, GroupCommitter};
use openraft::async_runtime::WatchReceiver;
use openraft::storage::RaftLogStorage;
use openraft::SnapshotPolicy;

use crate::join_guard::JoinGuard;
use crate::log_store::LogStore;
use crate::network::{NetworkFactory, PeerPool};
use crate::proposer::Proposer;
use crate::quiesce::Quiescence;
use crate::read_index::ReadIndex;
use crate::state_machine::ttl::{SharedClock, Stamper};
use crate::state_machine::{OwnedRange, ShardKind, StateMachine};
use crate::types::{Raft, RaftMetrics, ReplicaNode};

/// Raft timing and log retention, shared by every replica of a node (the
/// node's `[raft]` config section).
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries, once the log
    /// since the last is worth it ([`crate::snapshot_policy`]).
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind the last snapshot (for slow followers).
    pub keep_entries_after_snapshot: u64,
    /// Where snapshot files are made while they are built, sent or received.
    pub snapshot_dir: std::path::PathBuf,
    /// Test-only and unsafe: acknowledge log appends before the WAL sync.
    pub ack_before_fsync: bool,
    /// Entries the proposer keeps in Raft at once (see [`Proposer`]).
    pub max_proposals_in_flight: usize,
}

/// What a replica is: its shard, id, kind and the shard's initial members.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    pub shard: ShardId,
    pub replica: ReplicaId,
    pub kind: ShardKind,
    /// Members used to initialize a brand-new group.
    pub initial_members: BTreeMap<ReplicaId, ReplicaNode>,
    /// Whether placement chose this replica to lead a new group: it starts
    /// the first election, so leaders spread as placement intended.
    pub preferred_leader: bool,
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica storage: {0}")]
    Storage(#[from] EngineError),
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Deletes everything `replica` stored on this node, in one synced write:
/// its log, its Raft state, its state machine's rows and its data range;
/// then its snapshot files. The replica must be stopped, and must have left
/// its shard (no other local replica shares its data range: a node holds
/// at most one replica of a shard, and shards' ranges do not overlap).
pub fn destroy_storage(
    engine: &dyn Engine,
    replica: ReplicaId,
    kind: ShardKind,
    snapshot_dir: &std::path::Path,
) -> Result<(), EngineError> {
    // The range it owns now: a split may have narrowed it since it started.
    let kind =
        crate::state_machine::range::current_kind(engine.snapshot().as_ref(), replica, kind)?;
    let mut batch = atoll_storage::WriteBatch::new();
    for cf in [atoll_storage::Cf::RaftLog, atoll_storage::Cf::RaftState] {
        let (start, end) = atoll_storage::keys::replica_range(replica);
        batch.delete_range(cf, start, end);
    }
    StateMachine::destroy(replica, kind, &mut batch);
    engine.write(batch, true)?;
    crate::state_machine::SnapshotStore::open(snapshot_dir, replica)?.forget()
}

/// A running replica.
#[derive(Clone)]
pub struct Replica {
    pub spec: ReplicaSpec,
    pub raft: Raft,
    pub read_index: ReadIndex,
    pub proposer: Proposer,
    /// The applied log clock, and the stamps this replica puts on the
    /// entries it proposes (docs/design/ttl-and-clocks.md).
    log_clock: Arc<SharedClock>,
    stamper: Arc<Mutex<Stamper>>,
    /// The hash range it owns as of its applied state (a split narrows it;
    /// `spec.kind` is the range it started with).
    owned: Arc<OwnedRange>,
    quiescence: Arc<Quiescence>,
    guard: Arc<JoinGuard>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens the replica's storage and starts its Raft. A group whose log is
    /// empty is initialized with `spec.initial_members` (every initial member
    /// does this with the same membership, which is safe).
    pub async fn start(
        spec: ReplicaSpec,
        config: &ReplicaConfig,
        engine: Arc<dyn Engine>,
        committer: Arc<GroupCommitter>,
        pool: Arc<PeerPool>,
    ) -> Result<Self, ReplicaError> {
        let mut log = LogStore::new(spec.replica, engine.clone(), committer)
            .ack_before_fsync(config.ack_before_fsync);
        // Read from the store itself: Raft's metrics are still empty when
        // Raft::new returns. The floor is the commit index the log saved,
        // not its last index: entries past it may never commit (a leader
        // cut off with writes in flight), and a floor no entry reaches
        // would refuse every read until new writes came.
        let raft_err = |e: std::io::Error| ReplicaError::Raft(e.to_string());
        let last = log.get_log_state().await.map_err(raft_err)?.last_log_id;
        let committed = log.read_committed().await.map_err(raft_err)?;
        let restart_floor = committed.min(last).map_or(0, |id| id.index);
        // Opening may finish an interrupted snapshot install or build an
        // expiry index: work for a blocking thread.
        let sm = {
            let (spec, dir, engine) = (spec.clone(), config.snapshot_dir.clone(), engine.clone());
            tokio::task::spawn_blocking(move || {
                StateMachine::open(spec.replica, spec.shard, spec.kind, engine, &dir)
            })
            .await
            .map_err(|e| ReplicaError::Raft(format!("open the state machine: {e}")))??
        };
        let log_clock = sm.log_clock();
        let owned = sm.owned_range();
        let raft_config = openraft::Config {
            cluster_name: format!("atoll-{}", spec.shard),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            // Built when `snapshot_policy` says so: by entries and by bytes.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.keep_entries_after_snapshot,
            // openraft hands it to the snapshot send as its deadline, which
            // the send ignores: it has deadlines by progress (`pacing`).
            install_snapshot_timeout: 60_000,
            // openraft replicates an entry while the leader's own append is
            // still being synced, so a leader may commit an entry its own
            // disk does not hold yet (a majority of followers synced it). Restored as leader in
            // its old term after a crash, it could hand out that entry's
            // log id again; so a restarted replica always runs an election.
            enable_leader_restore: Some(false),
            // A replica that was cut off asks first whether it could win,
            // so coming back it does not depose a healthy leader.
            enable_pre_vote: Some(true),
            // Timing statistics of log stages, a ring per stage per group
            // (1,024 entries each by default); unused here, and a node runs
            // many groups.
            log_stage_capacity: Some(16),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config(e.to_string()))?;
        let guard = Arc::new(JoinGuard::new(owned.clone()));
        let network = NetworkFactory::new(spec.shard, spec.replica, pool, guard.clone());
        let raft = Raft::new(spec.replica, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        guard.watch(raft.metrics());
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        if !initialized && spec.initial_members.contains_key(&spec.replica) {
            match raft.initialize(spec.initial_members.clone()).await {
                Ok(()) if spec.preferred_leader => {
                    if let Err(e) = raft.trigger().elect(false).await {
                        tracing::debug!(shard = %spec.shard, error = %e, "first election not started");
                    }
                }
                Ok(()) => {}
                // Another member's initialization may have reached us first.
                Err(e) => tracing::debug!(shard = %spec.shard, error = %e, "initialize skipped"),
            }
        }
        crate::snapshot_policy::spawn(
            raft.clone(),
            &engine,
            spec.replica,
            owned.clone(),
            config.snapshot_after_entries,
        );
        let quiescence = Arc::new(Quiescence::new(raft.clone()));
        let read_index = ReadIndex::new(raft.clone(), quiescence.clone(), restart_floor);
        let proposer = Proposer::new(
            raft.clone(),
            quiescence.clone(),
            config.max_proposals_in_flight,
        );
        Ok(Self {
            spec,
            raft,
            read_index,
            proposer,
            log_clock,
            stamper: Arc::default(),
            owned,
            quiescence,
            guard,
        })
    }

    /// What the replica serves as of its applied state.
    pub fn kind(&self) -> ShardKind {
        self.owned.kind()
    }

    /// Whether the replica, as of its applied state, owns `hash`.
    pub fn owns(&self, hash: u64) -> bool {
        self.owned.contains(hash)
    }

    /// Why a new member may not join the shard through this leader yet:
    /// its log still holds entries from before its range last changed,
    /// which a new member would replay against the narrower range
    /// ([`OwnedRange::since`]). The snapshot policy purges them.
    pub fn unfit_to_add_members(&self) -> Option<String> {
        let floor = self.owned.since();
        let purged = self.metrics().purged.map_or(0, |id| id.index);
        (floor > purged).then(|| {
            format!(
                "the shard's log still holds entries from before its range changed at index \
                 {floor} (purged up to {purged}); a new replica must start from a snapshot \
                 taken after it, and the log is being purged"
            )
        })
    }

    /// Bytes this replica, leading, sent `target` to catch it up: snapshot
    /// chunks, and log entries while `target` was a learner.
    pub fn bytes_sent_to(&self, target: ReplicaId) -> u64 {
        self.guard.sent_to(target)
    }

    /// The latest metrics (role, term, leader, log positions).
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The time to stamp on an entry this replica proposes now, given the
    /// wall clock `wall_ms` ([`Stamper`]).
    pub fn stamp(&self, wall_ms: u64) -> u64 {
        let term = self.raft.metrics().borrow_watched().current_term;
        let applied = self.log_clock.get();
        let mut stamper = self.stamper.lock().unwrap_or_else(|p| p.into_inner());
        stamper.stamp(term, applied, wall_ms, std::time::Instant::now())
    }

    /// Whether the replica is quiet, and what wakes it.
    pub fn quiescence(&self) -> &Quiescence {
        &self.quiescence
    }

    /// Wakes the replica if it is quiet ([`Quiescence::wake`]).
    pub fn wake(&self) {
        self.quiescence.wake()
    }

    /// Wakes the replica if it is quiet and leads
    /// ([`Quiescence::wake_if_leading`]).
    pub fn wake_if_leading(&self) {
        self.quiescence.wake_if_leading()
    }

    /// Whether the replica may start an election when its leader falls
    /// silent (it still votes, and an explicit trigger still elects).
    pub fn allow_elections(&self, allowed: bool) {
        self.raft.runtime_config().elect(allowed)
    }

    /// How long this replica, leading, has gone without an answer from a
    /// quorum; `None` unless it leads and has had one. A quiet leader
    /// hears from nobody: its time is counted from when it last woke.
    pub fn since_quorum_ack(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.state != openraft::ServerState::Leader {
            return None;
        }
        let silent = metrics
            .last_quorum_acked
            .as_ref()
            .map(|at| openraft::Instant::elapsed(&**at))?;
        Some(silent.min(self.quiescence.awake_for()))
    }

    /// The applied log clock, published once the batch that set it has
    /// landed in the engine.
    pub fn log_clock(&self) -> u64 {
        self.log_clock.get().ms
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.raft.metrics().borrow_watched().current_leader
    }
}
