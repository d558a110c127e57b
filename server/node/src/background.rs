//! The node's background loops: publishing and following the cluster map,
//! acting on the node's own state in it, handing leadership to preferred
//! replicas, and removing expired keys.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::{ClusterMap, NodeState, SetNodeStateRequest, WatchClusterMapRequest};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use atoll_raft::meta_command::Lifecycle;
use atoll_raft::quiesce::{LeaderWatch, Quieter};
use atoll_raft::state_machine::ttl::has_due;
use atoll_raft::state_machine::{read_cluster_map, store_node_map};
use atoll_raft::types::ServerState;
use atoll_raft::{Command, PeerPool, Replica, ShardKind, WriteId};
use prost::Message;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster_service::{meta_addresses, ClusterService, WATCH_WAIT};
use crate::node::{now_ms, wanted_replicas, Node};

/// How often the leader looks for due TTLs.
const TTL_SWEEP: Duration = Duration::from_millis(500);
/// Records one expiry sweep removes at most, and sweeps one tick proposes.
const TTL_BATCH: u32 = 1024;
const TTL_ROUNDS: usize = 16;

/// How long a shard must have had a stable leader before it hands over to
/// its preferred replica, and how often it may try.
const LEADER_SETTLE: Duration = Duration::from_secs(3);
const LEADER_RETRY: Duration = Duration::from_secs(30);

pub(crate) fn spawn(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    tokio::spawn(meta_map_loop(weak.clone()));
    tokio::spawn(watch_loop(weak.clone()));
    tokio::spawn(own_state_loop(weak.clone()));
    tokio::spawn(reconcile_loop(weak.clone()));
    tokio::spawn(crate::controller::run(weak.clone()));
    tokio::spawn(ttl_loop(weak.clone()));
    tokio::spawn(quiesce_loop(weak.clone()));
    tokio::spawn(leader_watch_loop(weak.clone()));
    tokio::spawn(leader_loop(weak));
}

/// Quiets the idle shards this node leads (`raft.quiesce_after`; see
/// `atoll_raft::quiesce`).
async fn quiesce_loop(node: Weak<Node>) {
    let idle_after = match node.upgrade() {
        Some(node) => node.config().raft.quiesce_after,
        None => return,
    };
    if !idle_after.is_zero() {
        sweep_loop(node, Quieter::EVERY, Quieter::new(idle_after)).await;
    }
}

/// Wakes this node's quiet followers whose leader's node falls silent, so
/// they elect a new leader (`atoll_raft::quiesce::LeaderWatch`).
async fn leader_watch_loop(node: Weak<Node>) {
    let (every, silent_after) = match node.upgrade() {
        Some(node) => (
            node.config().raft.heartbeat,
            node.config().raft.election_timeout_min,
        ),
        None => return,
    };
    sweep_loop(node, every, LeaderWatch::new(silent_after)).await;
}

/// A look at every local replica, taken on an interval.
trait Sweep: Send {
    fn sweep<'a>(
        &'a mut self,
        replicas: &'a [Replica],
        pool: &'a PeerPool,
    ) -> impl std::future::Future<Output = usize> + Send + 'a;
}

impl Sweep for Quieter {
    fn sweep<'a>(
        &'a mut self,
        replicas: &'a [Replica],
        pool: &'a PeerPool,
    ) -> impl std::future::Future<Output = usize> + Send + 'a {
        self.check(replicas, pool)
    }
}

impl Sweep for LeaderWatch {
    fn sweep<'a>(
        &'a mut self,
        replicas: &'a [Replica],
        pool: &'a PeerPool,
    ) -> impl std::future::Future<Output = usize> + Send + 'a {
        self.check(replicas, pool)
    }
}

/// Runs `sweep` every `every` until the node is gone.
async fn sweep_loop(node: Weak<Node>, every: Duration, mut sweep: impl Sweep) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let replicas = node.replicas();
        let pool = node.pool().clone();
        drop(node);
        sweep.sweep(&replicas, &pool).await;
    }
}

