//! The move controller (docs/design/elastic.md, "Moves"): on the node whose
//! meta replica leads, it carries every move of the map one step at a time,
//! starts the moves placement asks for ([`planner`]), and removes drained
//! nodes.
//! Each step reads the shard's membership from the shard's leader, decides
//! from what it sees (never from what it did before, so a new meta leader
//! resumes any move where it stands), and takes one idempotent action.

use std::collections::{BTreeSet, HashMap};
use std::sync::Weak;
use std::time::Duration;

use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::{
    self as wire, AddLearnerRequest, ChangeVotersRequest, ClusterMap, MembershipRequest,
    MembershipResponse, NodeStatusRequest, RemoveLearnersRequest, TransferLeadershipRequest,
};
use atoll_proto::ShardId;
use atoll_raft::meta_command::{Lifecycle, MetaCommand, MovePhase};
use atoll_raft::{Command, Outcome, Replica, WriteId};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::node::{Limits, Node};
use crate::shard_admin::on_leader;
use crate::{planner, splitter};

/// How often the controller looks at the moves.
const TICK: Duration = Duration::from_secs(1);
/// A learner this close to the leader's last log index is caught up: the
/// joint change that makes it a voter then commits without waiting on it.
const CAUGHT_UP_ENTRIES: u64 = 1_000;
/// How often a move's progress is written to the map while nothing else
/// about it changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// What one step of a move does, decided from the shard's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Add the new replica as a learner.
    AddLearner,
    /// The learner is catching up (or a change is in flight): wait.
    Wait {
        phase: MovePhase,
        matched: u64,
        last: u64,
    },
    /// The outgoing replica leads: hand leadership to this voter first.
    TransferLeader { to: u64 },
    /// Replace the voters with these, in one joint change.
    ChangeVoters { voters: Vec<u64> },
    /// The membership is the move's target: record it in the map.
    Finish,
}

/// The next step of `record`, given the shard's voters in the map
/// (`map_voters`, before the move) and its membership as its leader sees it.
pub(crate) fn decide(record: &wire::Move, map_voters: &[u64], seen: &MembershipResponse) -> Step {
    let (from, to) = (record.from_replica, record.to_replica);
    let mut target: Vec<u64> = map_voters.iter().copied().filter(|r| *r != from).collect();
    if to != 0 {
        target.push(to);
    }
    target.sort_unstable();
    let matched = (seen.progress.iter())
        .find(|p| p.replica_id == to)
        .map_or(0, |p| p.matched_index);
    let last = seen.last_log_index;
    let mut voters = seen.voters.clone();
    voters.sort_unstable();
    if !seen.committed {
        // A change is in flight; the leader finishes it.
        return Step::Wait {
            phase: MovePhase::ChangeVoters,
            matched,
            last,
        };
    }
    if !seen.old_voters.is_empty() {
        // A joint configuration left by a crash: finish it.
        return Step::ChangeVoters { voters: target };
    }
    if voters == target {
        return Step::Finish;
    }
    // A removal (no new replica) goes straight to the change of voters.
    if to != 0 {
        if voters.contains(&to) {
            // The new replica votes but the old one still does (an earlier
            // change of this move that did not complete).
            return Step::ChangeVoters { voters: target };
        }
        if !seen.learners.contains(&to) {
            return Step::AddLearner;
        }
        if matched == 0 || last.saturating_sub(matched) > CAUGHT_UP_ENTRIES {
            return Step::Wait {
                phase: MovePhase::CatchUp,
                matched,
                last,
            };
        }
    }
    if seen.leader_replica == from {
        if let Some(other) = target.iter().find(|r| **r != to && voters.contains(r)) {
            return Step::TransferLeader { to: *other };
        }
    }
    Step::ChangeVoters { voters: target }
}

