//! Keep what may stay of the current assignment.
//!
//! Each shard keeps its current replicas on nodes that still exist while
//! they fit the island bounds: never more than `hi` on one island, and never
//! so many islands above `lo` that the open slots cannot bring every island
//! up to `lo`. When the bounds force a shard to drop some (an island was
//! added, or the replication factor shrank), it drops those on the nodes
//! furthest above their ideal load, so the drops themselves rebalance and no
//! replica has to move twice. Kept replicas stay in current order.

use super::cluster::Cluster;
use super::layout::Layout;
use super::target::Target;

/// Keeps every current replica the island bounds allow.
pub(crate) fn keep_current(cluster: &Cluster, layout: &mut Layout, targets: &[Target]) {
    // What each node would hold if every current replica stayed.
    let mut prospective = vec![0usize; cluster.len()];
    for previous in &layout.previous {
        for &n in previous {
            prospective[n] += 1;
        }
    }
    for s in 0..layout.shard_ids.len() {
        let previous = layout.previous[s].clone();
        let surplus = |n: usize| prospective[n] as f64 - targets[n].ideal;
        let mut ranked: Vec<(usize, usize)> = previous.iter().copied().enumerate().collect();
        ranked.sort_by(|&(i, a), &(j, b)| surplus(a).total_cmp(&surplus(b)).then(i.cmp(&j)));
        let kept = admit(cluster, ranked.into_iter().map(|(_, n)| n));
        for &n in &previous {
            if kept.contains(&n) {
                layout.add(s, n);
            } else {
                prospective[n] -= 1;
            }
        }
    }
}

/// The candidates (distinct nodes, in order of preference) that one shard
/// can keep under the island bounds.
fn admit(cluster: &Cluster, candidates: impl Iterator<Item = usize>) -> Vec<usize> {
    let floor: usize = cluster.islands.iter().map(|i| i.spread.lo).sum();
    let slack = cluster.rf.saturating_sub(floor);
    let mut above_floor = 0;
    let mut kept: Vec<usize> = Vec::with_capacity(cluster.rf);
    for n in candidates {
        if kept.len() == cluster.rf {
            break;
        }
        let island = cluster.island_of[n];
        let spread = cluster.islands[island].spread;
        let count = cluster.count_in(&kept, island);
        if count >= spread.hi {
            continue;
        }
        if count >= spread.lo {
            if above_floor == slack {
                continue;
            }
            above_floor += 1;
        }
        kept.push(n);
    }
    kept
}

#[cfg(test)]
mod tests {
    use atoll_proto::{NodeId, ShardId};

    use super::*;
    use crate::placement::fill::fill_missing;
    use crate::placement::target::replica_targets;
    use crate::placement::test_support::cluster;
    use crate::Assignment;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    fn keep(c: &Cluster, current: &Assignment) -> Layout {
        let shards: Vec<ShardId> = current.keys().copied().collect();
        let mut layout = Layout::new(c, shards, current);
        keep_current(c, &mut layout, &replica_targets(c, current.len() as u64));
        layout
    }

    #[test]
    fn acceptable_current_replicas_are_kept_in_order() {
        let c = cluster(&["a", "a", "b", "b", "c", "c"], 3);
        let layout = keep(&c, &Assignment::from([(ShardId(1), ids(&[5, 0, 3]))]));
        assert_eq!(layout.replicas[0], vec![5, 0, 3]);
    }

    #[test]
    fn replicas_that_crowd_an_island_or_are_gone_are_dropped() {
        // Two on island a, one on a removed node: keep one on a only.
        let c = cluster(&["a", "a", "b", "b", "c", "c"], 3);
        let mut layout = keep(&c, &Assignment::from([(ShardId(1), ids(&[0, 1, 42]))]));
        assert_eq!(layout.replicas[0].len(), 1);
        fill_missing(&c, &mut layout, &replica_targets(&c, 1));
        assert!(c.is_valid_shard(&layout.replicas[0]));
    }

    #[test]
    fn kept_replicas_leave_room_for_every_island_floor() {
        // RF 4 on three islands is 2 + 1 + 1: from a 2 + 2 + 0 layout only
        // one island may keep two.
        let c = cluster(&["a", "a", "b", "b", "c", "c"], 4);
        let mut layout = keep(&c, &Assignment::from([(ShardId(1), ids(&[0, 1, 2, 3]))]));
        assert_eq!(layout.replicas[0].len(), 3);
        fill_missing(&c, &mut layout, &replica_targets(&c, 1));
        assert!(c.is_valid_shard(&layout.replicas[0]));
    }

    #[test]
    fn forced_drops_fall_on_the_most_loaded_nodes() {
        // A new island c appears: every shard must drop one of its two
        // replicas on island a. Node 0 holds all four shards there, nodes 1
        // and 2 two each; each should end with 4/3, so 1 or 2, and node 0
        // gives up most.
        let c = cluster(&["a", "a", "a", "b", "c"], 3);
        let current = Assignment::from([
            (ShardId(1), ids(&[0, 1, 3])),
            (ShardId(2), ids(&[0, 1, 3])),
            (ShardId(3), ids(&[0, 2, 3])),
            (ShardId(4), ids(&[0, 2, 3])),
        ]);
        let layout = keep(&c, &current);
        assert!(layout.replicas.iter().all(|r| r.len() == 2));
        let loads = layout.loads();
        assert!(loads[..3].iter().all(|&l| l == 1 || l == 2), "{loads:?}");
    }
}
