//! One Atoll node: its engine, its replicas (one per shard it hosts), its
//! view of the cluster map, and the request plumbing the services share
//! (routing to a local replica, proposing a write, a linearizable read
//! barrier).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_proto::keyhash::key_hash;
use atoll_proto::v1::{ClusterMap, LeaderHint, Shard};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use atoll_raft::meta_command::Lifecycle;
use atoll_raft::proposer::ProposeError;
use atoll_raft::state_machine::range::current_kind;
use atoll_raft::state_machine::{read_cluster_map, read_node_map};
use atoll_raft::types::{CheckIsLeaderError, ClientWriteError, RaftError, ReplicaNode};
use atoll_raft::{
    Command, NetworkFaults, Origin, Outcome, PeerDirectory, PeerPool, Replica, ReplicaConfig,
    ReplicaDirectory, ReplicaSpec, Request, Sender, ShardKind, SnapshotPacing, WriteId,
};
use atoll_storage::{Engine, GroupCommitter};
use tokio::sync::watch;

use crate::bootstrap::initial_map;
use crate::config::NodeConfig;
use crate::errors::ApiError;
use crate::identity::Identity;

/// Switches that tests use to inject faults into a running node.
#[derive(Debug, Default)]
pub struct TestHooks {
    /// Drop the responses of this many upcoming writes *after* they were
    /// applied, as if the network lost them.
    pub drop_write_responses: AtomicU32,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("initial cluster map: {0}")]
    Bootstrap(String),
    #[error("storage: {0}")]
    Storage(#[from] atoll_storage::EngineError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("joining the cluster: {0}")]
    Join(#[from] crate::join::JoinError),
    #[error(
        "node {node} is removed from the cluster (map version {map_version}): a removed node \
         never comes back; start a new node on an empty data dir with cluster.join"
    )]
    Removed { node: NodeId, map_version: u64 },
    #[error("node {node} is not in the cluster map (version {map_version})")]
    NotInMap { node: NodeId, map_version: u64 },
    #[error("replica of shard {shard}: {source}")]
    Replica {
        shard: ShardId,
        source: atoll_raft::replica::ReplicaError,
    },
}

/// The node's current map; watchers wake when a newer one arrives.
type SharedMap = watch::Sender<Arc<ClusterMap>>;

/// Peer addresses from the current map. A removed node has none: nothing
/// is sent to it any more.
struct MapDirectory(watch::Receiver<Arc<ClusterMap>>);

impl PeerDirectory for MapDirectory {
    fn address(&self, node: NodeId) -> Option<String> {
        let map = self.0.borrow();
        map.node(node)
            .filter(|n| Lifecycle::of(n) != Lifecycle::Removed)
            .map(|n| n.address.clone())
    }

    fn incarnation(&self, node: NodeId) -> u64 {
        self.0.borrow().node(node).map_or(0, |n| n.incarnation)
    }
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    /// The incarnation of this node's data directory
    /// ([`crate::identity::incarnation`]).
    pub incarnation: u64,
    pub island: String,
    config: NodeConfig,
    engine: Arc<dyn Engine>,
    committer: Arc<GroupCommitter>,
    pub faults: Arc<NetworkFaults>,
    pub hooks: TestHooks,
    replicas: RwLock<HashMap<ShardId, Replica>>,
    map: SharedMap,
    /// The map this node computes from `cluster.initial_nodes` (which the
    /// first meta leader publishes); none for a node that joined.
    initial_map: Option<Arc<ClusterMap>>,
    /// Set once the node has seen itself removed and stopped its replicas.
    retired: AtomicBool,
    /// Set until the node has served Raft calls for an election timeout
    /// ([`Node::release_elections`]); replicas started meanwhile do not
    /// elect.
    elections_held: AtomicBool,
    /// What every replica of this node starts with.
    replica_config: ReplicaConfig,
    /// What this node's controller last learned, while it leads the meta
    /// shard (`PlacementPlan` reads it).
    placement_view: std::sync::Mutex<crate::controller::PlacementView>,
    pool: Arc<PeerPool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("island", &self.island)
            .finish_non_exhaustive()
    }
}