/// Runs the controller while the node lives.
pub(crate) async fn run(weak: Weak<Node>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: HashMap<u64, (Instant, MovePhase, String)> = HashMap::new();
    let mut stalls: HashMap<u64, (Instant, Observed)> = HashMap::new();
    let mut liveness = Liveness::default();
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let Some(meta) = node.replica(ShardId::META) else {
            continue;
        };
        if meta.leader() != Some(meta.spec.replica) {
            reported.clear();
            stalls.clear();
            liveness = Liveness::default();
            continue;
        }
        let map = node.map();
        let silent = liveness
            .probe(&node, &map, node.config().cluster.dead_after)
            .await;
        node.set_placement_view(PlacementView {
            silent: silent.clone(),
            sizes: liveness.sizes.clone(),
        });
        record_incarnations(&node, &meta, &liveness.incarnations.unrecorded).await;
        reported.retain(|id, _| map.moves.iter().any(|m| m.id == *id));
        stalls.retain(|id, _| map.moves.iter().any(|m| m.id == *id));
        for record in &map.moves {
            let mut watch = Watch {
                reported: &mut reported,
                stalls: &mut stalls,
            };
            advance(&node, &meta, &map, record, &mut watch).await;
        }
        for record in &map.splits {
            splitter::advance(&node, &meta, &map, record).await;
        }
        let split_bytes = node.config().cluster.split_bytes.0;
        splitter::split_large(&node, &meta, &map, &liveness.sizes, split_bytes).await;
        start_planned(&node, &meta, &map, &silent).await;
        remove_drained(&node, &meta, &map).await;
    }
}

/// What the meta leader's controller last learned that placement needs
/// beyond the map: the silent nodes and each shard's size.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlacementView {
    pub silent: BTreeSet<u64>,
    /// Bytes of each shard's largest replica.
    pub sizes: HashMap<u64, u64>,
}

/// The moves the controller would start next, as `PlacementPlan` answers
/// on the meta leader.
pub(crate) fn plan_now(node: &Node) -> wire::PlacementPlanResponse {
    let map = node.map();
    let view = node.placement_view();
    let (moves, error) = match planner::plan(&map, &view.silent) {
        Ok(planned) => (
            planned
                .into_iter()
                .map(|p| wire::PlannedMove {
                    shard_id: p.shard.get(),
                    from_node: p.from_node,
                    to_node: p.to_node,
                    reason: p.reason.name().into(),
                    // A removal copies nothing.
                    bytes: match p.to_node {
                        0 => 0,
                        _ => view.sizes.get(&p.shard.get()).copied().unwrap_or(0),
                    },
                })
                .collect(),
            String::new(),
        ),
        Err(why) => (Vec::new(), why),
    };
    wire::PlacementPlanResponse {
        map_version: map.map_version,
        paused: map.placement_paused,
        moves,
        silent_nodes: view.silent.into_iter().collect(),
        error,
    }
}

