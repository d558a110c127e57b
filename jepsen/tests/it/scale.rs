//! Histories of the size a run produces per key: a few hundred operations
//! with heavy overlap and some ambiguous ones check within the default
//! budget, valid or not.

use std::time::Duration;

use atoll_jepsen::{check_register_history, Budget, Op, OpKind, Outcome, ProcessId, Reply};

use crate::support::{simulate, Rng, Step};

/// `per_key` operations on each of `keys` keys, about `overlap` of them
/// in flight at once, one in 20 ambiguous and one in 40 failed.
fn busy_history(seed: u64, keys: u8, per_key: usize, overlap: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let steps: Vec<Step> = (0..per_key * usize::from(keys))
        .map(|_| Step {
            key: rng.below(u64::from(keys)) as u8,
            action: rng.below(4) as u8,
            outcome: match rng.below(40) {
                0 | 1 => 1,
                2 => 2,
                3 => 3,
                _ => 0,
            },
            lead: rng.below(100 * overlap * u64::from(keys)),
            lag: rng.below(100 * overlap * u64::from(keys)),
        })
        .collect();
    simulate(&steps).0
}

#[test]
fn few_hundred_ops_per_key_with_ambiguity_are_valid_within_budget() {
    for (seed, overlap) in [(1, 10), (2, 10), (3, 20)] {
        let ops = busy_history(seed, 4, 400, overlap);
        let reports = check_register_history(&ops, &Budget::default()).unwrap();
        assert_eq!(reports.len(), 4);
        for (key, report) in &reports {
            assert!(
                report.verdict.is_valid(),
                "seed {seed} key {key}: {report:?}"
            );
            assert!(report.ops > 300, "{key}: {report:?}");
        }
    }
}

#[test]
fn stale_read_at_the_end_of_a_long_history_is_found() {
    let mut ops = busy_history(7, 1, 500, 20);
    let t = ops.iter().filter_map(|op| op.complete_ns).max().unwrap() + 10;
    let key = ops[0].key.clone();
    let write = OpKind::write(1_000_000);
    ops.push(
        Op::invoked(ProcessId(9_001), key.clone(), write, t)
            .completed(Outcome::Ok(Reply::Done), t + 5),
    );
    let stale = Outcome::Ok(Reply::Value(None));
    ops.push(
        Op::invoked(ProcessId(9_002), key.clone(), OpKind::Read, t + 10).completed(stale, t + 15),
    );
    let reports = check_register_history(&ops, &Budget::default()).unwrap();
    let verdict = &reports[&key].verdict;
    assert!(verdict.is_invalid(), "{verdict}");
}

#[test]
fn exhausted_time_budget_is_unknown_not_valid() {
    let ops = busy_history(3, 4, 400, 20);
    let no_time = Budget {
        max_time: Some(Duration::ZERO),
        ..Budget::default()
    };
    let reports = check_register_history(&ops, &no_time).unwrap();
    // The clock is read every 4096 steps; a key that needs more is cut off.
    for report in reports.values() {
        assert!(
            report.verdict.is_unknown() || report.steps < 4096,
            "{report:?}"
        );
    }
    assert!(reports.values().any(|r| r.verdict.is_unknown()));
}

#[test]
fn exhausted_configuration_budget_is_unknown_not_valid() {
    let ops = busy_history(3, 1, 400, 20);
    let small = Budget {
        max_configurations: 100,
        ..Budget::default()
    };
    let reports = check_register_history(&ops, &small).unwrap();
    let report = &reports["k0"];
    assert!(report.verdict.is_unknown(), "{report:?}");
    assert!(
        check_register_history(&ops, &Budget::default()).unwrap()["k0"]
            .verdict
            .is_valid()
    );
}