/// The placement limits in force on this node (docs/design/elastic.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Moves in progress at once in the whole cluster.
    pub max_moves: usize,
    /// Moves in progress at once into one node.
    pub max_moves_into_node: usize,
    /// The byte rate this node's sends to replicas catching up are held
    /// to.
    pub snapshot_rate: u64,
}

impl Limits {
    /// Each limit an operator set in `map`; a limit left at 0 there is
    /// this node's config.
    pub(crate) fn of(map: &ClusterMap, config: &NodeConfig) -> Self {
        let set = map.placement_limits.unwrap_or_default();
        let or = |set: u64, config: u64| if set == 0 { config } else { set };
        let cluster = &config.cluster;
        Limits {
            max_moves: or(set.max_moves.into(), cluster.max_moves.into()) as usize,
            max_moves_into_node: or(
                set.max_moves_into_node.into(),
                cluster.max_moves_into_node.into(),
            ) as usize,
            snapshot_rate: or(set.snapshot_rate, config.raft.snapshot_rate.0),
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn shard_kind(shard: &Shard) -> ShardKind {
    if ShardId(shard.id).is_meta() {
        ShardKind::Meta
    } else {
        ShardKind::Data {
            first: shard.range_start,
            last: shard.range_last,
        }
    }
}

impl Node {
    /// Starts the node's replicas on `engine`. Serving gRPC is separate
    /// ([`crate::server::serve`]); until it begins, no replica of the node
    /// starts an election ([`Node::release_elections`]).
    pub async fn start(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
    ) -> Result<Arc<Node>, NodeError> {
        config.validate()?;
        let (identity, map, initial) = if config.joins() {
            let (identity, map) = crate::join::enter(&config, engine.as_ref()).await?;
            (identity, Arc::new(map), None)
        } else {
            let initial = Arc::new(initial_map(&config.cluster).map_err(NodeError::Bootstrap)?);
            let identity = Identity::of(&initial, config.node_id);
            if crate::identity::read(engine.as_ref())?.is_none() {
                crate::identity::refuse_if_known(&config, &initial).await?;
            }
            crate::identity::check(engine.as_ref(), &identity)?;
            let map = newest_stored_map(engine.as_ref(), &initial, NodeId(identity.node_id))?;
            (identity, map, Some(initial))
        };
        let id = NodeId(identity.node_id);
        match map.node(id).map(Lifecycle::of) {
            Some(Lifecycle::Removed) => {
                return Err(NodeError::Removed {
                    node: id,
                    map_version: map.map_version,
                })
            }
            Some(_) => {}
            None => {
                return Err(NodeError::NotInMap {
                    node: id,
                    map_version: map.map_version,
                })
            }
        }
        let incarnation = crate::identity::incarnation(engine.as_ref())?;
        let (shared, _) = watch::channel(map.clone());
        let faults = Arc::new(NetworkFaults::default());
        // No burst: every byte waits its turn, so the rate holds from the
        // first chunk.
        let pacing = SnapshotPacing::new(
            Limits::of(&map, &config).snapshot_rate,
            0,
            config.raft.snapshot_sends,
            config.raft.snapshot_stall_timeout,
        );
        let pool = Arc::new(PeerPool::new(
            Origin {
                node: id,
                incarnation,
            },
            Arc::new(MapDirectory(shared.subscribe())),
            faults.clone(),
            Arc::new(pacing),
        ));
        let committer = Arc::new(GroupCommitter::start(engine.clone())?);
        let replica_config = ReplicaConfig {
            heartbeat: config.raft.heartbeat,
            election_timeout_min: config.raft.election_timeout_min,
            election_timeout_max: config.raft.election_timeout_max,
            snapshot_after_entries: config.raft.snapshot_after_entries,
            keep_entries_after_snapshot: config.raft.keep_entries_after_snapshot,
            snapshot_dir: snapshot_dir(&config),
            ack_before_fsync: config.testing.ack_before_fsync,
            max_proposals_in_flight: config.raft.max_proposals_in_flight,
        };
        if config.testing.any() {
            tracing::warn!(testing = ?config.testing, "UNSAFE testing switches are on: this node may lose acknowledged writes or serve stale reads");
        }
        std::fs::create_dir_all(&replica_config.snapshot_dir).map_err(|e| {
            atoll_storage::EngineError::Io(format!(
                "{}: {e}",
                replica_config.snapshot_dir.display()
            ))
        })?;
        atoll_raft::state_machine::clear_received_snapshots(&replica_config.snapshot_dir)?;
        let node = Arc::new(Node {
            id,
            incarnation,
            island: config.island.clone(),
            config,
            engine,
            committer,
            faults,
            hooks: TestHooks::default(),
            replicas: RwLock::new(HashMap::new()),
            map: shared,
            initial_map: initial,
            retired: AtomicBool::new(false),
            elections_held: AtomicBool::new(true),
            replica_config,
            placement_view: Default::default(),
            pool,
        });
        for spec in wanted_replicas(&map, id).into_values() {
            if let Some(other) = node.overlapping(&spec)? {
                tracing::info!(shard = %spec.shard, %other, "replica waits: its range overlaps a local replica's until that one applies its split");
                continue;
            }
            node.start_replica(spec).await?;
        }
        let started = node.replicas().len();
        tracing::info!(node = %id, replicas = started, map_version = map.map_version, "node started");
        crate::background::spawn(&node);
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's channels and streams to its peers.
    pub(crate) fn pool(&self) -> &Arc<PeerPool> {
        &self.pool
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn committer(&self) -> &GroupCommitter {
        &self.committer
    }

    /// The cluster map as this node knows it.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// The map computed from `cluster.initial_nodes`; none for a node
    /// that joined a running cluster.
    pub(crate) fn initial_map(&self) -> Option<&Arc<ClusterMap>> {
        self.initial_map.as_ref()
    }

    /// Takes `map` if it is newer than the node's; returns whether it was.
    pub(crate) fn set_map(&self, map: ClusterMap) -> bool {
        let newer = self.map.send_if_modified(|current| {
            let newer = map.map_version > current.map_version;
            if newer {
                *current = Arc::new(map);
            }
            newer
        });
        if newer {
            let rate = Limits::of(&self.map.borrow(), &self.config).snapshot_rate;
            self.pool.pacing().set_rate(rate);
        }
        newer
    }

    /// A receiver that wakes when the node takes a newer map.
    pub(crate) fn subscribe_map(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map.subscribe()
    }

    /// The node's map once it is newer than `known_version`, or after
    /// `timeout` the map it has.
    pub async fn watch_map(&self, known_version: u64, timeout: Duration) -> Arc<ClusterMap> {
        let mut changes = self.map.subscribe();
        let newer = changes.wait_for(|m| m.map_version > known_version);
        let _ = tokio::time::timeout(timeout, newer).await;
        self.map()
    }

    pub(crate) fn set_placement_view(&self, view: crate::controller::PlacementView) {
        if let Ok(mut slot) = self.placement_view.lock() {
            *slot = view;
        }
    }

    pub(crate) fn placement_view(&self) -> crate::controller::PlacementView {
        self.placement_view
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Marks the node retired (removed from the cluster); true the first
    /// time only.
    pub(crate) fn retire(&self) -> bool {
        !self.retired.swap(true, Ordering::SeqCst)
    }

    /// This node's state in its map.
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        self.map.borrow().node(self.id).map(Lifecycle::of)
    }

    /// Starts a replica of this node (at start, or when the map gives the
    /// node a new one).
    pub(crate) async fn start_replica(&self, spec: ReplicaSpec) -> Result<(), NodeError> {
        let shard = spec.shard;
        let replica = Replica::start(
            spec,
            &self.replica_config,
            self.engine.clone(),
            self.committer.clone(),
            self.pool.clone(),
        )
        .await
        .map_err(|source| NodeError::Replica { shard, source })?;
        if let Ok(mut replicas) = self.replicas.write() {
            // Checked under the lock `release_elections` takes, so no
            // replica is held after the release.
            if self.elections_held.load(Ordering::SeqCst) {
                replica.allow_elections(false);
            }
            replicas.insert(shard, replica.clone());
        }
        // Its leader may be quiet, and would not heartbeat to it.
        let pool = self.pool.clone();
        tokio::spawn(async move { atoll_raft::quiesce::wake_leader(&replica, &pool).await });
        Ok(())
    }

    /// Lets the node's replicas elect, one election timeout from now: call
    /// it once the node serves Raft calls.
    ///
    /// A replica's election timer runs from its start, and a node that
    /// starts many replicas, or starts on a busy machine, can take longer
    /// than an election timeout before it serves. Its first replicas would
    /// then find their leaders silent (a quiet leader sends nothing until
    /// a replica's wake reaches it, and nothing reaches a node before it
    /// serves) and depose them; pre-vote does not stop it, since a quiet
    /// follower has long stopped hearing its leader. Held until the node
    /// has served for an election timeout, each leader has that long to
    /// be heard, as it would have by a replica that had just started. Each
    /// replica is let go at a random point of the timeout's range, as
    /// randomized timeouts spread candidacies when every node restarts.
    pub fn release_elections(self: &Arc<Self>) {
        let node = self.clone();
        let (min, max) = (
            self.config.raft.election_timeout_min,
            self.config.raft.election_timeout_max,
        );
        tokio::spawn(async move {
            tokio::time::sleep(min).await;
            let Ok(replicas) = node.replicas.write() else {
                return;
            };
            node.elections_held.store(false, Ordering::SeqCst);
            for replica in replicas.values() {
                let replica = replica.clone();
                let delay = rand::random_range(Duration::ZERO..=max.saturating_sub(min));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    replica.allow_elections(true);
                });
            }
        });
    }

    /// The shard of a running local replica whose range overlaps the range
    /// `spec`'s replica would serve. Such a replica waits: the two share the
    /// node's data (a split's child whose parent here has not applied the
    /// split yet; the parent may still install a snapshot over the whole
    /// range).
    pub(crate) fn overlapping(&self, spec: &ReplicaSpec) -> Result<Option<ShardId>, NodeError> {
        let view = self.engine.snapshot();
        let ShardKind::Data { first, last } = current_kind(view.as_ref(), spec.replica, spec.kind)?
        else {
            return Ok(None);
        };
        let overlaps = |r: &Replica| match r.kind() {
            ShardKind::Data {
                first: theirs,
                last: their_last,
            } => r.spec.shard != spec.shard && theirs <= last && first <= their_last,
            ShardKind::Meta => false,
        };
        Ok(self
            .replicas()
            .iter()
            .find(|r| overlaps(r))
            .map(|r| r.spec.shard))
    }

    /// Stops the local replica of `shard` and deletes all it stored: its
    /// log, its state and its data range. Only for a replica that has left
    /// its shard for good (the map no longer lists it, and no move names
    /// it), so no other replica needs anything it holds.
    pub(crate) async fn destroy_replica(&self, shard: ShardId) -> Result<(), NodeError> {
        let Some(replica) = self
            .replicas
            .write()
            .ok()
            .and_then(|mut r| r.remove(&shard))
        else {
            return Ok(());
        };
        if let Err(e) = replica.raft.shutdown().await {
            tracing::warn!(shard = %shard, error = %e, "replica shutdown");
        }
        let spec = replica.spec.clone();
        drop(replica);
        let (engine, dir) = (
            self.engine.clone(),
            self.replica_config.snapshot_dir.clone(),
        );
        tokio::task::spawn_blocking(move || {
            atoll_raft::replica::destroy_storage(engine.as_ref(), spec.replica, spec.kind, &dir)
        })
        .await
        .map_err(|e| atoll_storage::EngineError::Io(format!("destroying a replica: {e}")))??;
        tracing::info!(shard = %shard, replica = %spec.replica, "replica destroyed: it left its shard");
        Ok(())
    }

    /// The local replica of `shard`.
    pub fn replica(&self, shard: ShardId) -> Option<Replica> {
        self.replicas.read().ok()?.get(&shard).cloned()
    }

    /// Every local replica, in shard order.
    pub fn replicas(&self) -> Vec<Replica> {
        let mut all: Vec<Replica> = self
            .replicas
            .read()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(|r| r.spec.shard);
        all
    }

    /// Stops every replica, then waits (up to `timeout`) until everything
    /// that used the node's engine has let go of it, so that the engine
    /// (RocksDB) is closed before the process exits. Returns whether it was.
    pub async fn close(node: Arc<Node>, timeout: Duration) -> bool {
        node.shutdown().await;
        let engine = node.engine.clone();
        drop(node);
        let deadline = tokio::time::Instant::now() + timeout;
        // Wait until ours is the last reference, then drop it here: the
        // engine's destructor (RocksDB's close) must have finished when this
        // returns, not be running on another thread as the process exits.
        while Arc::strong_count(&engine) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(engine);
        true
    }

    /// Stops every replica.
    pub async fn shutdown(&self) {
        for replica in self.replicas() {
            if let Err(e) = replica.raft.shutdown().await {
                tracing::warn!(shard = %replica.spec.shard, error = %e, "replica shutdown");
            }
        }
    }

    /// Where clients should go for `shard`'s leader `leader`.
    pub fn leader_hint(&self, shard: ShardId, leader: Option<ReplicaId>) -> Option<LeaderHint> {
        let leader = leader?;
        let map = self.map();
        let node = map.shard(shard)?.node_of(leader.get())?;
        let address = map.node(node)?.address.clone();
        Some(LeaderHint {
            node_id: node.get(),
            address,
            replica_id: leader.get(),
        })
    }

    /// The local replica that must serve a request for `keys` routed to
    /// `shard_id`; checks the client's routing against the map.
    pub fn route(&self, shard_id: u64, keys: &[&[u8]]) -> Result<Replica, ApiError> {
        let map = self.map();
        let stale = |message: String| ApiError::StaleMap {
            map_version: map.map_version,
            message,
        };
        let shard_id = ShardId(shard_id);
        let shard = match map.shard(shard_id) {
            Some(s) if !shard_id.is_meta() => s,
            _ => return Err(stale(format!("{shard_id} is not a data shard"))),
        };
        if let Some(stray) = keys.iter().find(|k| !shard.contains(key_hash(k))) {
            return Err(stale(format!(
                "key {:?} is not in {shard_id}",
                String::from_utf8_lossy(stray)
            )));
        }
        self.replica(shard_id)
            .ok_or(ApiError::NotLeader { leader: None })
    }

    /// Proposes a command and waits for its outcome (a command the state
    /// machine rejected is `STALE_MAP`).
    pub async fn propose(
        &self,
        replica: &Replica,
        command: Command,
        write_id: WriteId,
    ) -> Result<Outcome, ApiError> {
        match self.propose_command(replica, command, write_id).await? {
            // The state machine refused the command: it was routed to a
            // shard that does not own its keys.
            Outcome::Rejected { reason } => Err(ApiError::StaleMap {
                map_version: self.map().map_version,
                message: reason,
            }),
            other => Ok(other),
        }
    }

    /// Proposes a command and waits for its outcome, which may be
    /// `Outcome::Rejected`.
    pub async fn propose_command(
        &self,
        replica: &Replica,
        command: Command,
        write_id: WriteId,
    ) -> Result<Outcome, ApiError> {
        let request = Request {
            write_id,
            now_ms: replica.stamp(now_ms()),
            command,
        };
        // A leader cut off from its quorum commits nothing: new writes go
        // elsewhere at once rather than wait out their deadline here.
        let cut_off = self.config.raft.election_timeout_max;
        replica.wake_if_leading();
        if let Some(silent) = replica.since_quorum_ack().filter(|s| *s > cut_off) {
            return Err(ApiError::ShardUnavailable(format!(
                "this leader has not heard from a quorum for {}: it may be cut off",
                humantime::format_duration(Duration::from_millis(silent.as_millis() as u64))
            )));
        }
        let client_write = write_id.is_tracked();
        let timeout = self.config.raft.write_timeout;
        let result = tokio::time::timeout(timeout, replica.proposer.propose(request)).await;
        let outcome = match result {
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "the write was not committed within {}; it may or may not apply",
                    humantime::format_duration(timeout)
                )))
            }
            Ok(Ok(outcome)) => outcome,
            Ok(Err(ProposeError::Overloaded { queued })) => {
                return Err(ApiError::Overloaded(format!(
                    "{queued} bytes of writes already wait for shard {}",
                    replica.spec.shard
                )))
            }
            Ok(Err(ProposeError::Raft(RaftError::APIError(
                ClientWriteError::ForwardToLeader(f),
            )))) => {
                return Err(ApiError::NotLeader {
                    leader: self.leader_hint(replica.spec.shard, f.leader_id),
                })
            }
            Ok(Err(e)) => return Err(ApiError::ShardUnavailable(e.to_string())),
        };
        let hooks = &self.hooks.drop_write_responses;
        if client_write
            && hooks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(ApiError::ShardUnavailable(
                "response dropped by a test hook".into(),
            ));
        }
        match outcome {
            Outcome::SessionExpired { reason } => Err(ApiError::SessionExpired(reason)),
            Outcome::Overloaded { reason } => Err(ApiError::Overloaded(reason)),
            other => Ok(other),
        }
    }

    /// Waits until `replica` may serve a linearizable read.
    pub async fn read_barrier(&self, replica: &Replica) -> Result<(), ApiError> {
        let timeout = self.config.raft.write_timeout;
        match tokio::time::timeout(timeout, replica.read_index.wait()).await {
            Err(_) => Err(ApiError::ShardUnavailable(
                "no quorum confirmed leadership in time".into(),
            )),
            Ok(Ok(())) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ApiError::NotLeader {
                    leader: self.leader_hint(replica.spec.shard, f.leader_id),
                })
            }
            Ok(Err(e)) => Err(ApiError::ShardUnavailable(e.to_string())),
        }
    }

    /// Waits (up to `timeout`) until every local replica has a leader.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.replicas().iter().all(|r| r.leader().is_some()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where snapshot files are made while they are built, sent or received.
