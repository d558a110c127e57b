//! Quiescence: a Raft group with nothing to do stops ticking, so that a
//! node can hold a thousand idle replicas (docs/design/elastic.md, "Many
//! shards per node").
//!
//! An awake replica wakes up every few milliseconds (openraft's tick: about
//! a fifth of the heartbeat interval) and, leading, sends a heartbeat to
//! every follower every interval. An idle group needs neither. As in
//! CockroachDB, the leader of a group that has been idle for a while, whose
//! followers all hold its whole log, asks each follower to go quiet
//! ([`RaftCallKind::Quiesce`]); once every one has, it stops its own tick.
//! A quiet group sends nothing.
//!
//! What wakes it:
//! - on the leader, any proposal, read round or membership or leadership
//!   change ([`Quiescence::wake_if_leading`] is called on each of those
//!   paths; a quiet follower asked to serve answers `NOT_LEADER` and stays
//!   quiet);
//! - on any replica, any Raft call it receives other than a quiesce (the
//!   leader's first append after it woke, a vote);
//! - on a quiet follower, its leader's node falling silent: every node
//!   pings the nodes that lead its quiet followers ([`LeaderWatch`]), and
//!   wakes those followers when a node has not answered for an election
//!   timeout, so they elect a new leader as they would have without
//!   quiescence;
//! - on a follower that restarts, it asks its last known leader to wake
//!   ([`RaftCallKind::Wake`]), so the leader's heartbeats reach it before
//!   its election timeout.
//!
//! None of this touches Raft's safety, which never depends on timing: a
//! quiet leader that was deposed meanwhile learns it on its next append or
//! read round, as any partitioned leader does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use atoll_proto::v1::RaftCallKind;
use atoll_proto::{NodeId, ReplicaId, ShardId};
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::network::{message, unpack, PeerPool};
use crate::types::{Raft, ServerState};

/// Whether a replica is quiet, and what it needs to wake.
pub struct Quiescence {
    raft: Raft,
    state: Mutex<State>,
}

struct State {
    /// Quiet: the replica's tick is off.
    quiet: bool,
    /// For a quiet follower: the node of the leader that quieted it.
    leader_node: Option<NodeId>,
    /// Bumped by every [`Quiescence::wake`]: a leader goes quiet only if
    /// nothing woke it while it asked its followers.
    epoch: u64,
    /// When the replica last woke (or started).
    awake_since: Instant,
}

impl std::fmt::Debug for Quiescence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiescence")
            .field("quiet", &self.is_quiet())
            .finish_non_exhaustive()
    }
}

impl Quiescence {
    /// An awake replica's quiescence.
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            state: Mutex::new(State {
                quiet: false,
                leader_node: None,
                epoch: 0,
                awake_since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the replica if it is quiet: its tick starts again, so it
    /// heartbeats (leading) or times out its leader (following).
    pub fn wake(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        if state.quiet {
            state.quiet = false;
            state.leader_node = None;
            state.awake_since = Instant::now();
            self.raft.runtime_config().tick(true);
        }
    }

    /// Wakes the replica if it leads: what a request to it needs. A
    /// follower answers requests with `NOT_LEADER` and stays quiet; woken,
    /// its lease long expired, it would elect at once and depose a healthy
    /// leader for one misrouted request.
    pub fn wake_if_leading(&self) {
        if self.raft.metrics().borrow_watched().state == ServerState::Leader {
            self.wake();
        }
    }

    pub fn is_quiet(&self) -> bool {
        self.lock().quiet
    }

    /// How long the replica has been awake.
    pub fn awake_for(&self) -> Duration {
        self.lock().awake_since.elapsed()
    }

    /// The node of the leader of a quiet follower.
    fn quiet_leader(&self) -> Option<NodeId> {
        let state = self.lock();
        state.quiet.then_some(state.leader_node).flatten()
    }

    fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Stops the tick, unless something woke the replica since `epoch`.
    fn go_quiet(&self, epoch: Option<u64>, leader_node: Option<NodeId>) -> bool {
        let mut state = self.lock();
        if epoch.is_some_and(|e| e != state.epoch) {
            return false;
        }
        state.quiet = true;
        state.leader_node = leader_node;
        self.raft.runtime_config().tick(false);
        true
    }
}

/// What a leader asks of a follower: go quiet, if you follow me in `term`
/// and hold my log up to `last_index`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QuiesceRequest {
    pub leader: ReplicaId,
    pub term: u64,
    pub last_index: Option<u64>,
}

/// A follower's side of a [`QuiesceRequest`] from a replica on node
/// `from`: whether it went quiet.
pub fn answer_quiesce(
    quiescence: &Quiescence,
    from: Option<NodeId>,
    request: &QuiesceRequest,
) -> bool {
    let Some(from) = from else { return false };
    let metrics = quiescence.raft.metrics().borrow_watched().clone();
    let follows = matches!(metrics.state, ServerState::Follower | ServerState::Learner)
        && metrics.current_leader == Some(request.leader)
        && metrics.current_term == request.term
        && metrics.last_log_index == request.last_index;
    follows && quiescence.go_quiet(None, Some(from))
}

/// A leader's view of its group, as far as quiescence cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Activity {
    epoch: u64,
    last_index: Option<u64>,
}

