//! How many replicas of one shard each island takes.
//!
//! "As many islands as possible" is made exact by water-filling: raise a
//! common level `L` one replica at a time, each island taking
//! `min(its node count, L)`, while the total stays within the replication
//! factor. Every shard then holds between `lo = min(nodes, L)` and
//! `hi = min(nodes, L + 1)` replicas in each island. With 3 islands and RF 3
//! that is exactly one per island; with 2 islands and RF 3 it is 2 + 1; with 5
//! islands and RF 3 it is at most one per island. The number of distinct
//! islands per shard is then always `min(RF, islands)`.

/// The replicas one island holds of each shard: between `lo` and `hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spread {
    /// Fewest replicas of each shard on this island.
    pub lo: usize,
    /// Most replicas of each shard on this island.
    pub hi: usize,
}

/// The per-island bounds for islands of the given node counts.
///
/// Needs `rf <= sizes.iter().sum()` (checked by the caller) and non-empty
/// islands.
pub(crate) fn spread(sizes: &[usize], rf: usize) -> Vec<Spread> {
    let taken = |level: usize| sizes.iter().map(|&n| n.min(level)).sum::<usize>();
    let mut level = 0;
    // `taken` grows with the level until it reaches the total node count, so
    // the loop ends by level `rf` at the latest.
    while level < rf && taken(level + 1) <= rf {
        level += 1;
    }
    let exact = taken(level) == rf;
    sizes
        .iter()
        .map(|&n| {
            let lo = n.min(level);
            // When the level already places every replica, there is no slack.
            let hi = if exact { lo } else { n.min(level + 1) };
            Spread { lo, hi }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(sizes: &[usize], rf: usize) -> Vec<(usize, usize)> {
        spread(sizes, rf).iter().map(|s| (s.lo, s.hi)).collect()
    }

    #[test]
    fn three_islands_rf3_take_exactly_one_each() {
        assert_eq!(bounds(&[4, 4, 4], 3), vec![(1, 1); 3]);
        assert_eq!(bounds(&[1, 5, 9], 3), vec![(1, 1); 3]);
    }

    #[test]
    fn two_islands_rf3_take_two_and_one() {
        assert_eq!(bounds(&[3, 3], 3), vec![(1, 2), (1, 2)]);
        // A one-node island can hold only one replica, so the other holds two.
        assert_eq!(bounds(&[1, 3], 3), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn more_islands_than_rf_take_at_most_one_each() {
        assert_eq!(bounds(&[2, 2, 2, 2, 2], 3), vec![(0, 1); 5]);
        assert_eq!(bounds(&[1, 1, 1, 1], 2), vec![(0, 1); 4]);
    }

    #[test]
    fn one_island_takes_every_replica() {
        assert_eq!(bounds(&[5], 3), vec![(3, 3)]);
    }

    #[test]
    fn small_islands_cap_the_level() {
        // RF 5 over islands of 1 and 10 nodes: 1 + 4.
        assert_eq!(bounds(&[1, 10], 5), vec![(1, 1), (4, 4)]);
        // RF 4 over three big islands: 2 + 1 + 1 in some order.
        assert_eq!(bounds(&[3, 3, 3], 4), vec![(1, 2); 3]);
        // RF 5 over islands of 2, 2, 9: one each, plus two more on two islands.
        assert_eq!(bounds(&[2, 2, 9], 5), vec![(1, 2), (1, 2), (1, 2)]);
    }

    #[test]
    fn bounds_always_admit_rf_replicas() {
        for sizes in [
            vec![1],
            vec![2, 1],
            vec![1, 1, 7],
            vec![3, 2, 2, 1],
            vec![6, 6],
        ] {
            let total: usize = sizes.iter().sum();
            for rf in 1..=total {
                let s = spread(&sizes, rf);
                let lo: usize = s.iter().map(|x| x.lo).sum();
                let hi: usize = s.iter().map(|x| x.hi).sum();
                assert!(lo <= rf && rf <= hi, "{sizes:?} rf {rf}");
                let used = s.iter().filter(|x| x.lo > 0).count();
                if rf >= sizes.len() {
                    assert_eq!(used, sizes.len(), "{sizes:?} rf {rf}");
                } else {
                    assert!(s.iter().all(|x| x.hi == 1), "{sizes:?} rf {rf}");
                }
            }
        }
    }
}