fn snapshot_dir(config: &NodeConfig) -> std::path::PathBuf {
    config.data_dir.join("snapshots")
}

impl ReplicaDirectory for Node {
    fn lookup(&self, shard: ShardId, replica: ReplicaId) -> Option<Replica> {
        self.replica(shard).filter(|r| r.spec.replica == replica)
    }

    fn snapshot_file(&self) -> Result<tempfile::NamedTempFile, atoll_storage::EngineError> {
        atoll_raft::state_machine::received_snapshot_file(&snapshot_dir(&self.config))
    }

    fn admit(&self, sender: Option<&Sender>) -> Result<(), String> {
        admit(&self.map.borrow(), self.incarnation, sender)
    }
}

/// Whether this node (data directory `own_incarnation`) takes Raft calls
/// from `sender`, by `map`. Refused: a node the map says is removed; a
/// node whose data directory is not the one the map records (it lost its
/// data, and with it its votes and acknowledged entries); and a sender
/// that expects another data directory here (this node lost its data).
/// What the map does not know yet (it may lag) is let in.
fn admit(map: &ClusterMap, own_incarnation: u64, sender: Option<&Sender>) -> Result<(), String> {
    let Some(sender) = sender else { return Ok(()) };
    let peer = sender.node;
    let version = map.map_version;
    if let Some(known) = map.node(peer) {
        if Lifecycle::of(known) == Lifecycle::Removed {
            return Err(format!(
                "node {peer} is removed from the cluster (map version {version}); its Raft calls are refused"
            ));
        }
        if known.incarnation != 0
            && sender.incarnation != 0
            && known.incarnation != sender.incarnation
        {
            return Err(format!(
                "node {peer} runs on another data directory (incarnation {:#018x}) than the \
                 cluster knows ({:#018x}, map version {version}): its data was lost, so its \
                 Raft calls are refused",
                sender.incarnation, known.incarnation
            ));
        }
    }
    if sender.expects != 0 && sender.expects != own_incarnation {
        return Err(format!(
            "node {peer} expects this node's data directory to be incarnation {:#018x}, \
             but it is {own_incarnation:#018x}: this node lost its data and takes no Raft calls",
            sender.expects
        ));
    }
    Ok(())
}

