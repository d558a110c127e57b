//! Finding a chain of replica moves that takes one unit of load from a node
//! that should give to a node that should take (an augmenting path, as in
//! max-flow).
//!
//! Node `a` can pass a replica to node `b` through shard `s` when `a` holds
//! `s`, `b` does not, and swapping them keeps the island bounds. The search
//! is breadth-first from every giver at once, so the chain found is as short
//! as possible (usually one move), and each giver offers its newly placed
//! replicas first, then ones it followed, and its led shards last. Nodes in the
//! middle of a chain give one replica and take one, so their load is
//! unchanged.
//!
//! A search may be limited to free moves ([`Cost::Free`]): moving a replica
//! placed by this run, or handing one back to a node that held it in the
//! current assignment. Such chains rebalance without adding to the data
//! moved from the current assignment.
//!
//! Because the unlimited move graph is the exact residual graph of the
//! placement flow problem, no path there means no sequence of moves can help
//! in this phase.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::cluster::Cluster;
use super::layout::{Layout, Tenure};
use super::phase::Phase;
use super::search::Move;
use super::search::Search;
use super::target::Target;

/// The most shards a free search looks at before giving up. Free chains
/// that help are short; the bound keeps a failing search from scanning every
/// replica of a large cluster for each move.
const FREE_SEARCH_BUDGET: usize = 20_000;

/// Which moves a search may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cost {
    /// Only moves that add nothing to the data moved from the current
    /// assignment: moving a replica this run placed, or handing a replica
    /// back to a node that held it before.
    Free,
    /// Any move.
    Any,
}

/// The shortest chain of moves from a giver to a taker in `phase`, using
/// moves of `cost` and no `banned` shard; `None` when there is none.
pub(crate) fn find_path(
    cluster: &Cluster,
    layout: &Layout,
    targets: &[Target],
    phase: Phase,
    cost: Cost,
    banned: &BTreeSet<usize>,
) -> Option<Vec<Move>> {
    let nodes = 0..cluster.len();
    let mut givers: Vec<usize> = nodes
        .clone()
        .filter(|&v| phase.gives(layout.load(v), &targets[v]))
        .collect();
    if givers.is_empty()
        || !nodes
            .clone()
            .any(|v| phase.takes(layout.load(v), &targets[v]))
    {
        return None;
    }
    // A free chain ends with a taker receiving a replica its sender placed
    // this run, or one it held before; without either, skip the search.
    if cost == Cost::Free
        && !nodes.clone().any(|v| {
            if phase.takes(layout.load(v), &targets[v]) {
                layout.returnable[v] > 0
            } else {
                layout.fresh[v] > 0
            }
        })
    {
        return None;
    }
    givers.sort_by_key(|&v| (Reverse(Phase::urgency(layout.load(v), &targets[v])), v));
    let mut search = Search::new(cluster, layout, targets, phase, givers);

    let mut budget = FREE_SEARCH_BUDGET;
    while let Some(a) = search.next_node() {
        // Free searches need no preference order (every edge costs nothing),
        // so they skip the sort.
        let shards = match cost {
            Cost::Free => layout.held[a].iter().copied().collect(),
            Cost::Any => layout.shards_by_tenure(a),
        };
        for s in shards {
            if search.exhausted() {
                return None;
            }
            if cost == Cost::Free {
                if budget == 0 {
                    return None;
                }
                budget -= 1;
            }
            if banned.contains(&s) {
                continue;
            }
            let found = if cost == Cost::Free && layout.tenure(s, a) != Tenure::New {
                search.hand_back(a, s)
            } else {
                search.pass_on(a, s)
            };
            if let Some(end) = found {
                return Some(search.trace(end));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::test_support::{cluster, layout};
    use crate::Assignment;

    fn setup(islands: &[&str], rf: usize, shards: &[&[usize]]) -> (Cluster, Layout) {
        let c = cluster(islands, rf);
        let l = layout(&c, shards, &Assignment::new());
        (c, l)
    }

    /// The path from over to under, any moves allowed, nothing banned.
    fn over_to_under(c: &Cluster, layout: &Layout, targets: &[Target]) -> Option<Vec<Move>> {
        find_path(
            c,
            layout,
            targets,
            Phase::OverToUnder,
            Cost::Any,
            &BTreeSet::new(),
        )
    }

    fn mv(shard: usize, from: usize, to: usize) -> Move {
        Move { shard, from, to }
    }

    fn target(x: u64) -> Target {
        Target {
            ideal: x as f64,
            lo: x,
            hi: x,
        }
    }

    #[test]
    fn a_direct_move_is_found_first() {
        let (c, layout) = setup(&["a"; 3], 1, &[&[0], &[0], &[1]]);
        let targets = [target(1), target(1), target(1)];
        let path = over_to_under(&c, &layout, &targets);
        assert_eq!(path, Some(vec![mv(0, 0, 2)]));
    }

    #[test]
    fn a_chain_passes_through_a_middle_node_whose_load_stays() {
        // Node 0 is over and node 2 under, but node 2 already holds every
        // shard of node 0: node 0 passes shard 0 to node 1, which passes
        // shard 2 to node 2.
        let (c, layout) = setup(&["a"; 4], 2, &[&[0, 2], &[0, 2], &[1, 3], &[1, 3]]);
        let targets = [target(1), target(2), target(3), target(2)];
        let path = over_to_under(&c, &layout, &targets);
        assert_eq!(path, Some(vec![mv(0, 0, 1), mv(2, 1, 2)]));
    }

    #[test]
    fn island_bounds_block_moves_across_islands() {
        // RF 2 over islands {0, 1} and {2, 3}: one replica per island, so a
        // replica can only move within its island.
        let (c, layout) = setup(
            &["a", "a", "b", "b"],
            2,
            &[&[0, 2], &[0, 3], &[1, 2], &[0, 2]],
        );
        // Node 0 is over, node 3 under; node 1 is full.
        let targets = [target(2), target(1), target(3), target(2)];
        let path = over_to_under(&c, &layout, &targets);
        assert_eq!(path, None);
        // Once node 1 may take, node 0 gives it shard 0.
        let targets = [target(2), target(2), target(3), target(2)];
        let path = over_to_under(&c, &layout, &targets);
        assert_eq!(path, Some(vec![mv(0, 0, 1)]));
    }

    #[test]
    fn banned_shards_are_not_used() {
        let (c, layout) = setup(&["a"; 3], 1, &[&[0], &[0], &[1]]);
        let targets = [target(1), target(1), target(1)];
        let banned = BTreeSet::from([0, 1]);
        assert_eq!(
            find_path(
                &c,
                &layout,
                &targets,
                Phase::OverToUnder,
                Cost::Any,
                &banned
            ),
            None
        );
    }

    #[test]
    fn nothing_to_do_finds_nothing() {
        let (c, layout) = setup(&["a"; 3], 1, &[&[0], &[1], &[2]]);
        let targets = [target(1), target(1), target(1)];
        for phase in Phase::ALL {
            assert_eq!(
                find_path(&c, &layout, &targets, phase, Cost::Any, &BTreeSet::new()),
                None
            );
        }
    }
}
