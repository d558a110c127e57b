//! The node's background loops: publishing and refreshing the cluster map
//! through the meta shard, and removing expired keys.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::state_machine::read_cluster_map;
use atoll_raft::state_machine::ttl::has_due;
use atoll_raft::types::ServerState;
use atoll_raft::{Command, Replica, ShardKind, WriteId};
use prost::Message;
use tokio::time::Instant;

use crate::node::{now_ms, Node};

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
    tokio::spawn(map_loop(weak.clone()));
    tokio::spawn(ttl_loop(weak.clone()));
    tokio::spawn(leader_loop(weak));
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
                if let Err(e) = replica.raft.trigger().transfer_leader(preferred).await {
                    tracing::debug!(shard = %shard, error = %e, "leader transfer not started");
                }
            }
        }
    }
}

/// Publishes the initial map through the meta shard (first leader does it)
/// and keeps the node's map in step with the meta shard's.
async fn map_loop(node: Weak<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let Some(meta) = node.replica(ShardId::META) else {
            continue;
        };
        let stored = match read_cluster_map(node.engine().as_ref(), meta.spec.replica) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "reading the stored cluster map");
                continue;
            }
        };
        match stored {
            Some(map) => node.set_map(map),
            None if meta.leader() == Some(meta.spec.replica) => {
                let map = node.initial_map().encode_to_vec();
                let command = Command::SetClusterMap {
                    expected_version: 0,
                    map,
                };
                if let Err(e) = node.propose(&meta, command, WriteId::Untracked).await {
                    tracing::debug!(error = %e, "publishing the initial cluster map");
                }
            }
            None => {}
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
