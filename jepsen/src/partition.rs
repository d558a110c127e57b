//! Partition shapes, as grudges ([`Grudge`]: who drops whose packets), and
//! who ends up in a minority under one.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::netns::Grudge;

/// The kinds of partitions the nemesis draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Two random halves (the smaller one is a minority).
    Halves,
    /// One random node alone.
    Isolate,
    /// Every node of one random island on its own.
    Island,
    /// Each node reaches only its neighbours on a ring: everyone sees a
    /// majority, no two nodes the same one.
    MajorityRing,
    /// Two halves that cannot talk, and one node that reaches both.
    Bridge,
    /// One node hears no one, while everyone still hears it: a leader goes
    /// on sending heartbeats but never gets an answer.
    OneWay,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 6] = [
        Shape::Halves,
        Shape::Isolate,
        Shape::Island,
        Shape::MajorityRing,
        Shape::Bridge,
        Shape::OneWay,
    ];
}

/// A partition to apply, and what it is, for the run's events.
#[derive(Clone, Debug)]
pub struct Partition {
    /// The rules.
    pub grudge: Grudge,
    /// For example `halves {1,3} | {2}`.
    pub description: String,
}

/// Every node drops the packets of every node outside its own group.
pub fn complete(groups: &[Vec<usize>]) -> Grudge {
    let mut grudge = Grudge::new();
    for group in groups {
        for &i in group {
            let others = groups
                .iter()
                .filter(|g| !std::ptr::eq(*g, group))
                .flatten()
                .copied()
                .collect::<BTreeSet<_>>();
            grudge.insert(i, others);
        }
    }
    grudge
}

fn show(group: &[usize]) -> String {
    let mut nodes: Vec<_> = group.iter().map(|i| (i + 1).to_string()).collect();
    nodes.sort();
    format!("{{{}}}", nodes.join(","))
}

/// Draws a partition of `islands.len()` nodes (node `i` on island
/// `islands[i]`) of the given shape.
pub fn draw(shape: Shape, islands: &[String], rng: &mut impl Rng) -> Partition {
    let n = islands.len();
    let mut nodes: Vec<usize> = (0..n).collect();
    nodes.shuffle(rng);
    match shape {
        Shape::Halves => {
            let (a, b) = nodes.split_at(n / 2);
            Partition {
                grudge: complete(&[a.to_vec(), b.to_vec()]),
                description: format!("halves {} | {}", show(a), show(b)),
            }
        }
        Shape::Isolate => {
            let (a, b) = nodes.split_at(1.min(n));
            Partition {
                grudge: complete(&[a.to_vec(), b.to_vec()]),
                description: format!("isolate node {}", show(a)),
            }
        }
        Shape::Island => {
            let island = &islands[rng.random_range(0..n)];
            let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| &islands[i] == island);
            Partition {
                grudge: complete(&[a.clone(), b.clone()]),
                description: format!("island {island} {} | {}", show(&a), show(&b)),
            }
        }
        Shape::MajorityRing => {
            // Node at ring position p reaches the 2 * reach + 1 positions
            // around it, just a majority. (With 3 nodes that is everyone.)
            let reach = (n / 2).div_ceil(2);
            let mut grudge = Grudge::new();
            for p in 0..n {
                let far = (0..n)
                    .filter(|&q| {
                        let d = p.abs_diff(q);
                        d.min(n - d) > reach
                    })
                    .map(|q| nodes[q])
                    .collect();
                grudge.insert(nodes[p], far);
            }
            let ring: Vec<_> = nodes.iter().map(|i| (i + 1).to_string()).collect();
            Partition {
                grudge,
                description: format!("majority ring {}", ring.join("-")),
            }
        }
        Shape::OneWay => {
            let deaf = nodes[0];
            let others = nodes[1..].iter().copied().collect();
            Partition {
                grudge: Grudge::from([(deaf, others)]),
                description: format!("node {} hears no one (one way)", deaf + 1),
            }
        }
        Shape::Bridge => {
            let bridge = nodes[0];
            let rest = &nodes[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let mut grudge = complete(&[a.to_vec(), b.to_vec()]);
            grudge.insert(bridge, BTreeSet::new());
            Partition {
                grudge,
                description: format!("bridge {} | node {} | {}", show(a), bridge + 1, show(b)),
            }
        }
    }
}

/// Whether nodes `i` and `j` can talk (neither drops the other's packets).
pub fn connected(grudge: &Grudge, i: usize, j: usize) -> bool {
    let drops = |a: usize, b: usize| grudge.get(&a).is_some_and(|s| s.contains(&b));
    !drops(i, j) && !drops(j, i)
}

/// The nodes (of `n`) that reach fewer than a majority, themselves counted:
/// a leader among them cannot commit.
pub fn minority(grudge: &Grudge, n: usize) -> BTreeSet<usize> {
    (0..n)
        .filter(|&i| (0..n).filter(|&j| connected(grudge, i, j)).count() < n / 2 + 1)
        .collect()
}
