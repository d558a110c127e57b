//! Fill each shard's empty slots greedily: among nodes not in the shard on
//! an island with room, take the node least far along towards its ideal
//! load, ties broken by rendezvous score.

use std::cmp::Ordering;

use super::cluster::Cluster;
use super::layout::Layout;
use super::rendezvous;
use super::target::{Eagerness, Target};

/// Fills every shard up to the replication factor.
///
/// Partly kept shards go first, those with the fewest nodes able to take a
/// replica leading (for example a shard whose surviving replica sits on the
/// island holding most of the nodes with room), so the constrained ones are not
/// left with only full nodes.
pub(crate) fn fill_missing(cluster: &Cluster, layout: &mut Layout, targets: &[Target]) {
    let mut open: Vec<(usize, usize)> = (0..layout.shard_ids.len())
        .filter(|&s| layout.replicas[s].len() < cluster.rf)
        .map(|s| {
            // An empty shard can go anywhere; count only for partial ones.
            let choices = if layout.replicas[s].is_empty() {
                usize::MAX
            } else {
                choices(cluster, layout, targets, s)
            };
            (choices, s)
        })
        .collect();
    open.sort_unstable();
    for (_, s) in open {
        while layout.replicas[s].len() < cluster.rf {
            let Some(n) = best_candidate(cluster, layout, targets, s) else {
                // Unreachable: the island bounds always leave a candidate.
                break;
            };
            layout.add(s, n);
        }
    }
}

/// How many nodes could take one more replica of shard `s` without passing
/// their ceiling.
fn choices(cluster: &Cluster, layout: &Layout, targets: &[Target], s: usize) -> usize {
    let replicas = &layout.replicas[s];
    (0..cluster.len())
        .filter(|&n| {
            let island = cluster.island_of[n];
            !replicas.contains(&n)
                && (layout.load(n) as u64) < targets[n].hi
                && cluster.count_in(replicas, island) < cluster.islands[island].spread.hi
        })
        .count()
}

/// The best node to add to shard `s`, if any fits.
fn best_candidate(
    cluster: &Cluster,
    layout: &Layout,
    targets: &[Target],
    s: usize,
) -> Option<usize> {
    let replicas = &layout.replicas[s];
    let mut counts = vec![0; cluster.islands.len()];
    for &n in replicas {
        counts[cluster.island_of[n]] += 1;
    }
    let short: usize = cluster
        .islands
        .iter()
        .zip(&counts)
        .map(|(island, &c)| island.spread.lo.saturating_sub(c))
        .sum();
    // When every open slot is needed to bring islands up to their floor,
    // only those islands may take the next replica.
    let only_short = cluster.rf - replicas.len() == short;
    let shard = layout.shard_ids[s];
    let mut best: Option<(usize, Eagerness)> = None;
    for (island, &count) in cluster.islands.iter().zip(&counts) {
        let room = if only_short {
            count < island.spread.lo
        } else {
            count < island.spread.hi
        };
        if !room {
            continue;
        }
        for &n in &island.nodes {
            if replicas.contains(&n) {
                continue;
            }
            let e = Eagerness::new(
                layout.load(n),
                &targets[n],
                rendezvous::score(shard, cluster.ids[n]),
            );
            if best
                .as_ref()
                .is_none_or(|(_, b)| e.compare(b) == Ordering::Less)
            {
                best = Some((n, e));
            }
        }
    }
    best.map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use atoll_proto::ShardId;

    use super::*;
    use crate::placement::target::replica_targets;
    use crate::placement::test_support::cluster;
    use crate::Assignment;

    #[test]
    fn a_partly_kept_shard_is_completed_within_island_bounds() {
        let c = cluster(&["a", "a", "b", "b", "c", "c"], 3);
        let mut layout = Layout::new(&c, vec![ShardId(1)], &Assignment::new());
        layout.add(0, 1);
        fill_missing(&c, &mut layout, &replica_targets(&c, 1));
        assert!(c.is_valid_shard(&layout.replicas[0]));
        assert_eq!(layout.replicas[0][0], 1);
    }

    #[test]
    fn filling_an_empty_layout_spreads_evenly() {
        let c = cluster(&["a", "a", "b", "b", "c", "c"], 3);
        let shards: Vec<ShardId> = (0..6).map(ShardId).collect();
        let mut layout = Layout::new(&c, shards, &Assignment::new());
        fill_missing(&c, &mut layout, &replica_targets(&c, 6));
        assert!(layout.replicas.iter().all(|r| c.is_valid_shard(r)));
        assert_eq!(layout.loads(), vec![3; 6]);
    }
}
