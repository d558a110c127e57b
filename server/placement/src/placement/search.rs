//! One breadth-first search over replica moves: its state, and the two
//! kinds of step it takes from a node (pass a replica to any node that may
//! take it, or hand one back to a node that held it before).

use std::collections::VecDeque;

use super::cluster::Cluster;
use super::layout::Layout;
use super::phase::Phase;
use super::target::Target;

/// One replica move: shard `shard` swaps node `from` for node `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Move {
    /// Shard index.
    pub shard: usize,
    /// Node index giving the replica.
    pub from: usize,
    /// Node index taking it.
    pub to: usize,
}

/// The state of one breadth-first search.
pub(crate) struct Search<'a> {
    cluster: &'a Cluster,
    layout: &'a Layout,
    targets: &'a [Target],
    phase: Phase,
    /// How each reached node was reached: (previous node, shard).
    parent: Vec<Option<(usize, usize)>>,
    /// Nodes reached (givers included).
    seen: Vec<bool>,
    /// Per island, nodes not yet reached (seen ones are dropped lazily).
    unseen: Vec<Vec<usize>>,
    /// Islands whose `unseen` list is not empty.
    open: Vec<usize>,
    /// Reached nodes still to expand.
    queue: VecDeque<usize>,
}

impl<'a> Search<'a> {
    /// A search starting from `givers`, in order.
    pub fn new(
        cluster: &'a Cluster,
        layout: &'a Layout,
        targets: &'a [Target],
        phase: Phase,
        givers: Vec<usize>,
    ) -> Self {
        let mut seen = vec![false; cluster.len()];
        for &v in &givers {
            seen[v] = true;
        }
        let unseen: Vec<Vec<usize>> = cluster
            .islands
            .iter()
            .map(|island| island.nodes.iter().copied().filter(|&v| !seen[v]).collect())
            .collect();
        let open = (0..unseen.len())
            .filter(|&i| !unseen[i].is_empty())
            .collect();
        Search {
            cluster,
            layout,
            targets,
            phase,
            parent: vec![None; cluster.len()],
            seen,
            unseen,
            open,
            queue: givers.into(),
        }
    }

    /// The next reached node to expand.
    pub fn next_node(&mut self) -> Option<usize> {
        self.queue.pop_front()
    }

    /// Whether every node has been reached.
    pub fn exhausted(&self) -> bool {
        self.open.is_empty()
    }

    /// Whether `a` may pass shard `s` to a node on island `to`.
    fn allowed(&self, a: usize, s: usize, to: usize) -> bool {
        self.cluster.allows_move(&self.layout.replicas[s], a, to)
    }

    /// Reaches `b` from `a` through `s`; `Some(b)` if `b` takes.
    fn reach(&mut self, a: usize, s: usize, b: usize) -> Option<usize> {
        self.seen[b] = true;
        self.parent[b] = Some((a, s));
        if self.phase.takes(self.layout.load(b), &self.targets[b]) {
            return Some(b);
        }
        self.queue.push_back(b);
        None
    }

    /// Passes `s` from `a` to any node that may take it.
    pub fn pass_on(&mut self, a: usize, s: usize) -> Option<usize> {
        for k in 0..self.open.len() {
            let j = self.open[k];
            if !self.allowed(a, s, j) {
                continue;
            }
            let mut i = 0;
            while i < self.unseen[j].len() {
                let b = self.unseen[j][i];
                if self.seen[b] {
                    self.unseen[j].swap_remove(i);
                } else if self.layout.replicas[s].contains(&b) {
                    i += 1;
                } else {
                    self.unseen[j].swap_remove(i);
                    if let Some(end) = self.reach(a, s, b) {
                        return Some(end);
                    }
                }
            }
        }
        let unseen = &self.unseen;
        self.open.retain(|&j| !unseen[j].is_empty());
        None
    }

    /// Hands `s` from `a` back to a node that held it in the current
    /// assignment.
    pub fn hand_back(&mut self, a: usize, s: usize) -> Option<usize> {
        for k in 0..self.layout.previous[s].len() {
            let b = self.layout.previous[s][k];
            let island = self.cluster.island_of[b];
            if self.seen[b] || self.layout.replicas[s].contains(&b) || !self.allowed(a, s, island) {
                continue;
            }
            if let Some(end) = self.reach(a, s, b) {
                return Some(end);
            }
        }
        None
    }

    /// The moves that lead from a giver to `end`, giver first.
    pub fn trace(&self, end: usize) -> Vec<Move> {
        let mut moves = Vec::new();
        let mut to = end;
        while let Some((from, shard)) = self.parent[to] {
            moves.push(Move { shard, from, to });
            to = from;
        }
        moves.reverse();
        moves
    }
}