/// Moves leadership to the replica placement prefers (the first of the
/// shard's replicas in the map), so leaders spread over nodes and islands.
/// A leader that is not the preferred replica hands over once the group has
/// been stable for a while and the preferred replica holds the leader's
/// whole log. openraft's leader transfer makes the leader stop proposing,
/// release its lease and ask the target to run an election at once, so the
/// shard is without a leader for one election round, not for the lease.
async fn leader_loop(node: Weak<Node>) {
    // Shard -> (leader seen, since when).
    let mut stable_since: HashMap<ShardId, (Option<ReplicaId>, Instant)> = HashMap::new();
    let mut tried: HashMap<ShardId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let now = Instant::now();
        let map = node.map();
        for replica in node.replicas() {
            let shard = replica.spec.shard;
            let metrics = replica.metrics();
            let leader = metrics.current_leader;
            let since = stable_since.entry(shard).or_insert((leader, now));
            if since.0 != leader {
                *since = (leader, now);
                continue;
            }
            if leader != Some(replica.spec.replica) || metrics.state != ServerState::Leader {
                continue;
            }
            let Some(preferred) = map
                .shard(shard)
                .and_then(|s| s.replicas.first())
                .map(|r| ReplicaId(r.replica_id))
            else {
                continue;
            };
            if preferred == replica.spec.replica {
                continue;
            }
            let settled = now.duration_since(since.1) >= LEADER_SETTLE;
            let recently = tried
                .get(&shard)
                .is_some_and(|t| now.duration_since(*t) < LEADER_RETRY);
            // A target without the whole log would lose the election.
            let caught_up = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&preferred))
                .is_some_and(|matched| matched.map(|l| l.index) == metrics.last_log_index);
            if caught_up && settled && !recently {
                tried.insert(shard, now);
                tracing::info!(shard = %shard, to = %preferred, "handing leadership to the preferred replica");
                replica.wake();
                if let Err(e) = replica.raft.trigger().transfer_leader(preferred).await {
                    tracing::debug!(shard = %shard, error = %e, "leader transfer not started");
                }
            }
        }
    }
}

/// Keeps the node's map in step with the meta shard's, two ways: a node
/// with a meta replica reads the map its replica applied (and the first
/// meta leader publishes the initial map), and every node long-polls
/// `WatchClusterMap` on the other nodes with a meta replica, keeping a
/// synced copy of what it learns so it restarts with it. The watch is how
/// a node without a meta replica follows the map at all, and how a meta
/// voter that its peers no longer replicate to (a removed node) learns
/// why.
async fn meta_map_loop(weak: Weak<Node>) {
    loop {
        let Some(node) = weak.upgrade() else { return };
        let Some(meta) = node.replica(ShardId::META) else {
            drop(node);
            tokio::time::sleep(META_POLL).await;
            continue;
        };
        read_meta_map(&node, &meta).await;
        let raft = meta.raft.clone();
        let applied = meta.metrics().last_applied.map_or(0, |l| l.index);
        drop((meta, node));
        // Read again as soon as the meta replica applies more (a change of
        // the map shows on every meta voter within a commit), and at least
        // every META_POLL.
        let started = Instant::now();
        let waited = raft
            .wait(Some(META_POLL))
            .applied_index_at_least(Some(applied + 1), "the next meta entry")
            .await;
        if waited.is_err() {
            tokio::time::sleep_until(started + META_POLL).await;
        }
    }
}

/// The long poll of [`meta_map_loop`]'s doc.
async fn watch_loop(weak: Weak<Node>) {
    let mut watch = MapWatch::default();
    loop {
        let Some(node) = weak.upgrade() else { return };
        let (map, id) = (node.map(), node.id);
        // The long poll must not keep the node (or its engine) alive.
        drop(node);
        match watch.next(&map, id).await {
            Ok(newer) if newer.map_version > map.map_version => {
                let Some(node) = weak.upgrade() else { return };
                if node.set_map(newer.clone()) {
                    let engine = node.engine().clone();
                    drop(node);
                    let stored = tokio::task::spawn_blocking(move || {
                        store_node_map(engine.as_ref(), &newer).map_err(|e| e.to_string())
                    })
                    .await;
                    if let Err(e) = stored.map_err(|e| e.to_string()).and_then(|r| r) {
                        tracing::warn!(error = %e, "storing the node's copy of the cluster map");
                    }
                }
            }
            Ok(_) => {}
            Err(why) => {
                tracing::debug!(%why, "following the cluster map");
                tokio::time::sleep(META_POLL).await;
            }
        }
    }
}

