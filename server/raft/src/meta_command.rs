//! Changes of the cluster map after bootstrap (docs/design/elastic.md,
//! "Meta commands"). Each is one command in the meta shard's log, checked
//! in apply against the map it applies to, so an operator's command, a
//! node's join and the controller's steps interleave without
//! read-modify-write races; a refused command changes nothing and says why.

use std::collections::BTreeSet;

use atoll_proto::v1::{
    ClusterMap, Move, MoveState, Node, NodeState, PlacementLimits, Replica, Shard, Split,
    SplitReplica,
};
use serde::{Deserialize, Serialize};

/// A node's place in its life: `Joining → Up ⇄ Draining → Removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    Joining,
    Up,
    Draining,
    Removed,
}

impl Lifecycle {
    /// The state a map stores for a node. Maps written before node states
    /// were used have every node unspecified, which means up.
    pub fn of(node: &Node) -> Lifecycle {
        NodeState::try_from(node.state)
            .ok()
            .and_then(Lifecycle::from_proto)
            .unwrap_or(Lifecycle::Up)
    }

    /// The lifecycle state a request names; none for `UNSPECIFIED`.
    pub fn from_proto(state: NodeState) -> Option<Lifecycle> {
        match state {
            NodeState::Joining => Some(Lifecycle::Joining),
            NodeState::Up => Some(Lifecycle::Up),
            NodeState::Draining => Some(Lifecycle::Draining),
            NodeState::Removed => Some(Lifecycle::Removed),
            NodeState::Unspecified => None,
        }
    }

    pub fn proto(self) -> NodeState {
        match self {
            Lifecycle::Joining => NodeState::Joining,
            Lifecycle::Up => NodeState::Up,
            Lifecycle::Draining => NodeState::Draining,
            Lifecycle::Removed => NodeState::Removed,
        }
    }
}

/// One change of the cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A new node: it gets the next node id (ids are never reused), in
    /// state `Joining`. A retry with the same `token` gets the same id.
    RegisterNode {
        island: String,
        address: String,
        capacity: u64,
        token: u64,
    },
    /// Moves a node along its lifecycle. `dead` removes a node from any
    /// state at once (one that will not come back); otherwise a node is
    /// removed only once drained, holding no replica.
    SetNodeState {
        node: u64,
        state: Lifecycle,
        dead: bool,
    },
    /// A node's relative capacity, which placement weighs.
    SetCapacity { node: u64, capacity: u64 },
    /// Starts moving `shard`'s replica `from_replica` (0: add one to a
    /// shard short of replicas) to node `to_node` (0: only remove it, from
    /// a shard with more replicas than it needs): a new replica id, and a
    /// move record in state `AddLearner`.
    BeginMove {
        shard: u64,
        epoch: u64,
        from_replica: u64,
        to_node: u64,
        reason: String,
        now_ms: u64,
    },
    /// What the controller saw of a move: its state, progress, and why it
    /// is stuck ("" when it is not). Proposed by earlier versions, applied
    /// still; the controller now proposes [`MetaCommand::ReportMove`].
    AdvanceMove {
        id: u64,
        state: MovePhase,
        matched_index: u64,
        leader_last_index: u64,
        stuck: String,
    },
    /// The shard's voters changed: the new replica replaces the old one in
    /// the map, the shard's epoch goes up, and the record goes.
    FinishMove { id: u64 },
    /// The move is given up (its learner already left the shard).
    AbortMove { id: u64 },
    /// Pauses or resumes placement: while paused no move starts.
    SetPlacement { paused: bool },
    /// Starts splitting data shard `shard` at hash `at`: the child gets
    /// the next shard id and each voter's child the next replica ids, in a
    /// split record.
    BeginSplit {
        shard: u64,
        epoch: u64,
        at: u64,
        reason: String,
        now_ms: u64,
    },
    /// What the controller saw of a split: why it is not advancing ("" when
    /// it is).
    AdvanceSplit { shard: u64, stuck: String },
    /// The split applied on the shard: the map shows the shard narrowed to
    /// below the split point and the child after it, both at the shard's
    /// epoch + 1, and the record goes.
    FinishSplit { shard: u64 },
    /// Records the incarnation of a node's data directory, the first time
    /// the meta leader hears it. Refused once another one is recorded: a
    /// node that lost its data directory does not come back under its id.
    SetIncarnation { node: u64, incarnation: u64 },
    /// What the controller saw of a move, with the bytes the shard's
    /// leader sent its new replica. Replaces `AdvanceMove`, which logs
    /// written before it still hold (a command's encoding never changes).
    ReportMove {
        id: u64,
        state: MovePhase,
        matched_index: u64,
        leader_last_index: u64,
        bytes_sent: u64,
        stuck: String,
    },
    /// Sets the limits on moves that are not 0 and keeps the others;
    /// with `reset`, all of them first go back to the node config.
    SetPlacementLimits {
        max_moves: u32,
        max_moves_into_node: u32,
        snapshot_rate: u64,
        reset: bool,
    },
}

/// The lowest snapshot rate an operator may set: 64 KiB/s copies a GiB in
/// about four and a half hours.
pub const MIN_SNAPSHOT_RATE: u64 = 64 << 10;