/// Quiets idle groups led on this node. Call [`Quieter::check`] every
/// [`Quieter::EVERY`] with the node's replicas.
pub struct Quieter {
    /// A group goes quiet after this long without a proposal or read.
    idle_after: Duration,
    /// Per shard: the activity last seen, and since when.
    seen: HashMap<ShardId, (Activity, Instant)>,
}

impl Quieter {
    pub const EVERY: Duration = Duration::from_millis(500);

    pub fn new(idle_after: Duration) -> Self {
        Self {
            idle_after,
            seen: HashMap::new(),
        }
    }

    /// Asks the followers of every group led here that has been idle for
    /// `idle_after`, and is fully replicated, to go quiet; quiets the
    /// leaders whose followers all did. Returns how many went quiet.
    pub async fn check(&mut self, replicas: &[crate::Replica], pool: &PeerPool) -> usize {
        let now = Instant::now();
        let mut idle = Vec::new();
        let local: BTreeSet<ShardId> = replicas.iter().map(|r| r.spec.shard).collect();
        self.seen.retain(|shard, _| local.contains(shard));
        for replica in replicas {
            let quiescence = replica.quiescence();
            if quiescence.is_quiet() {
                continue;
            }
            let metrics = replica.metrics();
            if metrics.state != ServerState::Leader {
                self.seen.remove(&replica.spec.shard);
                continue;
            }
            let activity = Activity {
                epoch: quiescence.epoch(),
                last_index: metrics.last_log_index,
            };
            let since = match self.seen.get(&replica.spec.shard) {
                Some((seen, since)) if *seen == activity => *since,
                _ => {
                    self.seen.insert(replica.spec.shard, (activity, now));
                    continue;
                }
            };
            if now.duration_since(since) >= self.idle_after {
                if let Some(followers) = settled_followers(replica) {
                    idle.push((replica, activity, followers));
                }
            }
        }
        let asked = idle
            .into_iter()
            .map(|(replica, activity, followers)| async move {
                let quieted = quiet_followers(replica, &followers, activity, pool).await;
                quieted && replica.quiescence().go_quiet(Some(activity.epoch), None)
            });
        let quieted = futures::future::join_all(asked).await;
        quieted.into_iter().filter(|q| *q).count()
    }
}

