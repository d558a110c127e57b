//! Preferred leaders: the first replica of each shard.
//!
//! A shard keeps its current leader while that node still holds it. Shards
//! without one take the replica least far along towards its leader target
//! (rendezvous score breaks ties). Then leadership is passed along chains
//! (node `a` leads shard `s`, node `b` holds `s`: `b` may take over) in the
//! same three [`Phase`]s as replicas, newly given leaderships moving first,
//! until every node leads within its window where the replicas allow it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

use super::cluster::Cluster;
use super::layout::Layout;
use super::phase::Phase;
use super::rendezvous;
use super::target::{Eagerness, Target};

/// Chooses each shard's leader and puts it first in the replica list.
pub(crate) fn assign_leaders(cluster: &Cluster, layout: &mut Layout, targets: &[Target]) {
    let mut leaders = Leaders::initial(cluster, layout, targets);
    for phase in Phase::ALL {
        while let Some(path) = leaders.find_path(layout, targets, phase) {
            for (shard, to) in path {
                leaders.set(shard, to);
            }
        }
    }
    for (s, leader) in leaders.of.iter().enumerate() {
        let Some(leader) = *leader else { continue };
        let list = &mut layout.replicas[s];
        if let Some(pos) = list.iter().position(|&n| n == leader) {
            list[..=pos].rotate_right(1);
        }
    }
}

/// Who leads what.
struct Leaders {
    /// Leader (node index) of each shard, once chosen.
    of: Vec<Option<usize>>,
    /// Shards each node leads.
    led: Vec<BTreeSet<usize>>,
}

impl Leaders {
    /// Current leaders where they remain, greedy choices elsewhere.
    fn initial(cluster: &Cluster, layout: &Layout, targets: &[Target]) -> Self {
        let shards = layout.replicas.len();
        let mut leaders = Leaders {
            of: vec![None; shards],
            led: vec![BTreeSet::new(); cluster.len()],
        };
        for s in 0..shards {
            if let Some(&first) = layout.previous[s].first() {
                if layout.replicas[s].contains(&first) {
                    leaders.set(s, first);
                }
            }
        }
        for s in 0..shards {
            if leaders.of[s].is_some() {
                continue;
            }
            let shard = layout.shard_ids[s];
            let best = layout.replicas[s].iter().copied().min_by(|&a, &b| {
                let eager = |n: usize| {
                    Eagerness::new(
                        leaders.led[n].len(),
                        &targets[n],
                        rendezvous::score(shard, cluster.ids[n]),
                    )
                };
                eager(a).compare(&eager(b)).then(a.cmp(&b))
            });
            if let Some(n) = best {
                leaders.set(s, n);
            }
        }
        leaders
    }

    /// Makes `node` the leader of `shard`.
    fn set(&mut self, shard: usize, node: usize) {
        if let Some(old) = self.of[shard] {
            self.led[old].remove(&shard);
        }
        self.of[shard] = Some(node);
        self.led[node].insert(shard);
    }

    /// The shortest chain of leadership hand-overs from a giver to a taker,
    /// as (shard, new leader) pairs in order.
    fn find_path(
        &self,
        layout: &Layout,
        targets: &[Target],
        phase: Phase,
    ) -> Option<Vec<(usize, usize)>> {
        let count = |v: usize| self.led[v].len();
        let nodes = 0..self.led.len();
        let mut givers: Vec<usize> = nodes
            .clone()
            .filter(|&v| phase.gives(count(v), &targets[v]))
            .collect();
        if givers.is_empty() || !nodes.clone().any(|v| phase.takes(count(v), &targets[v])) {
            return None;
        }
        givers.sort_by_key(|&v| (Reverse(Phase::urgency(count(v), &targets[v])), v));
        let mut seen = vec![false; self.led.len()];
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; self.led.len()];
        for &v in &givers {
            seen[v] = true;
        }
        let mut queue: VecDeque<usize> = givers.into();
        while let Some(a) = queue.pop_front() {
            // Leaderships given by this run move before kept ones.
            let mut shards: Vec<usize> = self.led[a].iter().copied().collect();
            let kept = |s: usize| layout.previous[s].first() == Some(&a);
            shards.sort_by(|&x, &y| kept(x).cmp(&kept(y)).then(x.cmp(&y)));
            for s in shards {
                for &b in &layout.replicas[s] {
                    if seen[b] {
                        continue;
                    }
                    seen[b] = true;
                    parent[b] = Some((a, s));
                    if phase.takes(count(b), &targets[b]) {
                        return Some(trace(&parent, b));
                    }
                    queue.push_back(b);
                }
            }
        }
        None
    }
}