/// The states of a move (`atoll.v1.MoveState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovePhase {
    AddLearner,
    CatchUp,
    ChangeVoters,
}

impl MovePhase {
    /// The phase a move record is in.
    pub fn of(record: &Move) -> MovePhase {
        match MoveState::try_from(record.state) {
            Ok(MoveState::CatchUp) => MovePhase::CatchUp,
            Ok(MoveState::ChangeVoters) => MovePhase::ChangeVoters,
            Ok(MoveState::AddLearner | MoveState::Unspecified) | Err(_) => MovePhase::AddLearner,
        }
    }

    pub fn proto(self) -> MoveState {
        match self {
            MovePhase::AddLearner => MoveState::AddLearner,
            MovePhase::CatchUp => MoveState::CatchUp,
            MovePhase::ChangeVoters => MoveState::ChangeVoters,
        }
    }
}

impl MetaCommand {
    /// The command's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaCommand::RegisterNode { .. } => "register-node",
            MetaCommand::SetNodeState { .. } => "set-node-state",
            MetaCommand::SetCapacity { .. } => "set-capacity",
            MetaCommand::BeginMove { .. } => "begin-move",
            MetaCommand::AdvanceMove { .. } => "advance-move",
            MetaCommand::FinishMove { .. } => "finish-move",
            MetaCommand::AbortMove { .. } => "abort-move",
            MetaCommand::SetPlacement { .. } => "set-placement",
            MetaCommand::BeginSplit { .. } => "begin-split",
            MetaCommand::AdvanceSplit { .. } => "advance-split",
            MetaCommand::FinishSplit { .. } => "finish-split",
            MetaCommand::SetIncarnation { .. } => "set-incarnation",
            MetaCommand::ReportMove { .. } => "report-move",
            MetaCommand::SetPlacementLimits { .. } => "set-placement-limits",
        }
    }
}

/// What a meta command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The map changed (its version is one more than before).
    Changed,
    /// The map already said so: nothing changed.
    AlreadyDone,
}

/// Whether node `node` holds a replica of any shard of `map`, or is
/// receiving one.
fn holds_replicas(map: &ClusterMap, node: u64) -> bool {
    (map.meta.iter().chain(&map.shards))
        .flat_map(|shard| &shard.replicas)
        .any(|replica| replica.node_id == node)
        || map.moves.iter().any(|m| m.to_node == node)
}

fn move_index(map: &ClusterMap, id: u64) -> Result<usize, String> {
    map.moves
        .iter()
        .position(|m| m.id == id)
        .ok_or_else(|| format!("move {id} is not in progress"))
}

/// Checks a new move of `shard` and records it; returns its id.
fn begin_move(map: &mut ClusterMap, command: &MetaCommand) -> Result<u64, String> {
    let MetaCommand::BeginMove {
        shard,
        epoch,
        from_replica,
        to_node,
        reason,
        now_ms,
    } = command
    else {
        return Err("not a move".into());
    };
    if map.moves.iter().any(|m| m.shard_id == *shard) {
        return Err(format!("shard {shard} already has a move in progress"));
    }
    if map.splits.iter().any(|s| s.shard_id == *shard) {
        return Err(format!("shard {shard} is splitting; it moves once split"));
    }
    let found = (map.meta.iter().chain(&map.shards)).find(|s| s.id == *shard);
    let found = found.ok_or_else(|| format!("shard {shard} is not in the map"))?;
    if found.epoch != *epoch {
        return Err(format!(
            "shard {shard} is at epoch {}, not {epoch}: it changed meanwhile",
            found.epoch
        ));
    }
    let from_node = match *from_replica {
        0 => 0,
        id => {
            found
                .replicas
                .iter()
                .find(|r| r.replica_id == id)
                .ok_or_else(|| format!("replica {id} is not a replica of shard {shard}"))?
                .node_id
        }
    };
    match *to_node {
        0 => check_removal(map, found, *from_replica)?,
        _ => check_addition(map, found, *from_replica, *to_node)?,
    }
    let id = map.next_move_id.max(1);
    let to_replica = match *to_node {
        0 => 0,
        _ => {
            map.next_replica_id += 1;
            map.next_replica_id - 1
        }
    };
    map.next_move_id = id + 1;
    map.moves.push(Move {
        id,
        shard_id: *shard,
        epoch: *epoch,
        from_replica: *from_replica,
        from_node,
        to_replica,
        to_node: *to_node,
        state: MoveState::AddLearner as i32,
        reason: reason.clone(),
        started_ms: *now_ms,
        ..Default::default()
    });
    Ok(id)
}

/// Whether `shard` may lose replica `from_replica` with none in its place:
/// only a shard with more replicas than it needs (the meta shard after
/// nodes left; a data shard above the replication factor). Which replica
/// goes is placement's choice, which keeps the islands spread.
fn check_removal(map: &ClusterMap, shard: &Shard, from_replica: u64) -> Result<(), String> {
    let id = shard.id;
    if from_replica == 0 {
        return Err(format!(
            "a move of shard {id} names neither a replica to remove nor a node to add one on"
        ));
    }
    let floor = match id {
        0 => 1,
        _ => map.replication_factor.max(1) as usize,
    };
    if shard.replicas.len() <= floor {
        return Err(format!(
            "shard {id} has {} replicas; removing one would leave it below {floor}",
            shard.replicas.len()
        ));
    }
    Ok(())
}