/// Acts on the node's own state in its map: a joining node asks to be up,
/// and a removed node, or one whose map records another data directory
/// for it, stops its replicas.
async fn own_state_loop(weak: Weak<Node>) {
    let Some(mut changes) = weak.upgrade().map(|n| n.subscribe_map()) else {
        return;
    };
    loop {
        let Some(node) = weak.upgrade() else { return };
        let known = node.map().node(node.id).map_or(0, |n| n.incarnation);
        if known != 0 && known != node.incarnation && node.retire() {
            tracing::error!(
                node = %node.id,
                known = format_args!("{known:#018x}"),
                own = format_args!("{:#018x}", node.incarnation),
                "the cluster knows another data directory for this node: this one lost its data; \
                 its replicas stop (remove the node with --dead and start it with cluster.join)"
            );
            node.shutdown().await;
        }
        match node.lifecycle() {
            Some(Lifecycle::Joining) => ask_up(&node).await,
            Some(Lifecycle::Removed) if node.retire() => {
                tracing::error!(node = %node.id, "this node is removed from the cluster: its replicas stop, and its peers refuse its Raft calls");
                node.shutdown().await;
            }
            _ => {}
        }
        drop(node);
        let _ = tokio::time::timeout(ASK_UP_EVERY, changes.changed()).await;
    }
}

/// How often a node with a meta replica reads its map when nothing is
/// applied, and how long a node pauses after a failed watch.
const META_POLL: Duration = Duration::from_millis(500);

/// How often a joining node asks to be up until its map shows it (and
/// how often a node looks at its own state when its map does not change).
const ASK_UP_EVERY: Duration = Duration::from_secs(2);

/// Asks the meta shard to move this node from joining to up.
async fn ask_up(node: &Arc<Node>) {
    use atoll_proto::v1::cluster_server::Cluster;
    let service = ClusterService::new(node.clone());
    let request = tonic::Request::new(SetNodeStateRequest {
        node_id: node.id.get(),
        state: NodeState::Up as i32,
        dead: false,
    });
    match service.set_node_state(request).await {
        Ok(_) => tracing::info!(node = %node.id, "this node is up"),
        Err(status) => tracing::debug!(%status, "asking to be up"),
    }
}

/// Reads the map the local meta replica applied; publishes the initial
/// map when this node's meta replica leads and no map is stored yet.
async fn read_meta_map(node: &Node, meta: &Replica) {
    let stored = match read_cluster_map(node.engine().as_ref(), meta.spec.replica) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "reading the stored cluster map");
            return;
        }
    };
    match (stored, node.initial_map()) {
        (Some(map), _) => {
            node.set_map(map);
        }
        (None, Some(initial)) if meta.leader() == Some(meta.spec.replica) => {
            let command = Command::SetClusterMap {
                expected_version: 0,
                map: initial.encode_to_vec(),
            };
            if let Err(e) = node.propose(meta, command, WriteId::Untracked).await {
                tracing::debug!(error = %e, "publishing the initial cluster map");
            }
        }
        _ => {}
    }
}

/// A long poll of `WatchClusterMap` on the nodes with a meta replica, one
/// after another while they fail.
#[derive(Default)]
struct MapWatch {
    /// The node asked, and the channel to it.
    current: Option<(String, Channel)>,
}

