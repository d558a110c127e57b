//! [`place`]: the placement function, running the steps in order.

use std::collections::BTreeSet;

use atoll_proto::ShardId;

use super::cluster::Cluster;
use super::fill::fill_missing;
use super::keep::keep_current;
use super::layout::Layout;
use super::leaders::assign_leaders;
use super::rebalance::rebalance;
use super::spec::{Assignment, NodeSpec};
use super::target::{leader_targets, replica_targets};
use crate::PlacementError;

/// The most replicas (shards x replication factor) one placement handles;
/// keeps the exact ideal-load arithmetic inside `u128`.
const MAX_REPLICAS: u128 = 1 << 40;

/// Places `replication_factor` replicas of each shard in `shards` on
/// `nodes`, starting from `current`.
///
/// Guarantees, for valid input:
///
/// - **Constraints.** Every shard gets `replication_factor` distinct nodes,
///   spread over as many islands as possible: `min(RF, islands)` distinct
///   islands, and the replicas on each island as even as the island sizes
///   allow (RF 3 on 3 islands: one each; on 2 islands: 2 + 1; an island of
///   one node never holds two replicas of a shard).
/// - **Balance.** Each node's replica count is its *ideal* rounded down or
///   up, so strictly within 1 of it. The ideal is the node's
///   capacity-proportional share of `shards * RF`, computed exactly after
///   the island rule: islands first share the replicas by capacity, each held
///   between the least and the most it must or may take (a lone node on its
///   own island, with RF 3 over 3 islands, holds every shard), then each
///   island's share goes to its nodes by capacity, at most one replica per
///   shard each. Without island or capacity limits that is simply
///   `shards * RF * capacity / total capacity`.
/// - **Leaders.** The first node of each list is the preferred leader. A
///   node's leader ideal is its capacity share of `shards`, capped by the
///   replicas it holds. With equal capacities and no island distortion every
///   node leads its ideal rounded down or up (within 1 of
///   `shards / nodes`); otherwise the same holds whenever the replica layout
///   admits it, and in any case no hand-over to another replica of the same
///   shard would bring a node closer. A current leader that still holds its
///   shard keeps leading unless balance needs the move.
/// - **Few moves.** Current replicas on existing nodes are kept while the
///   island rule allows; then only moves that bring some node into its
///   window are made, preferring to move replicas placed by this run or to
///   hand replicas back to their former nodes. Adding one node to `N` equal
///   nodes moves about `1 / (N + 1)` of the replicas. When every island
///   holds a fixed number of each shard's replicas (one island, or RF equal
///   to the island count) that is at most the new node's share, and removing
///   a node moves only its replicas; with looser island bounds a few more
///   moves can be forced (a replica passed on through a middle node).
///   Unchanged input gives unchanged output: placing again from the result
///   moves nothing.
/// - **Pure.** Equal input, in any order, gives equal output.
///
/// Shards in `current` that are not in `shards` are dropped; nodes in
/// `current` that are not in `nodes` are replaced.
///
/// Cost: about `shards * nodes * RF` to fill empty slots, plus about
/// `nodes` per moved replica; 1,000 nodes and 100,000 replicas place from
/// scratch in well under a second in an optimized build.
pub fn place(
    nodes: &[NodeSpec],
    shards: &[ShardId],
    replication_factor: usize,
    current: &Assignment,
) -> Result<Assignment, PlacementError> {
    let cluster = Cluster::new(nodes, replication_factor)?;
    let mut sorted: BTreeSet<ShardId> = BTreeSet::new();
    for &shard in shards {
        if !sorted.insert(shard) {
            return Err(PlacementError::DuplicateShard(shard));
        }
    }
    let replicas = sorted.len() as u128 * replication_factor as u128;
    if replicas > MAX_REPLICAS {
        return Err(PlacementError::TooManyReplicas {
            replicas,
            max: MAX_REPLICAS,
        });
    }
    let shard_count = sorted.len() as u64;
    let mut layout = Layout::new(&cluster, sorted.into_iter().collect(), current);
    if shard_count == 0 {
        return Ok(layout.into_assignment(&cluster));
    }

    let targets = replica_targets(&cluster, shard_count);
    keep_current(&cluster, &mut layout, &targets);
    fill_missing(&cluster, &mut layout, &targets);
    rebalance(&cluster, &mut layout, &targets);

    let leader_targets = leader_targets(&cluster, shard_count, &layout.loads());
    assign_leaders(&cluster, &mut layout, &leader_targets);
    Ok(layout.into_assignment(&cluster))
}