/// The hand-overs leading to `end`, first one first.
fn trace(parent: &[Option<(usize, usize)>], end: usize) -> Vec<(usize, usize)> {
    let mut path = Vec::new();
    let mut to = end;
    while let Some((from, shard)) = parent[to] {
        path.push((shard, to));
        to = from;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use atoll_proto::{NodeId, ShardId};

    use super::*;
    use crate::placement::target::leader_targets;
    use crate::placement::test_support::{cluster, layout};
    use crate::Assignment;

    fn led_counts(layout: &Layout, nodes: usize) -> Vec<usize> {
        let mut counts = vec![0; nodes];
        for r in &layout.replicas {
            counts[r[0]] += 1;
        }
        counts
    }

    #[test]
    fn leaders_spread_evenly_over_equal_nodes() {
        let c = cluster(&["a"; 4], 2);
        let shards: Vec<&[usize]> = vec![&[0, 1]; 8];
        let mut l = layout(&c, &shards, &Assignment::new());
        // Only nodes 0 and 1 hold replicas, so they split the leaderships.
        let targets = leader_targets(&c, 8, &l.loads());
        assign_leaders(&c, &mut l, &targets);
        assert_eq!(led_counts(&l, 4), vec![4, 4, 0, 0]);
    }

    #[test]
    fn a_node_holding_every_shard_leads_only_its_share() {
        // Node 0 is alone on island a and holds every shard.
        let c = cluster(&["a", "b", "b", "c", "c"], 3);
        let shards: Vec<&[usize]> =
            vec![&[0, 1, 3], &[0, 2, 4], &[0, 1, 4], &[0, 2, 3], &[0, 1, 3]];
        let mut l = layout(&c, &shards, &Assignment::new());
        let targets = leader_targets(&c, 5, &l.loads());
        assign_leaders(&c, &mut l, &targets);
        assert_eq!(led_counts(&l, 5), vec![1; 5]);
        assert!(l.replicas.iter().all(|r| r.len() == 3));
    }

    #[test]
    fn current_leaders_stay_when_balanced() {
        let c = cluster(&["a"; 3], 3);
        let current: Assignment = (0..3)
            .map(|s| {
                (
                    ShardId(s),
                    vec![NodeId((s + 1) % 3), NodeId(s % 3), NodeId((s + 2) % 3)],
                )
            })
            .collect();
        let shards: Vec<&[usize]> = vec![&[0, 1, 2]; 3];
        let mut l = layout(&c, &shards, &current);
        let targets = leader_targets(&c, 3, &l.loads());
        assign_leaders(&c, &mut l, &targets);
        let leaders: Vec<usize> = l.replicas.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 0]);
        // The other replicas keep their order.
        assert_eq!(l.replicas[0], vec![1, 0, 2]);
    }

    #[test]
    fn current_leaders_move_only_as_needed() {
        // Node 0 currently leads all four shards; two must move.
        let c = cluster(&["a"; 2], 2);
        let current: Assignment = (0..4)
            .map(|s| (ShardId(s), vec![NodeId(0), NodeId(1)]))
            .collect();
        let shards: Vec<&[usize]> = vec![&[0, 1]; 4];
        let mut l = layout(&c, &shards, &current);
        let targets = leader_targets(&c, 4, &l.loads());
        assign_leaders(&c, &mut l, &targets);
        assert_eq!(led_counts(&l, 2), vec![2, 2]);
    }
}