impl MapWatch {
    /// The map of a node with a meta replica: once newer than `map`, or
    /// after its wait.
    async fn next(&mut self, map: &ClusterMap, me: NodeId) -> Result<ClusterMap, String> {
        let (address, channel) = match self.current.take() {
            Some(current) => current,
            None => {
                let address = meta_addresses(map, me)
                    .into_iter()
                    .next()
                    .ok_or("no node with a meta replica is known")?;
                let channel = Channel::from_shared(format!("http://{address}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                (address, channel)
            }
        };
        let request = WatchClusterMapRequest {
            known_version: map.map_version,
            node_id: me.get(),
        };
        let mut client = ClusterClient::new(channel.clone());
        let call = client.watch_cluster_map(request);
        match tokio::time::timeout(WATCH_WAIT + Duration::from_secs(5), call).await {
            Ok(Ok(answer)) => {
                self.current = Some((address, channel));
                answer
                    .into_inner()
                    .map
                    .ok_or_else(|| "answered without a map".into())
            }
            // The next call asks another node.
            Ok(Err(status)) => Err(format!("{address}: {}", status.message())),
            Err(_) => Err(format!("{address}: no answer")),
        }
    }
}

/// How often the reconciler compares the map with the running replicas
/// when the map does not change.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Starts the replicas the map gives this node and destroys those it no
/// longer gives it (docs/design/elastic.md, "The replica reconciler"), at
/// once when the map changes.
async fn reconcile_loop(weak: Weak<Node>) {
    let Some(mut changes) = weak.upgrade().map(|n| n.subscribe_map()) else {
        return;
    };
    loop {
        let _ = tokio::time::timeout(RECONCILE_EVERY, changes.changed()).await;
        let Some(node) = weak.upgrade() else { return };
        if node.lifecycle() == Some(Lifecycle::Removed) {
            continue;
        }
        reconcile(&node).await;
    }
}

async fn reconcile(node: &Node) {
    let wanted = wanted_replicas(&node.map(), node.id);
    // Destroy first: a replica moving back to this node must not meet the
    // old one (a node runs one replica per shard).
    for replica in node.replicas() {
        let shard = replica.spec.shard;
        if wanted.get(&shard).map(|s| s.replica) == Some(replica.spec.replica) {
            continue;
        }
        if let Err(e) = node.destroy_replica(shard).await {
            tracing::error!(shard = %shard, error = %e, "destroying a replica that left its shard");
        }
    }
    for (shard, spec) in wanted {
        if node.replica(shard).is_some() {
            continue;
        }
        match node.overlapping(&spec) {
            Ok(None) => {}
            Ok(Some(other)) => {
                tracing::debug!(shard = %shard, %other, "replica waits for a local replica to apply its split");
                continue;
            }
            Err(e) => {
                tracing::error!(shard = %shard, error = %e, "reading a replica's range");
                continue;
            }
        }
        let replica = spec.replica;
        match node.start_replica(spec).await {
            Ok(()) => {
                tracing::info!(shard = %shard, %replica, "replica started: the map gives it to this node")
            }
            Err(e) => tracing::error!(shard = %shard, %replica, error = %e, "starting a replica"),
        }
    }
}

/// Moves each led data shard's log clock past its due TTLs: when the
/// expiry index holds a record due by now, proposes an expiry sweep, whose
/// entry carries this leader's time, so the clock reaches it and reads see
/// the keys absent; the sweep also removes them. Keys outlive their TTL by
/// about [`TTL_SWEEP`] plus one commit (docs/design/ttl-and-clocks.md).
async fn ttl_loop(node: Weak<Node>) {
    let mut tick = tokio::time::interval(TTL_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        for replica in node.replicas() {
            if replica.leader() != Some(replica.spec.replica)
                || !matches!(replica.spec.kind, ShardKind::Data { .. })
            {
                continue;
            }
            if let Err(e) = sweep(&node, &replica).await {
                tracing::debug!(shard = %replica.spec.shard, error = %e, "ttl sweep");
            }
        }
    }
}

/// Proposes expiry sweeps while records are due, at most [`TTL_ROUNDS`]
/// times (the next tick goes on).
async fn sweep(node: &Node, replica: &Replica) -> Result<(), crate::errors::ApiError> {
    for _ in 0..TTL_ROUNDS {
        let due_by = replica.stamp(now_ms());
        if !has_due(node.engine().as_ref(), replica.spec.replica, due_by)? {
            return Ok(());
        }
        let command = Command::ExpireDue { limit: TTL_BATCH };
        node.propose(replica, command, WriteId::Untracked).await?;
    }
    Ok(())
}