/// Begins the moves placement asks for, most urgent first, within the
/// limits on moves ([`move_limits`]); none while placement is paused.
async fn start_planned(node: &Node, meta: &Replica, map: &ClusterMap, silent: &BTreeSet<u64>) {
    if map.placement_paused {
        return;
    }
    let planned = match planner::plan(map, silent) {
        Ok(planned) => planned,
        Err(why) => {
            tracing::debug!(%why, "no placement target");
            return;
        }
    };
    // Each move is a copy of a shard sent by its leader (at the leader's
    // snapshot rate) and written by the new replica's node.
    let Limits {
        max_moves,
        max_moves_into_node: max_into_node,
        ..
    } = Limits::of(map, node.config());
    let mut in_flight = map.moves.len();
    let mut into: HashMap<u64, usize> = HashMap::new();
    for m in &map.moves {
        *into.entry(m.to_node).or_default() += 1;
    }
    for p in planned {
        if in_flight >= max_moves {
            break;
        }
        // A removal (to node 0) copies nothing.
        let receiving = into.entry(p.to_node).or_default();
        if p.to_node != 0 && *receiving >= max_into_node {
            continue;
        }
        let command = Command::Meta(MetaCommand::BeginMove {
            shard: p.shard.get(),
            epoch: p.epoch,
            from_replica: p.from_replica,
            to_node: p.to_node,
            reason: p.reason.name().into(),
            now_ms: crate::node::now_ms(),
        });
        match node
            .propose_command(meta, command, WriteId::Untracked)
            .await
        {
            Ok(Outcome::MapChanged { allocated, .. }) => {
                tracing::info!(shard = %p.shard, r#move = ?allocated, from = p.from_node, to = p.to_node, reason = p.reason.name(), "move started");
                in_flight += 1;
                *receiving += 1;
            }
            other => tracing::debug!(shard = %p.shard, ?other, "move not started"),
        }
    }
}

/// When each node last answered the meta leader. A new meta leader starts
/// every node's silence clock at zero, which can only delay a repair,
/// never cause a wrong one.
#[derive(Default)]
struct Liveness {
    last_seen: HashMap<u64, Instant>,
    silent: BTreeSet<u64>,
    channels: HashMap<String, Channel>,
    /// Bytes of each shard's largest replica, as the last probe found them.
    sizes: HashMap<u64, u64>,
    incarnations: Incarnations,
}

/// The incarnations of the nodes' data directories, as the probes hear them.
#[derive(Default)]
struct Incarnations {
    /// Nodes the last probe heard with an incarnation the map lacks.
    unrecorded: Vec<(u64, u64)>,
    /// Nodes that answered from a data directory the map does not know
    /// (reported once each).
    replaced: BTreeSet<u64>,
}

impl Liveness {
    /// Asks every node that is not removed for its status (at most
    /// [`PROBE_TIMEOUT`] each, all at once); returns the nodes silent for
    /// longer than `dead_after`.
    async fn probe(
        &mut self,
        node: &Node,
        map: &ClusterMap,
        dead_after: Duration,
    ) -> BTreeSet<u64> {
        let now = Instant::now();
        let others: Vec<(u64, String)> = (map.nodes.iter())
            .filter(|n| n.id != node.id.get() && Lifecycle::of(n) != Lifecycle::Removed)
            .map(|n| (n.id, n.address.clone()))
            .collect();
        let calls = others.iter().map(|(id, address)| {
            let channel = self
                .channels
                .entry(address.clone())
                .or_insert_with(|| lazy_channel(address))
                .clone();
            async move {
                let mut client = ClusterClient::new(channel);
                let call = client.node_status(NodeStatusRequest {});
                let status = match tokio::time::timeout(PROBE_TIMEOUT, call).await {
                    Ok(Ok(status)) => Some(status.into_inner()),
                    _ => None,
                };
                (*id, status)
            }
        });
        self.sizes.clear();
        let mut sized = |status: &wire::NodeStatusResponse| {
            for r in &status.replicas {
                let size = self.sizes.entry(r.shard_id).or_default();
                *size = (*size).max(r.approximate_bytes);
            }
        };
        let own = crate::cluster_service::node_status(node);
        sized(&own);
        self.incarnations.unrecorded.clear();
        self.incarnations.note(map, node.id.get(), own.incarnation);
        for (id, status) in futures::future::join_all(calls).await {
            let seen = self.last_seen.entry(id).or_insert(now);
            // A node that answers from another data directory than the one
            // the map records lost its data: it counts as silent, so its
            // replicas are repaired elsewhere.
            let status = status.filter(|s| self.incarnations.note(map, id, s.incarnation));
            if let Some(status) = status {
                *seen = now;
                sized(&status);
            }
        }
        self.last_seen
            .retain(|id, _| others.iter().any(|(o, _)| o == id));
        let silent: BTreeSet<u64> = (self.last_seen.iter())
            .filter(|(_, seen)| now.duration_since(**seen) > dead_after)
            .map(|(id, _)| *id)
            .collect();
        for id in silent.difference(&self.silent) {
            tracing::warn!(
                node = id,
                ?dead_after,
                "node silent: its replicas are repaired elsewhere"
            );
        }
        for id in self.silent.difference(&silent) {
            tracing::info!(node = id, "node answers again");
        }
        self.silent = silent.clone();
        silent
    }
}

impl Incarnations {
    /// Checks the incarnation node `id` answered with against the map's:
    /// true if it is the data directory the map knows (or the map knows
    /// none yet, which [`Incarnations::unrecorded`] then lists).
    fn note(&mut self, map: &ClusterMap, id: u64, incarnation: u64) -> bool {
        let known = map
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(0, |n| n.incarnation);
        if known == 0 || incarnation == 0 {
            if incarnation != 0 {
                self.unrecorded.push((id, incarnation));
            }
            return true;
        }
        let same = known == incarnation;
        if !same && self.replaced.insert(id) {
            tracing::error!(
                node = id,
                known = format_args!("{known:#018x}"),
                answered = format_args!("{incarnation:#018x}"),
                "node answers from another data directory than the one the cluster knows: \
                 its data was lost; it counts as silent and its Raft calls are refused"
            );
        }
        if same {
            self.replaced.remove(&id);
        }
        same
    }
}

/// Records the incarnations the last probe heard for nodes whose map entry
/// has none yet.
async fn record_incarnations(node: &Node, meta: &Replica, unrecorded: &[(u64, u64)]) {
    for &(id, incarnation) in unrecorded {
        let command = Command::Meta(MetaCommand::SetIncarnation {
            node: id,
            incarnation,
        });
        match node
            .propose_command(meta, command, WriteId::Untracked)
            .await
        {
            Ok(Outcome::MapChanged { .. }) => {
                tracing::info!(node = id, "recorded the node's data directory incarnation");
            }
            other => tracing::warn!(node = id, ?other, "recording a node's incarnation"),
        }
    }
}

/// How long the meta leader waits for a node's status in one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn lazy_channel(address: &str) -> Channel {
    match Channel::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint.connect_timeout(PROBE_TIMEOUT).connect_lazy(),
        // An address that is no URI never answers.
        Err(_) => Channel::from_static("http://0.0.0.0:1").connect_lazy(),
    }
}

