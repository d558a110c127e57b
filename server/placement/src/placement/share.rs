//! Exact proportional shares with bounds ("water-filling").
//!
//! Splits an integer total over items in proportion to their weights, each
//! item clamped to its own `[lo, hi]`: item `i` gets `clamp(lambda * w_i, lo_i,
//! hi_i)` for the one `lambda` that makes the shares add up to the total. The
//! result is exact: every share is a fraction over one common denominator, so
//! rounding each share down or up is never off by floating-point error.

use std::cmp::Ordering;

/// An exact non-negative fraction `num / den`, `den > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// Numerator.
    pub num: u128,
    /// Denominator, positive.
    pub den: u128,
}

impl Share {
    /// The largest integer not above the share.
    pub fn floor(self) -> u64 {
        u64::try_from(self.num / self.den).unwrap_or(u64::MAX)
    }

    /// The smallest integer not below the share.
    pub fn ceil(self) -> u64 {
        u64::try_from(self.num.div_ceil(self.den)).unwrap_or(u64::MAX)
    }

    /// The share as a float, for heuristics only.
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// One item to share among: a positive weight and integer bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// Relative weight, positive, at most 2^32.
    pub weight: u128,
    /// Smallest share.
    pub lo: u128,
    /// Largest share, at least `lo`.
    pub hi: u128,
}

/// Splits `total` over `items` in proportion to weight, within each item's
/// bounds. Needs `sum(lo) <= total <= sum(hi)`, positive weights at most
/// 2^32, and bounds and total at most 2^72 (then every product fits `u128`).
/// All shares have one common denominator and add up to `total` exactly.
pub(crate) fn water_fill(total: u128, items: &[Item]) -> Vec<Share> {
    let (num, den) = level(total, items);
    items
        .iter()
        .map(|it| Share {
            num: (num * it.weight).clamp(it.lo * den, it.hi * den),
            den,
        })
        .collect()
}

/// The level `lambda = num / den` at which the clamped shares add up to
/// `total`.
fn level(total: u128, items: &[Item]) -> (u128, u128) {
    // Breakpoints, where some item starts or stops following the level.
    let mut points: Vec<(u128, u128)> = items
        .iter()
        .flat_map(|it| [(it.lo, it.weight), (it.hi, it.weight)])
        .collect();
    points.sort_by(|&a, &b| compare(a, b));
    points.dedup_by(|a, b| compare(*a, *b) == Ordering::Equal);
    // The shares at the first breakpoint are all at `lo`, whose sum is at
    // most `total`; find the last breakpoint whose shares are still at most
    // `total` (the sum never decreases as the level rises).
    let at_most_total = |&(p, q): &(u128, u128)| filled(p, q, items) <= total.saturating_mul(q);
    let k = points.partition_point(at_most_total).saturating_sub(1);
    let Some(&(p, q)) = points.get(k) else {
        return (0, 1);
    };
    if filled(p, q, items) == total.saturating_mul(q) {
        return (p, q);
    }
    let Some(&next) = points.get(k + 1) else {
        return (p, q);
    };
    // Between the two breakpoints the sum is linear in the level: items
    // already at `hi` or still at `lo` are fixed; the rest share what is left.
    let (mut fixed, mut free_weight) = (0u128, 0u128);
    for it in items {
        if compare((it.hi, it.weight), (p, q)) != Ordering::Greater {
            fixed += it.hi;
        } else if compare((it.lo, it.weight), next) != Ordering::Less {
            fixed += it.lo;
        } else {
            free_weight += it.weight;
        }
    }
    if free_weight == 0 {
        return (p, q);
    }
    (total.saturating_sub(fixed), free_weight)
}

/// Compares fractions `a.0 / a.1` and `b.0 / b.1`.
fn compare(a: (u128, u128), b: (u128, u128)) -> Ordering {
    (a.0 * b.1).cmp(&(b.0 * a.1))
}

/// The sum of clamped shares at level `p / q`, times `q`.
fn filled(p: u128, q: u128, items: &[Item]) -> u128 {
    items.iter().fold(0u128, |sum, it| {
        sum.saturating_add((p * it.weight).clamp(it.lo * q, it.hi * q))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(weight: u128, lo: u128, hi: u128) -> Item {
        Item { weight, lo, hi }
    }

    fn as_f64s(shares: &[Share]) -> Vec<f64> {
        shares.iter().map(|s| s.as_f64()).collect()
    }

    fn sums_to(shares: &[Share], total: u128) {
        let den = shares[0].den;
        assert!(shares.iter().all(|s| s.den == den));
        assert_eq!(shares.iter().map(|s| s.num).sum::<u128>(), total * den);
    }

    #[test]
    fn unbounded_shares_follow_weight() {
        let items = [item(1, 0, 100), item(2, 0, 100), item(3, 0, 100)];
        let shares = water_fill(60, &items);
        sums_to(&shares, 60);
        assert_eq!(as_f64s(&shares), vec![10.0, 20.0, 30.0]);
    }

    #[test]
    fn fractional_shares_are_exact() {
        let shares = water_fill(10, &[item(1, 0, 10), item(1, 0, 10), item(1, 0, 10)]);
        sums_to(&shares, 10);
        assert!(shares.iter().all(|s| s.floor() == 3 && s.ceil() == 4));
        let whole = water_fill(9, &[item(1, 0, 9), item(1, 0, 9), item(1, 0, 9)]);
        assert!(whole.iter().all(|s| s.floor() == 3 && s.ceil() == 3));
    }

    #[test]
    fn a_capped_item_passes_its_excess_to_the_others() {
        // Weight 10 would take 100 of 120, but can hold only 40.
        let shares = water_fill(120, &[item(10, 0, 40), item(1, 0, 120), item(1, 0, 120)]);
        sums_to(&shares, 120);
        assert_eq!(as_f64s(&shares), vec![40.0, 40.0, 40.0]);
        let shares = water_fill(120, &[item(10, 0, 60), item(1, 0, 120), item(3, 0, 120)]);
        assert_eq!(as_f64s(&shares), vec![60.0, 15.0, 45.0]);
    }

    #[test]
    fn a_floor_item_takes_its_minimum_first() {
        // Weight 1 would take 10 of 100, but must take at least 50.
        let shares = water_fill(100, &[item(1, 50, 100), item(9, 0, 100)]);
        sums_to(&shares, 100);
        assert_eq!(as_f64s(&shares), vec![50.0, 50.0]);
    }

    #[test]
    fn tight_bounds_decide_everything() {
        let shares = water_fill(30, &[item(5, 10, 10), item(1, 10, 10), item(7, 10, 10)]);
        assert_eq!(as_f64s(&shares), vec![10.0; 3]);
    }

    #[test]
    fn shares_always_sum_to_the_total_within_bounds() {
        let weights = [1u128, 7, 3, 1 << 32, 2, 5];
        for total in [0u128, 1, 5, 17, 100, 1 << 40] {
            for cap in [total, total / 2 + 1, total / 3 + 1] {
                let items: Vec<Item> = weights.iter().map(|&w| item(w, 0, cap)).collect();
                if cap * (items.len() as u128) < total {
                    continue;
                }
                let shares = water_fill(total, &items);
                sums_to(&shares, total);
                for (s, it) in shares.iter().zip(&items) {
                    assert!(s.num <= it.hi * s.den);
                }
            }
        }
    }
}
