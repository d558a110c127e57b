//! Bring every node's replica count into its window `[floor, ceil]` of its
//! ideal, moving as few replicas as possible.
//!
//! Runs the three [`Phase`]s in order; in each, repeats until nothing helps:
//! apply a chain of free moves from [`find_path`] (replicas placed by this
//! run, or handed back to a node that held them), which adds nothing to the
//! data moved; else a [`sweep`] of direct moves; else the shortest chain of
//! any moves. A node's window is feasible
//! (the ideal loads are a fractional placement, and placement is a flow
//! problem, whose integer solutions reach any integer window around a
//! fractional one), and no augmenting path means no move sequence helps, so
//! the phases end with every node inside its window.

use std::collections::BTreeSet;

use super::cluster::Cluster;
use super::layout::Layout;
use super::paths::{find_path, Cost};
use super::phase::Phase;
use super::search::Move;
use super::sweep::sweep;
use super::target::Target;

/// Moves replicas until every node is within its target window.
pub(crate) fn rebalance(cluster: &Cluster, layout: &mut Layout, targets: &[Target]) {
    for phase in Phase::ALL {
        // Shards where a chain turned out invalid (it used a shard twice in
        // a way that broke the island bounds); skipped for this phase.
        let mut banned = BTreeSet::new();
        loop {
            let path = match find_path(cluster, layout, targets, phase, Cost::Free, &banned) {
                Some(path) => path,
                None if sweep(cluster, layout, targets, phase, &banned) > 0 => continue,
                None => match find_path(cluster, layout, targets, phase, Cost::Any, &banned) {
                    Some(path) => path,
                    None => break,
                },
            };
            if let Err(shard) = apply(cluster, layout, &path) {
                banned.insert(shard);
            }
        }
    }
}

/// Applies a chain of moves, or undoes it and names the shard it broke.
fn apply(cluster: &Cluster, layout: &mut Layout, path: &[Move]) -> Result<(), usize> {
    for (k, m) in path.iter().enumerate() {
        if !layout.replace(m.shard, m.from, m.to) {
            undo(layout, &path[..k]);
            return Err(m.shard);
        }
    }
    if let Some(m) = path
        .iter()
        .find(|m| !cluster.is_valid_shard(&layout.replicas[m.shard]))
    {
        let shard = m.shard;
        undo(layout, path);
        return Err(shard);
    }
    Ok(())
}

/// Reverts applied moves, last first.
fn undo(layout: &mut Layout, applied: &[Move]) {
    for m in applied.iter().rev() {
        layout.replace(m.shard, m.to, m.from);
    }
}

#[cfg(test)]
mod tests {
    use atoll_proto::ShardId;

    use super::*;
    use crate::placement::target::replica_targets;
    use crate::placement::test_support::cluster;
    use crate::Assignment;

    #[test]
    fn a_skewed_layout_ends_within_every_window() {
        // 12 shards on the first three of six nodes; RF 3 over islands a, b, c.
        let c = cluster(&["a", "b", "c", "a", "b", "c"], 3);
        let ids: Vec<ShardId> = (0..12).map(ShardId).collect();
        let mut layout = Layout::new(&c, ids, &Assignment::new());
        for s in 0..12 {
            for n in 0..3 {
                layout.add(s, n);
            }
        }
        let targets = replica_targets(&c, 12);
        rebalance(&c, &mut layout, &targets);
        assert_eq!(layout.loads(), vec![6; 6]);
        assert!(layout.replicas.iter().all(|r| c.is_valid_shard(r)));
    }

    #[test]
    fn a_balanced_layout_is_left_alone() {
        let c = cluster(&["a"; 4], 2);
        let ids: Vec<ShardId> = (0..4).map(ShardId).collect();
        let mut layout = Layout::new(&c, ids, &Assignment::new());
        for (s, pair) in [[0, 1], [2, 3], [1, 2], [3, 0]].iter().enumerate() {
            for &n in pair {
                layout.add(s, n);
            }
        }
        let before = layout.replicas.clone();
        rebalance(&c, &mut layout, &replica_targets(&c, 4));
        assert_eq!(layout.replicas, before);
    }

    #[test]
    fn an_invalid_chain_is_undone() {
        let c = cluster(&["a", "a", "b", "b"], 2);
        let ids: Vec<ShardId> = (0..1).map(ShardId).collect();
        let mut layout = Layout::new(&c, ids, &Assignment::new());
        layout.add(0, 0);
        layout.add(0, 2);
        // Moving 2 (island b) to 1 (island a) leaves island b empty.
        let path = [Move {
            shard: 0,
            from: 2,
            to: 1,
        }];
        assert_eq!(apply(&c, &mut layout, &path), Err(0));
        assert_eq!(layout.replicas[0], vec![0, 2]);
        assert_eq!(layout.loads(), vec![1, 0, 1, 0]);
    }
}
