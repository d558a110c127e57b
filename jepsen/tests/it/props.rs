//! Properties: histories recorded from a real sequential register, with
//! random concurrency windows and outcomes, are always linearizable; the
//! same histories with a planted stale or invented read never are.

use std::collections::BTreeMap;

use atoll_jepsen::{Op, OpKind, Outcome, ProcessId, Reply, Value, Verdict};
use proptest::prelude::*;

use crate::support::{register_verdict, simulate, Step};

/// A step; `outcomes` picks among ok (0), ambiguous (1, 2) and failed (3).
fn step(outcomes: impl Strategy<Value = u8>) -> impl Strategy<Value = Step> {
    (0..3u8, 0..4u8, outcomes, 0..1_500u64, 0..1_500u64).prop_map(
        |(key, action, outcome, lead, lag)| Step {
            key,
            action,
            outcome,
            lead,
            lag,
        },
    )
}

/// Mostly ok operations, some ambiguous or failed.
fn history() -> impl Strategy<Value = Vec<Op>> {
    let outcomes = prop_oneof![6 => Just(0u8), 1 => 1..4u8];
    prop::collection::vec(step(outcomes), 1..60).prop_map(|steps| simulate(&steps).0)
}

/// Ok and failed operations only, with each key's final value.
fn definite_history() -> impl Strategy<Value = (Vec<Op>, BTreeMap<String, Option<Value>>)> {
    let outcomes = prop_oneof![6 => Just(0u8), 1 => Just(3u8)];
    prop::collection::vec(step(outcomes), 1..60).prop_map(|steps| simulate(&steps))
}

/// The latest completion in `ops`.
fn end(ops: &[Op]) -> u64 {
    ops.iter()
        .filter_map(|op| op.complete_ns)
        .max()
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sequential_register_with_random_windows_is_always_valid(ops in history()) {
        prop_assert_eq!(register_verdict(&ops), Verdict::Valid);
    }

    #[test]
    fn read_of_a_value_never_written_is_always_invalid(mut ops in history(), pick in any::<prop::sample::Index>()) {
        let t = end(&ops) + 10;
        let key = ops[pick.index(ops.len())].key.clone();
        let outcome = Outcome::Ok(Reply::Value(Some(-1)));
        ops.push(Op::invoked(ProcessId(9_000), key, OpKind::Read, t).completed(outcome, t + 5));
        prop_assert!(register_verdict(&ops).is_invalid());
    }

    #[test]
    fn read_of_the_old_value_after_a_completed_write_is_always_invalid((mut ops, finals) in definite_history()) {
        // Once everything settled, write a fresh value, then read the value
        // the key held before it. (With an ambiguous write pending, that
        // could be valid: the write may still take effect.)
        let t = end(&ops) + 10;
        let (key, before) = finals.into_iter().next().unwrap();
        let write = OpKind::write(1_000_000);
        ops.push(Op::invoked(ProcessId(9_001), key.clone(), write, t).completed(Outcome::Ok(Reply::Done), t + 5));
        let stale = Outcome::Ok(Reply::Value(before));
        ops.push(Op::invoked(ProcessId(9_002), key, OpKind::Read, t + 10).completed(stale, t + 15));
        prop_assert!(register_verdict(&ops).is_invalid());
    }
}
