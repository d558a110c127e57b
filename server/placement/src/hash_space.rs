//! How the 64-bit hash space is cut into shard ranges.
//!
//! A range names both ends inclusively (`start..=last`), so the whole space,
//! which ends at `u64::MAX`, fits without a 65-bit exclusive end.

use crate::PlacementError;

/// A shard's range of the 64-bit hash space, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashRange {
    /// The first hash in the range.
    pub start: u64,
    /// The last hash in the range (inclusive).
    pub last: u64,
}

impl HashRange {
    /// The whole hash space, `0..=u64::MAX`.
    pub const FULL: HashRange = HashRange {
        start: 0,
        last: u64::MAX,
    };

    /// Whether `hash` falls in this range.
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.last
    }
}

/// Cuts the whole hash space into `n` (>= 1) equal contiguous ranges in hash
/// order that tile it exactly: the first starts at 0, the last ends at
/// `u64::MAX`, and each range starts right after the previous one ends.
/// Range sizes differ by at most one hash.
///
/// Returns [`PlacementError::ZeroShards`] when `n == 0`.
pub fn split_hash_space(n: u32) -> Result<Vec<HashRange>, PlacementError> {
    if n == 0 {
        return Err(PlacementError::ZeroShards);
    }
    let n = u128::from(n);
    // Boundary k is floor(k * 2^64 / n); range k is [boundary k, boundary k+1).
    let boundary = |k: u128| (k << 64) / n;
    Ok((0..n)
        .map(|k| HashRange {
            // Both values are below 2^64: boundary(k) < 2^64 for k < n, and
            // boundary(k + 1) <= 2^64 with boundary(k + 1) > boundary(k) >= 0.
            start: boundary(k) as u64,
            last: (boundary(k + 1) - 1) as u64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_tiles(ranges: &[HashRange]) {
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.last), Some(u64::MAX));
        for pair in ranges.windows(2) {
            assert!(pair[0].start <= pair[0].last);
            assert_eq!(pair[1].start, pair[0].last + 1);
        }
    }

    #[test]
    fn zero_shards_is_an_error() {
        assert_eq!(split_hash_space(0), Err(PlacementError::ZeroShards));
    }

    #[test]
    fn one_shard_is_the_full_space() {
        assert_eq!(split_hash_space(1).unwrap(), vec![HashRange::FULL]);
    }

    #[test]
    fn two_shards_cut_at_the_middle() {
        let ranges = split_hash_space(2).unwrap();
        assert_eq!(
            ranges[0],
            HashRange {
                start: 0,
                last: (1 << 63) - 1
            }
        );
        assert_eq!(
            ranges[1],
            HashRange {
                start: 1 << 63,
                last: u64::MAX
            }
        );
    }

    #[test]
    fn ranges_tile_the_space_with_sizes_within_one() {
        for n in [1, 2, 3, 5, 7, 10, 64, 1000, 4097] {
            let ranges = split_hash_space(n).unwrap();
            assert_eq!(ranges.len(), n as usize);
            assert_tiles(&ranges);
            let sizes: Vec<u128> = ranges
                .iter()
                .map(|r| u128::from(r.last) - u128::from(r.start) + 1)
                .collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "n = {n}: sizes from {min} to {max}");
            assert_eq!(sizes.iter().sum::<u128>(), 1u128 << 64);
        }
    }

    #[test]
    fn every_hash_is_in_exactly_one_range() {
        let ranges = split_hash_space(7).unwrap();
        for hash in [0, 1, u64::MAX / 7, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let owners = ranges.iter().filter(|r| r.contains(hash)).count();
            assert_eq!(owners, 1, "hash {hash}");
        }
        for r in &ranges {
            assert!(r.contains(r.start) && r.contains(r.last));
        }
    }

    #[test]
    fn full_range_contains_both_ends() {
        assert!(HashRange::FULL.contains(0));
        assert!(HashRange::FULL.contains(u64::MAX));
        let r = HashRange {
            start: 10,
            last: 20,
        };
        assert!(!r.contains(9) && r.contains(10) && r.contains(20) && !r.contains(21));
    }
}
