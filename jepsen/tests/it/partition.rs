//! Partition shapes: who reaches whom, and who is cut into a minority.

use atoll_jepsen::partition::{connected, draw, minority, Shape};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn islands(n: usize, k: usize) -> Vec<String> {
    (0..n).map(|i| format!("island-{}", i % k)).collect()
}

/// How many nodes (itself included) node `i` reaches.
fn reach(grudge: &atoll_jepsen::netns::Grudge, n: usize, i: usize) -> usize {
    (0..n).filter(|&j| connected(grudge, i, j)).count()
}

#[test]
fn halves_cut_the_smaller_half_into_a_minority() {
    for seed in 0..20 {
        let p = draw(
            Shape::Halves,
            &islands(5, 3),
            &mut StdRng::seed_from_u64(seed),
        );
        let cut = minority(&p.grudge, 5);
        assert_eq!(cut.len(), 2, "{}", p.description);
        for i in 0..5 {
            let expected = if cut.contains(&i) { 2 } else { 3 };
            assert_eq!(reach(&p.grudge, 5, i), expected, "{}", p.description);
        }
    }
}

#[test]
fn an_isolated_node_reaches_only_itself() {
    let p = draw(
        Shape::Isolate,
        &islands(3, 3),
        &mut StdRng::seed_from_u64(7),
    );
    let cut = minority(&p.grudge, 3);
    assert_eq!(cut.len(), 1);
    let alone = *cut.iter().next().unwrap();
    assert_eq!(reach(&p.grudge, 3, alone), 1);
    assert!(
        p.description.contains(&format!("{{{}}}", alone + 1)),
        "{}",
        p.description
    );
}

#[test]
fn an_island_is_cut_off_as_a_whole() {
    let names = islands(5, 3);
    for seed in 0..20 {
        let p = draw(Shape::Island, &names, &mut StdRng::seed_from_u64(seed));
        let cut = minority(&p.grudge, 5);
        let island = &names[*cut.iter().next().unwrap()];
        let members: Vec<usize> = (0..5).filter(|&i| &names[i] == island).collect();
        assert_eq!(
            cut.iter().copied().collect::<Vec<_>>(),
            members,
            "{}",
            p.description
        );
        assert!(p.description.contains(island.as_str()));
    }
}

#[test]
fn a_majority_ring_leaves_every_node_a_different_majority() {
    for n in [5, 7] {
        let p = draw(
            Shape::MajorityRing,
            &islands(n, 3),
            &mut StdRng::seed_from_u64(3),
        );
        assert!(minority(&p.grudge, n).is_empty(), "{}", p.description);
        for i in 0..n {
            let seen = reach(&p.grudge, n, i);
            assert!(seen > n / 2 && seen < n, "{seen} of {n}: {}", p.description);
        }
        // Not everyone sees the same majority.
        let sets: std::collections::BTreeSet<Vec<usize>> = (0..n)
            .map(|i| (0..n).filter(|&j| connected(&p.grudge, i, j)).collect())
            .collect();
        assert_eq!(sets.len(), n);
    }
}

#[test]
fn a_bridge_node_reaches_both_sides_and_they_do_not_reach_each_other() {
    let p = draw(
        Shape::Bridge,
        &islands(5, 3),
        &mut StdRng::seed_from_u64(11),
    );
    let bridge = (0..5).find(|&i| reach(&p.grudge, 5, i) == 5).unwrap();
    for i in (0..5).filter(|&i| i != bridge) {
        assert_eq!(reach(&p.grudge, 5, i), 3, "{}", p.description);
    }
    assert!(minority(&p.grudge, 5).is_empty());
}

#[test]
fn a_one_way_partition_deafens_one_node_only() {
    let p = draw(Shape::OneWay, &islands(5, 3), &mut StdRng::seed_from_u64(5));
    assert_eq!(p.grudge.len(), 1, "{}", p.description);
    let (&deaf, from) = p.grudge.iter().next().unwrap();
    assert_eq!(from.len(), 4);
    assert_eq!(
        minority(&p.grudge, 5).into_iter().collect::<Vec<_>>(),
        vec![deaf]
    );
    // The others still hear it: nobody else drops anything.
    assert!((0..5)
        .filter(|&i| i != deaf)
        .all(|i| !p.grudge.contains_key(&i)));
}

#[test]
fn grudges_other_than_one_way_are_symmetric() {
    for shape in Shape::ALL.into_iter().filter(|&s| s != Shape::OneWay) {
        for seed in 0..10 {
            let p = draw(shape, &islands(5, 3), &mut StdRng::seed_from_u64(seed));
            for (&i, from) in &p.grudge {
                for &j in from {
                    assert!(p.grudge[&j].contains(&i), "{shape:?}: {}", p.description);
                }
            }
        }
    }
}