/// The replicas `map` gives node `id`, by shard: those its shards list,
/// and the new replicas of moves to it. A shard still at its first epoch
/// gets its initial members, so a brand-new group initializes; any later
/// replica starts empty and uninitialized, and learns its membership from
/// the shard's leader (docs/design/elastic.md, principle 5).
pub(crate) fn wanted_replicas(map: &ClusterMap, id: NodeId) -> BTreeMap<ShardId, ReplicaSpec> {
    let mut wanted = BTreeMap::new();
    for shard in map.meta.iter().chain(&map.shards) {
        let listed = shard.replica_on(id);
        let moving_in = map
            .moves
            .iter()
            .find(|m| m.shard_id == shard.id && m.to_node == id.get())
            .map(|m| m.to_replica);
        let Some(replica_id) = listed.or(moving_in) else {
            continue;
        };
        let initial = shard.epoch <= 1 && listed.is_some();
        let initial_members = match initial {
            true => shard
                .replicas
                .iter()
                .map(|r| {
                    let node = ReplicaNode {
                        node: NodeId(r.node_id),
                    };
                    (ReplicaId(r.replica_id), node)
                })
                .collect(),
            false => BTreeMap::new(),
        };
        let spec = ReplicaSpec {
            shard: ShardId(shard.id),
            replica: ReplicaId(replica_id),
            kind: shard_kind(shard),
            initial_members,
            preferred_leader: initial
                && shard
                    .replicas
                    .first()
                    .is_some_and(|r| r.replica_id == replica_id),
        };
        wanted.insert(ShardId(shard.id), spec);
    }
    wanted
}

