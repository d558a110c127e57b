//! The register checker agrees with a brute-force oracle on small random
//! histories, valid or not, with repeated values and every outcome: the
//! search's pruning (dead values, at-once operations, dropped writes)
//! never changes a verdict.

use atoll_jepsen::{Op, OpKind, Outcome, ProcessId, Reply, Value};
use proptest::prelude::*;

use crate::support::register_verdict;

/// Whether `op` can take effect on `state`, and the state after it.
pub fn step(op: &Op, state: Option<Value>) -> Option<Option<Value>> {
    match (&op.kind, &op.outcome) {
        (_, Outcome::Fail) => None,
        (OpKind::Read, Outcome::Ok(Reply::Value(seen))) => (state == *seen).then_some(state),
        (OpKind::Write { value, .. }, _) => Some(Some(*value)),
        (OpKind::Cas { expected, new, .. }, Outcome::Ok(Reply::Done) | Outcome::Ambiguous) => {
            (state == *expected).then_some(Some(*new))
        }
        (OpKind::Cas { expected, .. }, Outcome::Ok(Reply::Mismatch { current })) => {
            (state == *current && state != *expected).then_some(state)
        }
        _ => None,
    }
}

/// Tries every order: `ops` may still be placed, `required` must be.
fn linearizable(ops: &[Op], placed: &mut Vec<bool>, state: Option<Value>) -> bool {
    let required = |op: &Op| matches!(op.outcome, Outcome::Ok(_));
    if (0..ops.len()).all(|i| placed[i] || !required(&ops[i])) {
        return true;
    }
    for i in 0..ops.len() {
        if placed[i] {
            continue;
        }
        // Nothing unplaced that is required may have completed before it.
        let blocked = (0..ops.len()).any(|j| {
            !placed[j]
                && j != i
                && required(&ops[j])
                && ops[j].complete_ns.unwrap() < ops[i].invoke_ns
        });
        if blocked {
            continue;
        }
        if let Some(next) = step(&ops[i], state) {
            placed[i] = true;
            let found = linearizable(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn op() -> impl Strategy<Value = Op> {
    let value = || prop_oneof![Just(None), (1..4i64).prop_map(Some)];
    let kind = prop_oneof![
        Just(OpKind::Read),
        (1..4i64).prop_map(OpKind::write),
        (value(), 1..4i64).prop_map(|(expected, new)| OpKind::cas(expected, new)),
    ];
    (kind, 0..3u8, value(), 0..20u64, 0..12u64).prop_map(|(kind, outcome, seen, invoke, length)| {
        let outcome = match (outcome, &kind) {
            (1, _) => Outcome::Ambiguous,
            (2, _) => Outcome::Fail,
            (_, OpKind::Read) => Outcome::Ok(Reply::Value(seen)),
            (_, OpKind::Cas { expected, .. }) if *expected != seen => {
                Outcome::Ok(Reply::Mismatch { current: seen })
            }
            _ => Outcome::Ok(Reply::Done),
        };
        Op::invoked(ProcessId(0), "x", kind, invoke).completed(outcome, invoke + length)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn checker_agrees_with_brute_force_on_small_histories(
        ops in prop::collection::vec(op(), 1..10)
    ) {
        let expected = linearizable(&ops, &mut vec![false; ops.len()], None);
        let verdict = register_verdict(&ops);
        prop_assert_eq!(verdict.is_valid(), expected, "{}", verdict);
        prop_assert!(!verdict.is_unknown());
    }
}