/// The other members (voters and learners) of a group led by `replica`,
/// with their nodes, if the group is settled: everything is applied, every
/// member holds the leader's whole log, and no membership change is under
/// way.
fn settled_followers(replica: &crate::Replica) -> Option<Vec<(ReplicaId, NodeId)>> {
    let metrics = replica.metrics();
    let last = metrics.last_log_index;
    if metrics.last_applied.map(|l| l.index) != last {
        return None;
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() != 1 {
        return None;
    }
    let matched = metrics.replication.as_ref()?;
    let me = replica.spec.replica;
    let mut followers = Vec::new();
    for (id, node) in membership.nodes() {
        if *id == me {
            continue;
        }
        let holds_all = matched.get(id).is_some_and(|m| m.map(|l| l.index) == last);
        if !holds_all {
            return None;
        }
        followers.push((*id, node.node));
    }
    Some(followers)
}

/// Asks every follower to go quiet; true if all did.
async fn quiet_followers(
    replica: &crate::Replica,
    followers: &[(ReplicaId, NodeId)],
    activity: Activity,
    pool: &PeerPool,
) -> bool {
    let term = replica.metrics().current_term;
    let request = QuiesceRequest {
        leader: replica.spec.replica,
        term,
        last_index: activity.last_index,
    };
    let asks = followers.iter().map(|(id, node)| {
        let msg = message(replica.spec.shard, *id, &request);
        async move {
            let Ok(msg) = msg else { return false };
            let answer = pool
                .call(*node, RaftCallKind::Quiesce, msg, ASK_TIMEOUT)
                .await;
            answer.is_ok_and(|reply| unpack::<bool>(&reply).unwrap_or(false))
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .all(|quiet| quiet)
}

/// How long a quiesce, wake or ping call may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Wakes quiet followers whose leader's node has gone silent. Call
/// [`LeaderWatch::check`] about once per heartbeat interval.
pub struct LeaderWatch {
    /// A node silent this long counts as gone: an election timeout, the
    /// time after which an awake follower would have elected.
    silent_after: Duration,
    /// Per watched node: when it last answered a ping.
    last_heard: HashMap<NodeId, Instant>,
}

impl LeaderWatch {
    pub fn new(silent_after: Duration) -> Self {
        Self {
            silent_after,
            last_heard: HashMap::new(),
        }
    }

    /// Pings every node that leads a quiet follower here, and wakes the
    /// followers of nodes silent too long. Returns how many it woke.
    pub async fn check(&mut self, replicas: &[crate::Replica], pool: &PeerPool) -> usize {
        let leaders: BTreeSet<NodeId> = replicas
            .iter()
            .filter_map(|r| r.quiescence().quiet_leader())
            .collect();
        let now = Instant::now();
        self.last_heard.retain(|node, _| leaders.contains(node));
        for node in &leaders {
            // Quieting it was the last word from the node.
            self.last_heard.entry(*node).or_insert(now);
        }
        let timeout = self.silent_after.min(ASK_TIMEOUT);
        let pings = leaders
            .iter()
            .map(|node| async move { (*node, pool.ping(*node, timeout).await) });
        let answers = futures::future::join_all(pings).await;
        let heard_at = Instant::now();
        let mut silent = BTreeSet::new();
        for (node, answered) in answers {
            if answered {
                self.last_heard.insert(node, heard_at);
            } else if self
                .last_heard
                .get(&node)
                .is_some_and(|at| heard_at.duration_since(*at) >= self.silent_after)
            {
                silent.insert(node);
            }
        }
        let mut woken = 0;
        for replica in replicas {
            let quiescence = replica.quiescence();
            if quiescence
                .quiet_leader()
                .is_some_and(|node| silent.contains(&node))
            {
                quiescence.wake();
                woken += 1;
            }
        }
        if woken > 0 {
            tracing::info!(nodes = ?silent, woken, "leaders' nodes silent: their quiet followers woke");
        }
        for node in silent {
            self.last_heard.remove(&node);
        }
        woken
    }
}

/// After a replica starts: asks the leader its saved vote names to wake, so
/// that the leader's heartbeats reach it before its election timeout.
pub async fn wake_leader(replica: &crate::Replica, pool: &PeerPool) {
    let metrics = replica.metrics();
    let Some(leader) = metrics.current_leader.or_else(|| {
        let vote = &metrics.vote;
        vote.is_committed().then_some(vote.leader_id().node_id)
    }) else {
        return;
    };
    if leader == replica.spec.replica {
        return;
    }
    let membership = metrics.membership_config.membership();
    let Some(node) = membership.get_node(&leader).map(|n| n.node) else {
        return;
    };
    let Ok(msg) = message(replica.spec.shard, leader, &()) else {
        return;
    };
    if let Err(e) = pool.call(node, RaftCallKind::Wake, msg, ASK_TIMEOUT).await {
        tracing::debug!(shard = %replica.spec.shard, %leader, error = %e, "leader not woken");
    }
}
