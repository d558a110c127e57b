//! Direct moves in bulk: every giver hands one replica straight to a taker,
//! where one fits, in one pass.
//!
//! A direct move is the one-step chain the path search would find first
//! anyway; doing them in a sweep instead of one search per move keeps big
//! changes (doubling a cluster moves half of all replicas) linear in the
//! number of moves.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::cluster::Cluster;
use super::layout::Layout;
use super::phase::Phase;
use super::target::Target;

/// Makes at most one direct move from each giver to a taker in `phase`,
/// skipping `banned` shards; returns how many it made.
pub(crate) fn sweep(
    cluster: &Cluster,
    layout: &mut Layout,
    targets: &[Target],
    phase: Phase,
    banned: &BTreeSet<usize>,
) -> usize {
    let nodes = 0..cluster.len();
    let mut givers: Vec<usize> = nodes
        .clone()
        .filter(|&v| phase.gives(layout.load(v), &targets[v]))
        .collect();
    givers.sort_by_key(|&v| (Reverse(Phase::urgency(layout.load(v), &targets[v])), v));
    let mut takers: Vec<usize> = nodes
        .filter(|&v| phase.takes(layout.load(v), &targets[v]))
        .collect();
    let mut moves = 0;
    // Start each search at a different taker, so moves spread over them.
    let mut next = 0;
    for g in givers {
        for s in layout.shards_by_tenure(g) {
            if takers.is_empty() {
                return moves;
            }
            if banned.contains(&s) {
                continue;
            }
            let replicas = &layout.replicas[s];
            let fits = |t: usize| {
                !replicas.contains(&t) && cluster.allows_move(replicas, g, cluster.island_of[t])
            };
            let Some(k) = (0..takers.len())
                .map(|k| (next + k) % takers.len())
                .find(|&k| fits(takers[k]))
            else {
                continue;
            };
            let t = takers[k];
            layout.replace(s, g, t);
            moves += 1;
            next = k + 1;
            if !phase.takes(layout.load(t), &targets[t]) {
                takers.remove(k);
                next = k;
            }
            // One move per giver per sweep, most urgent first, as the
            // path search would order them.
            break;
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use atoll_proto::ShardId;

    use super::*;
    use crate::placement::test_support::cluster;
    use crate::Assignment;

    #[test]
    fn givers_hand_replicas_straight_to_takers() {
        let c = cluster(&["a"; 4], 1);
        let ids = (0..8).map(ShardId).collect();
        let mut layout = Layout::new(&c, ids, &Assignment::new());
        for s in 0..8 {
            layout.add(s, s % 2);
        }
        let t = Target {
            ideal: 2.0,
            lo: 2,
            hi: 2,
        };
        let sweep_once =
            |layout: &mut Layout| sweep(&c, layout, &[t; 4], Phase::OverToUnder, &BTreeSet::new());
        // Each of the two givers hands one replica over per sweep.
        let moved = sweep_once(&mut layout);
        assert_eq!(moved, 2);
        let moved = sweep_once(&mut layout);
        assert_eq!(moved, 2);
        assert_eq!(layout.loads(), vec![2; 4]);
    }
}