/// Whether a replica of `shard` may go to `to_node` (in place of
/// `from_replica`, if not 0).
fn check_addition(
    map: &ClusterMap,
    shard: &Shard,
    from_replica: u64,
    to_node: u64,
) -> Result<(), String> {
    let id = shard.id;
    let target = map
        .nodes
        .iter()
        .find(|n| n.id == to_node)
        .ok_or_else(|| format!("node {to_node} is not in the cluster"))?;
    if Lifecycle::of(target) != Lifecycle::Up {
        return Err(format!(
            "node {to_node} is {:?}; replicas move only to nodes that are up",
            Lifecycle::of(target)
        ));
    }
    if shard.replicas.iter().any(|r| r.node_id == to_node) {
        return Err(format!(
            "node {to_node} already holds a replica of shard {id}"
        ));
    }
    // Placement spreads a shard over as many islands as it can; a move
    // must not undo that.
    let island_of = |node: u64| map.nodes.iter().find(|n| n.id == node).map(|n| &n.island);
    let before: BTreeSet<&String> = (shard.replicas.iter())
        .filter_map(|r| island_of(r.node_id))
        .collect();
    let after: BTreeSet<&String> = (shard.replicas.iter())
        .filter(|r| r.replica_id != from_replica)
        .filter_map(|r| island_of(r.node_id))
        .chain([&target.island])
        .collect();
    if after.len() < before.len() {
        return Err(format!(
            "the move would leave shard {id} on {} islands instead of {}: island {:?} already holds one of its replicas",
            after.len(),
            before.len(),
            target.island
        ));
    }
    Ok(())
}

/// The shard's voters after move `record`: the new replica, if any,
/// instead of the old one.
fn finish_move(map: &mut ClusterMap, record: &Move) -> Result<(), String> {
    let shard = (map.meta.iter_mut().chain(map.shards.iter_mut()))
        .find(|s| s.id == record.shard_id)
        .ok_or_else(|| format!("shard {} is not in the map", record.shard_id))?;
    if shard.epoch != record.epoch {
        return Err(format!(
            "shard {} is at epoch {}, not the move's {}",
            shard.id, shard.epoch, record.epoch
        ));
    }
    shard
        .replicas
        .retain(|r| r.replica_id != record.from_replica);
    if record.to_replica != 0 {
        shard.replicas.push(Replica {
            replica_id: record.to_replica,
            node_id: record.to_node,
        });
    }
    shard.epoch += 1;
    Ok(())
}

/// The id the next shard gets: above every shard id the map has ever
/// held.
fn next_shard_id(map: &ClusterMap) -> u64 {
    let above_all = (map.shards.iter().map(|s| s.id + 1))
        .chain(map.splits.iter().map(|s| s.child_shard_id + 1))
        .max()
        .unwrap_or(1);
    map.next_shard_id.max(above_all)
}

/// Checks a new split and records it; returns the child's shard id.
fn begin_split(map: &mut ClusterMap, command: &MetaCommand) -> Result<u64, String> {
    let MetaCommand::BeginSplit {
        shard,
        epoch,
        at,
        reason,
        now_ms,
    } = command
    else {
        return Err("not a split".into());
    };
    let found = (map.shards.iter()).find(|s| s.id == *shard);
    let found = found.ok_or_else(|| format!("shard {shard} is not a data shard of the map"))?;
    if found.epoch != *epoch {
        return Err(format!(
            "shard {shard} is at epoch {}, not {epoch}: it changed meanwhile",
            found.epoch
        ));
    }
    if map.splits.iter().any(|s| s.shard_id == *shard) {
        return Err(format!("shard {shard} is already splitting"));
    }
    if map.moves.iter().any(|m| m.shard_id == *shard) {
        return Err(format!(
            "shard {shard} has a move in progress; it splits once moved"
        ));
    }
    if *at <= found.range_start || *at > found.range_last {
        return Err(format!(
            "split point {at:#x} is not inside shard {shard}'s range [{:#x}, {:#x}] (it must \
             leave both halves at least one hash)",
            found.range_start, found.range_last
        ));
    }
    if found.replicas.is_empty() {
        return Err(format!("shard {shard} has no replicas"));
    }
    let child = next_shard_id(map);
    let mut next_replica = map.next_replica_id;
    let replicas = (found.replicas.iter())
        .map(|r| {
            next_replica += 1;
            SplitReplica {
                parent_replica: r.replica_id,
                child_replica: next_replica - 1,
                node_id: r.node_id,
            }
        })
        .collect();
    map.splits.push(Split {
        shard_id: *shard,
        epoch: *epoch,
        at: *at,
        child_shard_id: child,
        replicas,
        reason: reason.clone(),
        started_ms: *now_ms,
        stuck: String::new(),
    });
    map.next_replica_id = next_replica;
    map.next_shard_id = child + 1;
    Ok(child)
}