/// Removes draining nodes that hold no replica any more.
async fn remove_drained(node: &Node, meta: &Replica, map: &ClusterMap) {
    let holds = |id: u64| {
        (map.meta.iter().chain(&map.shards))
            .flat_map(|s| &s.replicas)
            .any(|r| r.node_id == id)
            || map
                .moves
                .iter()
                .any(|m| m.to_node == id || m.from_node == id)
    };
    let drained =
        (map.nodes.iter()).filter(|n| Lifecycle::of(n) == Lifecycle::Draining && !holds(n.id));
    for drained in drained {
        let command = Command::Meta(MetaCommand::SetNodeState {
            node: drained.id,
            state: Lifecycle::Removed,
            dead: false,
        });
        match node
            .propose_command(meta, command, WriteId::Untracked)
            .await
        {
            Ok(Outcome::MapChanged { .. }) => {
                tracing::info!(node = drained.id, "node drained and removed");
            }
            other => tracing::debug!(node = drained.id, ?other, "removing a drained node"),
        }
    }
}

/// One step of one move.
async fn advance(
    node: &Node,
    meta: &Replica,
    map: &ClusterMap,
    record: &wire::Move,
    watch: &mut Watch<'_>,
) {
    let reported = &mut *watch.reported;
    let shard = ShardId(record.shard_id);
    let Some(voters) = map
        .shard(shard)
        .map(|s| s.replicas.iter().map(|r| r.replica_id).collect::<Vec<_>>())
    else {
        return;
    };
    let seen = on_leader(map, shard, |mut c| async move {
        c.membership(MembershipRequest {
            shard_id: shard.get(),
        })
        .await
        .map(|r| r.into_inner())
    })
    .await;
    let seen = match seen {
        Ok(seen) => seen,
        Err(why) => {
            let stuck = format!("the shard's leader did not answer: {why}");
            let seen = Progress {
                phase: MovePhase::of(record),
                matched: 0,
                last: 0,
                sent: record.bytes_sent,
            };
            report(node, meta, record, seen, stuck, reported).await;
            return;
        }
    };
    let target_up = map
        .node(atoll_proto::NodeId(record.to_node))
        .is_some_and(|n| Lifecycle::of(n) == Lifecycle::Up);
    let removal = record.to_node == 0;
    if !removal && !target_up && !seen.voters.contains(&record.to_replica) {
        abort(node, meta, map, record, &seen, "its target is not up").await;
        return;
    }
    let observed = Observed::of(record, &seen);
    let idle = match watch.stalls.get(&record.id) {
        Some((since, last)) if *last == observed => since.elapsed(),
        _ => {
            watch.stalls.insert(record.id, (Instant::now(), observed));
            Duration::ZERO
        }
    };
    let abort_after = node.config().cluster.move_abort_after;
    if idle > abort_after && observed.abortable() {
        let why = format!(
            "no progress for {} s (cluster.move_abort_after): the learner matched {} of {} entries",
            idle.as_secs(),
            observed.matched,
            seen.last_log_index
        );
        abort(node, meta, map, record, &seen, &why).await;
        return;
    }
    let step = decide(record, &voters, &seen);
    tracing::debug!(shard = %shard, r#move = record.id, ?step, "move step");
    let phase_now = MovePhase::of(record);
    let result = match &step {
        Step::AddLearner => {
            let request = AddLearnerRequest {
                shard_id: shard.get(),
                replica_id: record.to_replica,
                node_id: record.to_node,
            };
            on_leader(map, shard, |mut c| async move {
                c.add_learner(request).await.map(|_| ())
            })
            .await
            .map(|()| (MovePhase::CatchUp, 0, 0))
        }
        Step::Wait {
            phase,
            matched,
            last,
        } => Ok((*phase, *matched, *last)),
        Step::TransferLeader { to } => {
            let request = TransferLeadershipRequest {
                shard_id: shard.get(),
                to_replica: *to,
            };
            on_leader(map, shard, |mut c| async move {
                c.transfer_leadership(request).await.map(|_| ())
            })
            .await
            .map(|()| {
                (
                    MovePhase::ChangeVoters,
                    seen.last_log_index,
                    seen.last_log_index,
                )
            })
        }
        Step::ChangeVoters { voters } => {
            tracing::info!(shard = %shard, r#move = record.id, ?voters, bytes_sent = observed.sent, "changing the shard's voters");
            let request = ChangeVotersRequest {
                shard_id: shard.get(),
                voters: voters.clone(),
            };
            on_leader(map, shard, |mut c| {
                let request = request.clone();
                async move { c.change_voters(request).await.map(|_| ()) }
            })
            .await
            .map(|()| {
                (
                    MovePhase::ChangeVoters,
                    seen.last_log_index,
                    seen.last_log_index,
                )
            })
        }
        Step::Finish => {
            let command = Command::Meta(MetaCommand::FinishMove { id: record.id });
            match node
                .propose_command(meta, command, WriteId::Untracked)
                .await
            {
                Ok(Outcome::MapChanged { .. }) => {
                    tracing::info!(shard = %shard, r#move = record.id, from = record.from_replica, to = record.to_replica, "move finished");
                }
                other => {
                    tracing::warn!(shard = %shard, r#move = record.id, ?other, "finishing a move");
                }
            }
            return;
        }
    };
    match result {
        Ok((phase, matched, last)) => {
            // A move that waits with no reason of its own says how long it
            // has made no progress, so a drain that never ends explains
            // itself.
            let stuck = if idle >= STALL_SHOWN_AFTER.min(abort_after / 2) {
                let seen_so_far = match removal {
                    true => "the change of voters has not completed".to_string(),
                    false => format!(
                        "the learner matched {matched} of {last} entries, and the shard's \
                         leader sent it no more bytes ({} so far)",
                        observed.sent
                    ),
                };
                format!(
                    "no progress for {} s: {seen_so_far}; given up after {} s \
                     (cluster.move_abort_after) unless it advances",
                    idle.as_secs(),
                    abort_after.as_secs()
                )
            } else {
                String::new()
            };
            let seen = Progress {
                phase,
                matched,
                last,
                sent: observed.sent,
            };
            report(node, meta, record, seen, stuck, reported).await
        }
        Err(why) => {
            let seen = Progress {
                phase: phase_now,
                matched: 0,
                last: 0,
                sent: observed.sent,
            };
            report(node, meta, record, seen, why, reported).await
        }
    }
}

/// Gives up a move (`why`) whose new replica is not a voter: its learner
/// leaves the shard, then the record goes.
async fn abort(
    node: &Node,
    meta: &Replica,
    map: &ClusterMap,
    record: &wire::Move,
    seen: &MembershipResponse,
    why: &str,
) {
    let shard = ShardId(record.shard_id);
    if seen.learners.contains(&record.to_replica) {
        let request = RemoveLearnersRequest {
            shard_id: shard.get(),
            learners: vec![record.to_replica],
        };
        let removed = on_leader(map, shard, |mut c| {
            let request = request.clone();
            async move { c.remove_learners(request).await.map(|_| ()) }
        })
        .await;
        if let Err(why) = removed {
            tracing::info!(shard = %shard, r#move = record.id, %why, "removing the learner of an aborted move");
            return;
        }
    }
    let command = Command::Meta(MetaCommand::AbortMove { id: record.id });
    match node
        .propose_command(meta, command, WriteId::Untracked)
        .await
    {
        Ok(Outcome::MapChanged { .. }) => {
            tracing::warn!(shard = %shard, r#move = record.id, to = record.to_node, %why, "move aborted");
        }
        other => tracing::debug!(?other, "aborting a move"),
    }
}

/// What the controller tracks of each move while it runs.
struct Watch<'a> {
    /// When each move's progress was last written, in which phase, with
    /// which stuck reason.
    reported: &'a mut HashMap<u64, (Instant, MovePhase, String)>,
    /// Since when each move has shown the same [`Observed`].
    stalls: &'a mut HashMap<u64, (Instant, Observed)>,
}

/// What a move's progress is judged by: any change is progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observed {
    learner: bool,
    voter: bool,
    joint: bool,
    committed: bool,
    matched: u64,
    /// Bytes the shard's leader sent the new replica.
    sent: u64,
}

impl Observed {
    fn of(record: &wire::Move, seen: &MembershipResponse) -> Observed {
        let to = record.to_replica;
        let progress = seen.progress.iter().find(|p| p.replica_id == to);
        Observed {
            learner: seen.learners.contains(&to),
            voter: seen.voters.contains(&to),
            joint: !seen.old_voters.is_empty(),
            committed: seen.committed,
            matched: progress.map_or(0, |p| p.matched_index),
            sent: progress.map_or(0, |p| p.bytes_sent),
        }
    }

    /// Whether the move may still be given up: its new replica votes in
    /// no configuration, and no change of voters is in flight.
    fn abortable(&self) -> bool {
        !self.voter && !self.joint && self.committed
    }
}

/// A move that has made no progress for this long (or for half of
/// `cluster.move_abort_after`, if shorter) shows it in its stuck reason.
const STALL_SHOWN_AFTER: Duration = Duration::from_secs(30);

/// What one step of the controller saw of a move.
struct Progress {
    phase: MovePhase,
    /// The new replica's matched index, and the leader's last log index.
    matched: u64,
    last: u64,
    /// Bytes the shard's leader sent the new replica.
    sent: u64,
}

/// Writes what the controller saw of a move to the map: at once when its
/// phase or stuck reason changes, else every [`PROGRESS_EVERY`].
async fn report(
    node: &Node,
    meta: &Replica,
    record: &wire::Move,
    seen: Progress,
    stuck: String,
    reported: &mut HashMap<u64, (Instant, MovePhase, String)>,
) {
    let phase = seen.phase;
    let due = match reported.get(&record.id) {
        Some((at, p, s)) => *p != phase || *s != stuck || at.elapsed() >= PROGRESS_EVERY,
        None => true,
    };
    if !due {
        return;
    }
    if !stuck.is_empty() {
        tracing::info!(shard = record.shard_id, r#move = record.id, %stuck, "move not advancing");
    }
    reported.insert(record.id, (Instant::now(), phase, stuck.clone()));
    let command = Command::Meta(MetaCommand::ReportMove {
        id: record.id,
        state: phase,
        matched_index: seen.matched,
        leader_last_index: seen.last,
        bytes_sent: seen.sent,
        stuck,
    });
    if let Err(e) = node
        .propose_command(meta, command, WriteId::Untracked)
        .await
    {
        tracing::debug!(error = %e, "recording a move's progress");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> wire::Move {
        wire::Move {
            id: 1,
            shard_id: 1,
            from_replica: 10,
            to_replica: 40,
            to_node: 4,
            ..Default::default()
        }
    }

    fn seen(voters: &[u64], learners: &[u64], matched: u64, leader: u64) -> MembershipResponse {
        MembershipResponse {
            leader_replica: leader,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            committed: true,
            last_log_index: 5_000,
            progress: vec![wire::ReplicaProgress {
                replica_id: 40,
                node_id: 4,
                matched_index: matched,
                bytes_sent: 0,
            }],
            ..Default::default()
        }
    }

    const VOTERS: [u64; 3] = [10, 20, 30];

    #[test]
    fn every_observation_of_the_membership_has_one_next_step() {
        let r = record();
        assert_eq!(
            decide(&r, &VOTERS, &seen(&VOTERS, &[], 0, 20)),
            Step::AddLearner
        );
        assert!(matches!(
            decide(&r, &VOTERS, &seen(&VOTERS, &[40], 100, 20)),
            Step::Wait {
                phase: MovePhase::CatchUp,
                ..
            }
        ));
        let target = vec![20, 30, 40];
        assert_eq!(
            decide(&r, &VOTERS, &seen(&VOTERS, &[40], 4_500, 20)),
            Step::ChangeVoters {
                voters: target.clone()
            }
        );
        assert_eq!(
            decide(&r, &VOTERS, &seen(&VOTERS, &[40], 4_500, 10)),
            Step::TransferLeader { to: 20 },
            "the outgoing replica hands leadership on first"
        );
        let mut joint = seen(&[20, 30, 40], &[], 5_000, 20);
        joint.old_voters = VOTERS.to_vec();
        assert_eq!(
            decide(&r, &VOTERS, &joint),
            Step::ChangeVoters {
                voters: target.clone()
            },
            "a joint configuration is finished"
        );
        let mut in_flight = seen(&VOTERS, &[40], 5_000, 20);
        in_flight.committed = false;
        assert!(matches!(decide(&r, &VOTERS, &in_flight), Step::Wait { .. }));
        assert_eq!(
            decide(&r, &VOTERS, &seen(&[20, 30, 40], &[], 5_000, 20)),
            Step::Finish
        );
        assert_eq!(
            decide(&r, &VOTERS, &seen(&[10, 20, 30, 40], &[], 5_000, 20)),
            Step::ChangeVoters { voters: target }
        );
    }

    #[test]
    fn a_replica_added_to_a_short_shard_leaves_the_others_in_place() {
        let r = wire::Move {
            from_replica: 0,
            ..record()
        };
        assert_eq!(
            decide(&r, &[20, 30], &seen(&[20, 30], &[40], 4_999, 20)),
            Step::ChangeVoters {
                voters: vec![20, 30, 40]
            }
        );
        assert_eq!(
            decide(&r, &[20, 30], &seen(&[20, 30, 40], &[], 5_000, 20)),
            Step::Finish
        );
    }

    #[test]
    fn a_removal_changes_the_voters_without_a_learner() {
        let r = wire::Move {
            to_replica: 0,
            to_node: 0,
            ..record()
        };
        let four = [10, 20, 30, 40];
        assert_eq!(
            decide(&r, &four, &seen(&four, &[], 0, 20)),
            Step::ChangeVoters {
                voters: vec![20, 30, 40]
            }
        );
        assert_eq!(
            decide(&r, &four, &seen(&four, &[], 0, 10)),
            Step::TransferLeader { to: 20 },
            "a leader that is removed hands leadership on first"
        );
        assert_eq!(
            decide(&r, &four, &seen(&[20, 30, 40], &[], 0, 20)),
            Step::Finish
        );
    }
}