/// The newest map a node of the initial layout has: its meta replica's,
/// its own copy of the last map it followed, or the initial one.
fn newest_stored_map(
    engine: &dyn Engine,
    initial: &Arc<ClusterMap>,
    id: NodeId,
) -> Result<Arc<ClusterMap>, NodeError> {
    let meta = match initial.meta.as_ref().and_then(|m| m.replica_on(id)) {
        Some(replica) => read_cluster_map(engine, ReplicaId(replica))?,
        None => None,
    };
    let newest = [meta, read_node_map(engine)?]
        .into_iter()
        .flatten()
        .filter(|m| m.map_version >= initial.map_version)
        .max_by_key(|m| m.map_version);
    Ok(newest.map_or_else(|| initial.clone(), Arc::new))
}

#[cfg(test)]
mod tests {
    use atoll_proto::v1::{Node as MapNode, NodeState};

    use super::*;

    fn map(incarnation: u64, state: NodeState) -> ClusterMap {
        ClusterMap {
            map_version: 7,
            nodes: vec![MapNode {
                id: 2,
                state: state as i32,
                incarnation,
                ..MapNode::default()
            }],
            ..ClusterMap::default()
        }
    }

    fn from_two(incarnation: u64, expects: u64) -> Sender {
        Sender {
            node: NodeId(2),
            incarnation,
            expects,
        }
    }

    #[test]
    fn raft_calls_are_taken_only_between_the_data_directories_the_map_knows() {
        let known = map(20, NodeState::Up);
        let own = 10;
        assert!(admit(&known, own, Some(&from_two(20, 10))).is_ok());
        // Earlier versions name no incarnation; a map that lags knows none.
        assert!(admit(&known, own, None).is_ok());
        assert!(admit(&known, own, Some(&from_two(0, 0))).is_ok());
        assert!(admit(&map(0, NodeState::Up), own, Some(&from_two(21, 10))).is_ok());

        let lost = admit(&known, own, Some(&from_two(21, 10))).unwrap_err();
        assert!(lost.contains("n2 runs on another data directory"), "{lost}");
        let here_lost = admit(&known, own, Some(&from_two(20, 11))).unwrap_err();
        assert!(here_lost.contains("this node lost its data"), "{here_lost}");
        let removed = admit(&map(20, NodeState::Removed), own, Some(&from_two(20, 10)));
        assert!(removed.unwrap_err().contains("removed"));
    }
}