/// The map after split `record`: the shard narrowed, its child after it.
fn finish_split(map: &mut ClusterMap, record: &Split) -> Result<(), String> {
    let at = (map.shards.iter())
        .position(|s| s.id == record.shard_id)
        .ok_or_else(|| format!("shard {} is not in the map", record.shard_id))?;
    let parent = &mut map.shards[at];
    if parent.epoch != record.epoch {
        return Err(format!(
            "shard {} is at epoch {}, not the split's {}",
            parent.id, parent.epoch, record.epoch
        ));
    }
    let child = Shard {
        id: record.child_shard_id,
        range_start: record.at,
        range_last: parent.range_last,
        replicas: (record.replicas.iter())
            .map(|r| Replica {
                replica_id: r.child_replica,
                node_id: r.node_id,
            })
            .collect(),
        epoch: parent.epoch + 1,
    };
    parent.range_last = record.at - 1;
    parent.epoch += 1;
    map.shards.insert(at + 1, child);
    Ok(())
}

fn split_index(map: &ClusterMap, shard: u64) -> Result<usize, String> {
    map.splits
        .iter()
        .position(|s| s.shard_id == shard)
        .ok_or_else(|| format!("shard {shard} has no split in progress"))
}

fn node_mut(map: &mut ClusterMap, id: u64) -> Result<&mut Node, String> {
    map.nodes
        .iter_mut()
        .find(|n| n.id == id)
        .ok_or_else(|| format!("node {id} is not in the cluster"))
}

/// The id the next registered node gets: above every id the map has ever
/// held (removed nodes stay in it as tombstones).
fn next_node_id(map: &ClusterMap) -> u64 {
    let above_all = map.nodes.iter().map(|n| n.id + 1).max().unwrap_or(1);
    map.next_node_id.max(above_all)
}

/// `new`, unless it is 0 (not set): then `kept`.
fn or_kept<T: Default + PartialEq>(new: T, kept: T) -> T {
    if new == T::default() {
        kept
    } else {
        new
    }
}

