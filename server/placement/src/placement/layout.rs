//! The working assignment that the placement steps edit: each shard's
//! replica list, each node's shards, and what the current assignment said.

use std::collections::BTreeSet;

use atoll_proto::ShardId;

use super::cluster::Cluster;
use super::spec::Assignment;

/// How a node came to hold a replica, from the cheapest to move to the
/// dearest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tenure {
    /// Placed by this run: moving it elsewhere costs no extra data transfer.
    New,
    /// Held before as a follower.
    Follower,
    /// Held before as the preferred leader.
    Leader,
}

/// Shards by index (ascending id), nodes by cluster index.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Shard ids, ascending.
    pub shard_ids: Vec<ShardId>,
    /// Each shard's replicas, in preference order.
    pub replicas: Vec<Vec<usize>>,
    /// Each shard's current replicas that still exist, in current order.
    pub previous: Vec<Vec<usize>>,
    /// Each node's shards.
    pub held: Vec<BTreeSet<usize>>,
    /// Per node, replicas it holds that it did not hold before ([`Tenure::New`]).
    pub fresh: Vec<usize>,
    /// Per node, shards it held before but does not hold now.
    pub returnable: Vec<usize>,
}

impl Layout {
    /// An empty layout for `shard_ids` (sorted, distinct), remembering what
    /// `current` said about them.
    pub fn new(cluster: &Cluster, shard_ids: Vec<ShardId>, current: &Assignment) -> Self {
        let previous: Vec<Vec<usize>> = shard_ids
            .iter()
            .map(|id| {
                let mut nodes: Vec<usize> = Vec::new();
                for &node in current.get(id).map(Vec::as_slice).unwrap_or_default() {
                    if let Some(n) = cluster.index_of(node) {
                        if !nodes.contains(&n) {
                            nodes.push(n);
                        }
                    }
                }
                nodes
            })
            .collect();
        let mut returnable = vec![0; cluster.len()];
        for &n in previous.iter().flatten() {
            returnable[n] += 1;
        }
        Layout {
            replicas: vec![Vec::new(); shard_ids.len()],
            shard_ids,
            previous,
            held: vec![BTreeSet::new(); cluster.len()],
            fresh: vec![0; cluster.len()],
            returnable,
        }
    }

    /// Replicas node `n` holds.
    pub fn load(&self, n: usize) -> usize {
        self.held[n].len()
    }

    /// Replicas each node holds.
    pub fn loads(&self) -> Vec<usize> {
        self.held.iter().map(BTreeSet::len).collect()
    }

    /// Adds node `n` at the end of shard `s`.
    pub fn add(&mut self, s: usize, n: usize) {
        self.replicas[s].push(n);
        self.held[n].insert(s);
        self.count_in(s, n);
    }

    /// Replaces `from` by `to` in shard `s`, in place. False (and nothing
    /// changed) when `from` is not in the shard or `to` already is.
    pub fn replace(&mut self, s: usize, from: usize, to: usize) -> bool {
        let list = &mut self.replicas[s];
        if list.contains(&to) {
            return false;
        }
        let Some(pos) = list.iter().position(|&n| n == from) else {
            return false;
        };
        list[pos] = to;
        self.held[from].remove(&s);
        self.held[to].insert(s);
        self.count_out(s, from);
        self.count_in(s, to);
        true
    }

    /// Updates the tenure counters for node `n` joining shard `s`.
    fn count_in(&mut self, s: usize, n: usize) {
        if self.previous[s].contains(&n) {
            self.returnable[n] -= 1;
        } else {
            self.fresh[n] += 1;
        }
    }

    /// Updates the tenure counters for node `n` leaving shard `s`.
    fn count_out(&mut self, s: usize, n: usize) {
        if self.previous[s].contains(&n) {
            self.returnable[n] += 1;
        } else {
            self.fresh[n] -= 1;
        }
    }

    /// How node `n` came to hold shard `s`.
    pub fn tenure(&self, s: usize, n: usize) -> Tenure {
        match self.previous[s].iter().position(|&p| p == n) {
            None => Tenure::New,
            Some(0) => Tenure::Leader,
            Some(_) => Tenure::Follower,
        }
    }

    /// Node `n`'s shards, cheapest to move first.
    pub fn shards_by_tenure(&self, n: usize) -> Vec<usize> {
        let mut shards: Vec<usize> = self.held[n].iter().copied().collect();
        shards.sort_by_key(|&s| (self.tenure(s, n), s));
        shards
    }

    /// The finished assignment.
    pub fn into_assignment(self, cluster: &Cluster) -> Assignment {
        self.shard_ids
            .into_iter()
            .zip(self.replicas)
            .map(|(id, nodes)| (id, nodes.into_iter().map(|n| cluster.ids[n]).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use atoll_proto::NodeId;

    use super::*;
    use crate::placement::test_support::node;
    use crate::NodeSpec;

    /// Nodes 1 to 4, all on island a; RF 2.
    fn cluster() -> Cluster {
        let nodes: Vec<NodeSpec> = (1..=4).map(|i| node(i, "a", 1)).collect();
        Cluster::new(&nodes, 2).unwrap()
    }

    #[test]
    fn previous_keeps_existing_nodes_once_in_order() {
        let c = cluster();
        let current =
            Assignment::from([(ShardId(7), vec![NodeId(3), NodeId(9), NodeId(1), NodeId(3)])]);
        let layout = Layout::new(&c, vec![ShardId(5), ShardId(7)], &current);
        assert_eq!(layout.previous, vec![vec![], vec![2, 0]]);
        assert_eq!(layout.tenure(1, 2), Tenure::Leader);
        assert_eq!(layout.tenure(1, 0), Tenure::Follower);
        assert_eq!(layout.tenure(1, 1), Tenure::New);
        assert_eq!(layout.returnable, vec![1, 0, 1, 0]);
    }

    #[test]
    fn tenure_counters_follow_moves() {
        let c = cluster();
        let current = Assignment::from([(ShardId(1), vec![NodeId(1), NodeId(2)])]);
        let mut layout = Layout::new(&c, vec![ShardId(1)], &current);
        layout.add(0, 0);
        layout.add(0, 2);
        assert_eq!(
            (layout.fresh.clone(), layout.returnable.clone()),
            (vec![0, 0, 1, 0], vec![0, 1, 0, 0])
        );
        assert!(layout.replace(0, 2, 1));
        assert_eq!(
            (layout.fresh.clone(), layout.returnable.clone()),
            (vec![0; 4], vec![0; 4])
        );
        assert!(layout.replace(0, 0, 3));
        assert_eq!(
            (layout.fresh.clone(), layout.returnable.clone()),
            (vec![0, 0, 0, 1], vec![1, 0, 0, 0])
        );
    }

    #[test]
    fn replace_moves_a_replica_in_place() {
        let c = cluster();
        let mut layout = Layout::new(&c, vec![ShardId(1)], &Assignment::new());
        layout.add(0, 0);
        layout.add(0, 1);
        assert!(!layout.replace(0, 0, 1));
        assert!(!layout.replace(0, 2, 3));
        assert!(layout.replace(0, 0, 3));
        assert_eq!(layout.replicas[0], vec![3, 1]);
        assert_eq!(layout.loads(), vec![0, 1, 0, 1]);
        assert_eq!(layout.fresh, vec![0, 1, 0, 1]);
        let out = layout.into_assignment(&c);
        assert_eq!(out[&ShardId(1)], vec![NodeId(4), NodeId(2)]);
    }
}