/// Applies `command` to `map` (in place), or says why it may not. The
/// caller bumps the map's version when it changed. For `RegisterNode`,
/// the returned id is the node's.
pub fn apply(map: &mut ClusterMap, command: &MetaCommand) -> Result<(Change, Option<u64>), String> {
    match command {
        MetaCommand::RegisterNode {
            island,
            address,
            capacity,
            token,
        } => {
            if *token == 0 || island.is_empty() || address.is_empty() || *capacity == 0 {
                return Err(
                    "a joining node needs a token, an island, an address and a capacity above 0"
                        .into(),
                );
            }
            if let Some(known) = map.nodes.iter().find(|n| n.join_token == *token) {
                return Ok((Change::AlreadyDone, Some(known.id)));
            }
            let taken = map
                .nodes
                .iter()
                .find(|n| n.address == *address && Lifecycle::of(n) != Lifecycle::Removed);
            if let Some(taken) = taken {
                return Err(format!(
                    "address {address} is node {}'s; remove that node first",
                    taken.id
                ));
            }
            let id = next_node_id(map);
            map.nodes.push(Node {
                id,
                island: island.clone(),
                address: address.clone(),
                capacity: *capacity,
                state: NodeState::Joining as i32,
                join_token: *token,
                incarnation: 0,
            });
            map.next_node_id = id + 1;
            Ok((Change::Changed, Some(id)))
        }
        MetaCommand::SetNodeState { node, state, dead } => {
            let holds = holds_replicas(map, *node);
            let entry = node_mut(map, *node)?;
            let from = Lifecycle::of(entry);
            if from == *state {
                return Ok((Change::AlreadyDone, None));
            }
            use Lifecycle::*;
            let allowed = match (from, *state) {
                (Removed, _) => {
                    return Err(format!(
                    "node {node} is removed; a removed node never comes back (ids are not reused)"
                ))
                }
                (_, Removed) if *dead => true,
                (Draining, Removed) if holds => {
                    return Err(format!(
                    "node {node} still holds replicas; it is removed once drained (or with --dead)"
                ))
                }
                (Joining, Up) | (Up, Draining) | (Draining, Up) | (Draining, Removed) => true,
                _ => false,
            };
            if !allowed {
                return Err(format!("node {node} cannot go from {from:?} to {state:?}"));
            }
            entry.state = state.proto() as i32;
            Ok((Change::Changed, None))
        }
        MetaCommand::SetCapacity { node, capacity } => {
            if *capacity == 0 {
                return Err("capacity must be above 0 (drain a node to empty it)".into());
            }
            let entry = node_mut(map, *node)?;
            if Lifecycle::of(entry) == Lifecycle::Removed {
                return Err(format!("node {node} is removed"));
            }
            if entry.capacity == *capacity {
                return Ok((Change::AlreadyDone, None));
            }
            entry.capacity = *capacity;
            Ok((Change::Changed, None))
        }
        MetaCommand::SetIncarnation { node, incarnation } => {
            if *incarnation == 0 {
                return Err("an incarnation is never 0".into());
            }
            let entry = node_mut(map, *node)?;
            if Lifecycle::of(entry) == Lifecycle::Removed {
                return Err(format!("node {node} is removed"));
            }
            match entry.incarnation {
                0 => {
                    entry.incarnation = *incarnation;
                    Ok((Change::Changed, None))
                }
                known if known == *incarnation => Ok((Change::AlreadyDone, None)),
                known => Err(format!(
                    "node {node} runs on another data directory (incarnation {incarnation:#018x}) \
                     than the one the cluster knows ({known:#018x}): its data was lost"
                )),
            }
        }
        MetaCommand::BeginMove { .. } => {
            let id = begin_move(map, command)?;
            Ok((Change::Changed, Some(id)))
        }
        MetaCommand::AdvanceMove {
            id,
            state,
            matched_index,
            leader_last_index,
            stuck,
        } => {
            // A report without bytes: the record keeps the ones it has.
            let at = move_index(map, *id)?;
            let report = MetaCommand::ReportMove {
                id: *id,
                state: *state,
                matched_index: *matched_index,
                leader_last_index: *leader_last_index,
                bytes_sent: map.moves[at].bytes_sent,
                stuck: stuck.clone(),
            };
            apply(map, &report)
        }
        MetaCommand::ReportMove {
            id,
            state,
            matched_index,
            leader_last_index,
            bytes_sent,
            stuck,
        } => {
            let at = move_index(map, *id)?;
            let seen = Move {
                state: state.proto() as i32,
                matched_index: *matched_index,
                leader_last_index: *leader_last_index,
                bytes_sent: *bytes_sent,
                stuck: stuck.clone(),
                ..map.moves[at].clone()
            };
            if map.moves[at] == seen {
                return Ok((Change::AlreadyDone, None));
            }
            map.moves[at] = seen;
            Ok((Change::Changed, None))
        }
        MetaCommand::SetPlacementLimits {
            max_moves,
            max_moves_into_node,
            snapshot_rate,
            reset,
        } => {
            if *snapshot_rate != 0 && *snapshot_rate < MIN_SNAPSHOT_RATE {
                return Err(format!(
                    "a snapshot rate of {snapshot_rate} bytes/s is below the lowest allowed, \
                     {MIN_SNAPSHOT_RATE} (64 KiB/s)"
                ));
            }
            let old = map.placement_limits.unwrap_or_default();
            let base = if *reset {
                PlacementLimits::default()
            } else {
                old
            };
            let limits = PlacementLimits {
                max_moves: or_kept(*max_moves, base.max_moves),
                max_moves_into_node: or_kept(*max_moves_into_node, base.max_moves_into_node),
                snapshot_rate: or_kept(*snapshot_rate, base.snapshot_rate),
            };
            if limits == old {
                return Ok((Change::AlreadyDone, None));
            }
            map.placement_limits = Some(limits);
            Ok((Change::Changed, None))
        }
        MetaCommand::SetPlacement { paused } => {
            if map.placement_paused == *paused {
                return Ok((Change::AlreadyDone, None));
            }
            map.placement_paused = *paused;
            Ok((Change::Changed, None))
        }
        MetaCommand::FinishMove { id } | MetaCommand::AbortMove { id } => {
            // A retried finish or abort finds no record: done already.
            let Ok(at) = move_index(map, *id) else {
                return Ok((Change::AlreadyDone, None));
            };
            let record = map.moves.remove(at);
            if matches!(command, MetaCommand::FinishMove { .. }) {
                finish_move(map, &record)?;
            }
            Ok((Change::Changed, None))
        }
        MetaCommand::BeginSplit { .. } => {
            let child = begin_split(map, command)?;
            Ok((Change::Changed, Some(child)))
        }
        MetaCommand::AdvanceSplit { shard, stuck } => {
            let at = split_index(map, *shard)?;
            if map.splits[at].stuck == *stuck {
                return Ok((Change::AlreadyDone, None));
            }
            map.splits[at].stuck = stuck.clone();
            Ok((Change::Changed, None))
        }
        MetaCommand::FinishSplit { shard } => {
            let at = split_index(map, *shard)?;
            let record = map.splits.remove(at);
            finish_split(map, &record)?;
            Ok((Change::Changed, Some(record.child_shard_id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_proto::v1::{Replica, Shard};

    use super::*;

    fn node(id: u64, island: &str) -> Node {
        Node {
            id,
            island: island.into(),
            address: format!("10.0.0.{id}:7000"),
            capacity: 1,
            state: NodeState::Up as i32,
            join_token: 0,
            incarnation: 0,
        }
    }

    /// Three nodes; node 1 holds the one shard's only replica.
    fn map() -> ClusterMap {
        ClusterMap {
            map_version: 3,
            nodes: vec![node(1, "a"), node(2, "b"), node(3, "c")],
            shards: vec![Shard {
                id: 1,
                replicas: vec![Replica {
                    replica_id: 10,
                    node_id: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn register(token: u64, address: &str) -> MetaCommand {
        MetaCommand::RegisterNode {
            island: "d".into(),
            address: address.into(),
            capacity: 2,
            token,
        }
    }

    fn set_state(node: u64, state: Lifecycle, dead: bool) -> MetaCommand {
        MetaCommand::SetNodeState { node, state, dead }
    }

    fn limits(max_moves: u32, into_node: u32, rate: u64, reset: bool) -> MetaCommand {
        MetaCommand::SetPlacementLimits {
            max_moves,
            max_moves_into_node: into_node,
            snapshot_rate: rate,
            reset,
        }
    }

    #[test]
    fn placement_limits_set_what_is_named_and_keep_the_rest() {
        let mut m = map();
        assert_eq!(
            apply(&mut m, &limits(8, 0, 0, false)).unwrap().0,
            Change::Changed
        );
        assert_eq!(
            apply(&mut m, &limits(0, 2, 32 << 20, false)).unwrap().0,
            Change::Changed
        );
        let set = PlacementLimits {
            max_moves: 8,
            max_moves_into_node: 2,
            snapshot_rate: 32 << 20,
        };
        assert_eq!(m.placement_limits, Some(set));
        let again = apply(&mut m, &limits(8, 0, 32 << 20, false)).unwrap();
        assert_eq!(again.0, Change::AlreadyDone);

        let before = m.clone();
        let slow = apply(&mut m, &limits(0, 0, 1000, false)).unwrap_err();
        assert!(slow.contains("below the lowest"), "{slow}");
        assert_eq!(m, before, "a refused limit changes nothing");

        apply(&mut m, &limits(0, 0, 0, true)).unwrap();
        assert_eq!(m.placement_limits, Some(PlacementLimits::default()));
        apply(&mut m, &limits(3, 0, 0, true)).unwrap();
        let only_moves = PlacementLimits {
            max_moves: 3,
            ..Default::default()
        };
        assert_eq!(
            m.placement_limits,
            Some(only_moves),
            "a reset, then one limit"
        );
    }

    #[test]
    fn a_joining_node_gets_a_new_id_once_per_token() {
        let mut m = map();
        let (change, id) = apply(&mut m, &register(77, "10.0.0.9:7000")).unwrap();
        assert_eq!((change, id), (Change::Changed, Some(4)));
        assert_eq!(Lifecycle::of(&m.nodes[3]), Lifecycle::Joining);
        let before = m.clone();
        let again = apply(&mut m, &register(77, "10.0.0.9:7000")).unwrap();
        assert_eq!(again, (Change::AlreadyDone, Some(4)), "a retried join");
        assert_eq!(m, before);
        let taken = apply(&mut m, &register(78, "10.0.0.9:7000")).unwrap_err();
        assert!(taken.contains("is node 4's"), "{taken}");
        assert!(apply(&mut m, &register(0, "x:1")).is_err(), "no token");
    }

    #[test]
    fn ids_of_removed_nodes_are_never_reused() {
        let mut m = map();
        apply(&mut m, &set_state(3, Lifecycle::Removed, true)).unwrap();
        let (_, id) = apply(&mut m, &register(5, "10.0.0.3:7000")).unwrap();
        assert_eq!(
            id,
            Some(4),
            "the removed node's address may be reused, its id not"
        );
        let back = apply(&mut m, &set_state(3, Lifecycle::Up, false)).unwrap_err();
        assert!(back.contains("never comes back"), "{back}");
        let mut emptied = m.clone();
        emptied.nodes.retain(|n| n.id != 4);
        emptied.next_node_id = 5;
        let (_, id) = apply(&mut emptied, &register(6, "x:1")).unwrap();
        assert_eq!(id, Some(5), "next_node_id counts past ids no longer listed");
    }

    #[test]
    fn node_states_follow_the_lifecycle() {
        let mut m = map();
        let refused = apply(&mut m, &set_state(2, Lifecycle::Removed, false)).unwrap_err();
        assert!(
            refused.contains("cannot go from Up to Removed"),
            "{refused}"
        );
        apply(&mut m, &set_state(2, Lifecycle::Draining, false)).unwrap();
        apply(&mut m, &set_state(2, Lifecycle::Removed, false)).unwrap();

        apply(&mut m, &set_state(1, Lifecycle::Draining, false)).unwrap();
        let busy = apply(&mut m, &set_state(1, Lifecycle::Removed, false)).unwrap_err();
        assert!(busy.contains("still holds replicas"), "{busy}");
        assert_eq!(
            apply(&mut m, &set_state(1, Lifecycle::Draining, false)).unwrap(),
            (Change::AlreadyDone, None)
        );
        apply(&mut m, &set_state(1, Lifecycle::Up, false)).unwrap();
        let missing = apply(&mut m, &set_state(9, Lifecycle::Up, false)).unwrap_err();
        assert!(missing.contains("not in the cluster"), "{missing}");
    }

    #[test]
    fn capacity_is_positive_and_only_for_nodes_in_the_cluster() {
        let mut m = map();
        apply(
            &mut m,
            &MetaCommand::SetCapacity {
                node: 2,
                capacity: 4,
            },
        )
        .unwrap();
        assert_eq!(m.nodes[1].capacity, 4);
        let zero = MetaCommand::SetCapacity {
            node: 2,
            capacity: 0,
        };
        assert!(apply(&mut m, &zero).is_err());
        apply(&mut m, &set_state(3, Lifecycle::Removed, true)).unwrap();
        let removed = MetaCommand::SetCapacity {
            node: 3,
            capacity: 2,
        };
        assert!(apply(&mut m, &removed).unwrap_err().contains("removed"));
    }

    #[test]
    fn an_incarnation_is_recorded_once_and_another_is_refused() {
        let mut m = map();
        let set = |node, incarnation| MetaCommand::SetIncarnation { node, incarnation };
        assert_eq!(apply(&mut m, &set(2, 7)).unwrap(), (Change::Changed, None));
        assert_eq!(m.nodes[1].incarnation, 7);
        assert_eq!(
            apply(&mut m, &set(2, 7)).unwrap(),
            (Change::AlreadyDone, None)
        );
        let replaced = apply(&mut m, &set(2, 8)).unwrap_err();
        assert!(replaced.contains("data was lost"), "{replaced}");
        assert_eq!(m.nodes[1].incarnation, 7);
        assert!(apply(&mut m, &set(2, 0)).is_err());
        assert!(apply(&mut m, &set(9, 1)).is_err());
    }

    fn begin(shard: u64, epoch: u64, from_replica: u64, to_node: u64) -> MetaCommand {
        MetaCommand::BeginMove {
            shard,
            epoch,
            from_replica,
            to_node,
            reason: "operator".into(),
            now_ms: 1,
        }
    }

    #[test]
    fn a_move_gets_a_new_replica_and_finishes_by_swapping_it_in() {
        let mut m = map();
        m.next_replica_id = 11;
        m.shards[0].epoch = 1;
        let (_, id) = apply(&mut m, &begin(1, 1, 10, 2)).unwrap();
        let id = id.unwrap();
        let record = m.moves[0].clone();
        assert_eq!(
            (record.from_node, record.to_replica, record.to_node),
            (1, 11, 2)
        );
        assert_eq!(m.next_replica_id, 12, "replica ids are never reused");
        assert!(holds_replicas(&m, 2), "a node receiving a replica holds it");
        let second = apply(&mut m, &begin(1, 1, 10, 3)).unwrap_err();
        assert!(second.contains("already has a move"), "{second}");

        apply(&mut m, &MetaCommand::FinishMove { id }).unwrap();
        assert!(m.moves.is_empty());
        let replicas: Vec<(u64, u64)> = m.shards[0]
            .replicas
            .iter()
            .map(|r| (r.replica_id, r.node_id))
            .collect();
        assert_eq!(replicas, [(11, 2)]);
        assert_eq!(m.shards[0].epoch, 2);
        let again = apply(&mut m, &MetaCommand::FinishMove { id }).unwrap();
        assert_eq!(again, (Change::AlreadyDone, None), "a retried finish");
        let stale = apply(&mut m, &begin(1, 1, 11, 3)).unwrap_err();
        assert!(stale.contains("epoch 2, not 1"), "{stale}");
    }

    #[test]
    fn a_move_needs_a_live_target_without_a_replica_of_the_shard() {
        let mut m = map();
        let here = apply(&mut m, &begin(1, 0, 10, 1)).unwrap_err();
        assert!(here.contains("already holds a replica"), "{here}");
        let stranger = apply(&mut m, &begin(1, 0, 99, 2)).unwrap_err();
        assert!(stranger.contains("not a replica of shard 1"), "{stranger}");
        apply(&mut m, &set_state(3, Lifecycle::Draining, false)).unwrap();
        let draining = apply(&mut m, &begin(1, 0, 10, 3)).unwrap_err();
        assert!(draining.contains("only to nodes that are up"), "{draining}");
        let mut spread = map();
        spread.nodes.push(node(4, "a"));
        spread.shards[0].replicas = (1..=3)
            .map(|n| Replica {
                replica_id: 10 * n,
                node_id: n,
            })
            .collect();
        let crowded = apply(&mut spread, &begin(1, 0, 20, 4)).unwrap_err();
        assert!(crowded.contains("on 2 islands instead of 3"), "{crowded}");
        apply(&mut spread, &begin(1, 0, 10, 4)).unwrap();
        let nowhere = apply(&mut m, &begin(7, 0, 10, 2)).unwrap_err();
        assert!(nowhere.contains("shard 7 is not in the map"), "{nowhere}");
        assert!(m.moves.is_empty());

        let (_, id) = apply(&mut m, &begin(1, 0, 10, 2)).unwrap();
        let advance = MetaCommand::AdvanceMove {
            id: id.unwrap(),
            state: MovePhase::CatchUp,
            matched_index: 5,
            leader_last_index: 9,
            stuck: String::new(),
        };
        assert_eq!(apply(&mut m, &advance).unwrap().0, Change::Changed);
        assert_eq!(apply(&mut m, &advance).unwrap().0, Change::AlreadyDone);
        assert_eq!(m.moves[0].state, MoveState::CatchUp as i32);
        let report = MetaCommand::ReportMove {
            id: id.unwrap(),
            state: MovePhase::CatchUp,
            matched_index: 5,
            leader_last_index: 9,
            bytes_sent: 4096,
            stuck: String::new(),
        };
        assert_eq!(apply(&mut m, &report).unwrap().0, Change::Changed);
        assert_eq!(apply(&mut m, &report).unwrap().0, Change::AlreadyDone);
        assert_eq!(m.moves[0].bytes_sent, 4096);
        assert_eq!(
            apply(&mut m, &advance).unwrap().0,
            Change::AlreadyDone,
            "an older report keeps the bytes"
        );
        apply(&mut m, &MetaCommand::AbortMove { id: id.unwrap() }).unwrap();
        assert!(m.moves.is_empty());
        assert_eq!(
            m.shards[0].replicas[0].replica_id, 10,
            "an abort keeps the voters"
        );
    }

    #[test]
    fn a_removal_takes_a_replica_only_from_a_shard_with_one_to_spare() {
        let mut m = map();
        m.replication_factor = 1;
        m.next_replica_id = 40;
        let last = apply(&mut m, &begin(1, 0, 10, 0)).unwrap_err();
        assert!(last.contains("would leave it below 1"), "{last}");
        let neither = apply(&mut m, &begin(1, 0, 0, 0)).unwrap_err();
        assert!(neither.contains("neither a replica"), "{neither}");
        m.meta = Some(Shard {
            id: 0,
            replicas: (1..=3)
                .map(|n| Replica {
                    replica_id: 30 + n,
                    node_id: n,
                })
                .collect(),
            ..Default::default()
        });
        let (_, id) = apply(&mut m, &begin(0, 0, 33, 0)).unwrap();
        let record = m.moves[0].clone();
        assert_eq!(
            (record.from_node, record.to_replica, record.to_node),
            (3, 0, 0)
        );
        assert_eq!(m.next_replica_id, 40, "a removal takes no replica id");
        apply(&mut m, &MetaCommand::FinishMove { id: id.unwrap() }).unwrap();
        let meta = m.meta.as_ref().unwrap();
        let left: Vec<u64> = meta.replicas.iter().map(|r| r.replica_id).collect();
        assert_eq!(left, [31, 32]);
        assert_eq!(meta.epoch, 1);
    }

    fn begin_split(shard: u64, epoch: u64, at: u64) -> MetaCommand {
        MetaCommand::BeginSplit {
            shard,
            epoch,
            at,
            reason: "operator".into(),
            now_ms: 1,
        }
    }

    #[test]
    fn a_split_gets_new_ids_and_finishes_with_the_child_after_its_shard() {
        let mut m = map();
        m.next_replica_id = 20;
        m.shards[0].range_last = 999;
        m.shards[0].epoch = 4;
        m.shards.push(Shard {
            id: 2,
            range_start: 1000,
            range_last: u64::MAX,
            epoch: 1,
            ..Default::default()
        });
        let outside = apply(&mut m, &begin_split(1, 4, 0)).unwrap_err();
        assert!(outside.contains("not inside"), "{outside}");
        let past = apply(&mut m, &begin_split(1, 4, 1000)).unwrap_err();
        assert!(past.contains("not inside"), "{past}");
        let stale = apply(&mut m, &begin_split(1, 3, 500)).unwrap_err();
        assert!(stale.contains("epoch 4, not 3"), "{stale}");
        let meta = apply(&mut m, &begin_split(0, 4, 500)).unwrap_err();
        assert!(meta.contains("not a data shard"), "{meta}");

        let (change, child) = apply(&mut m, &begin_split(1, 4, 500)).unwrap();
        assert_eq!((change, child), (Change::Changed, Some(3)));
        let record = &m.splits[0];
        assert_eq!(record.replicas.len(), 1);
        assert_eq!(record.replicas[0].parent_replica, 10);
        assert_eq!(record.replicas[0].child_replica, 20);
        assert_eq!((m.next_replica_id, m.next_shard_id), (21, 4));
        let twice = apply(&mut m, &begin_split(1, 4, 600)).unwrap_err();
        assert!(twice.contains("already splitting"), "{twice}");
        let moving = apply(&mut m, &begin(1, 4, 10, 2)).unwrap_err();
        assert!(moving.contains("is splitting"), "{moving}");

        let stuck = MetaCommand::AdvanceSplit {
            shard: 1,
            stuck: "no leader".into(),
        };
        assert_eq!(apply(&mut m, &stuck).unwrap().0, Change::Changed);
        assert_eq!(apply(&mut m, &stuck).unwrap().0, Change::AlreadyDone);

        apply(&mut m, &MetaCommand::FinishSplit { shard: 1 }).unwrap();
        assert!(m.splits.is_empty());
        let ranges: Vec<(u64, u64, u64, u64)> = (m.shards.iter())
            .map(|s| (s.id, s.range_start, s.range_last, s.epoch))
            .collect();
        assert_eq!(
            ranges,
            [(1, 0, 499, 5), (3, 500, 999, 5), (2, 1000, u64::MAX, 1)]
        );
        assert_eq!(m.shards[1].replicas[0].replica_id, 20);
        assert_eq!(m.shard_for_hash(500).map(|s| s.id), Some(3));
        let again = apply(&mut m, &MetaCommand::FinishSplit { shard: 1 }).unwrap_err();
        assert!(again.contains("no split in progress"), "{again}");
    }
}
