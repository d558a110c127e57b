//! The register checker with TTLs, against a brute-force oracle on small
//! random histories (values repeat, every outcome, some TTLs), and on long
//! histories recorded from a simulated register whose values expire late.

use std::collections::BTreeMap;

use atoll_jepsen::{
    check_register_history, Budget, Op, OpKind, Outcome, ProcessId, Reply, Value, Verdict,
    TTL_SLACK_NS,
};
use proptest::prelude::*;

use crate::oracle::step;
use crate::support::{read, register_verdict, with_ttl, write, Rng};

const MS: u64 = 1_000_000;

/// When the value `op` writes may expire, if it has a TTL.
fn expires_from(op: &Op) -> Option<u64> {
    let ttl = op.kind.ttl_ms()?;
    Some((op.invoke_ns + ttl * MS).saturating_sub(TTL_SLACK_NS))
}

/// Whether `op`, once it took effect, wrote a value.
fn writes(op: &Op) -> bool {
    matches!(
        (&op.kind, &op.outcome),
        (OpKind::Write { .. }, _)
            | (
                OpKind::Cas { .. },
                Outcome::Ok(Reply::Done) | Outcome::Ambiguous
            )
    )
}

/// Tries every order of the operations and of the expiry of the value the
/// register holds (`armed`: the operation that wrote it, if it has a TTL).
fn linearizable(
    ops: &[Op],
    placed: &mut [bool],
    state: Option<Value>,
    armed: Option<usize>,
) -> bool {
    let required = |op: &Op| matches!(op.outcome, Outcome::Ok(_));
    if (0..ops.len()).all(|i| placed[i] || !required(&ops[i])) {
        return true;
    }
    // Nothing unplaced that is required may have completed before `t`.
    let open_at = |placed: &[bool], t: u64| {
        !(0..ops.len()).any(|j| !placed[j] && required(&ops[j]) && ops[j].complete_ns.unwrap() < t)
    };
    if let Some(from) = armed.and_then(|w| expires_from(&ops[w])) {
        if open_at(placed, from) && linearizable(ops, placed, None, None) {
            return true;
        }
    }
    for i in 0..ops.len() {
        if placed[i] || !open_at(placed, ops[i].invoke_ns) {
            continue;
        }
        if let Some(next) = step(&ops[i], state) {
            let armed = if writes(&ops[i]) {
                expires_from(&ops[i]).map(|_| i)
            } else {
                armed
            };
            placed[i] = true;
            let found = linearizable(ops, placed, next, armed);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

/// Times in quarter milliseconds (up to 16 ms); three writes in four
/// have a TTL, of 1 to 4 ms.
fn op() -> impl Strategy<Value = Op> {
    let value = || prop_oneof![Just(None), (1..4i64).prop_map(Some)];
    let ttl = prop_oneof![1 => Just(None), 3 => (1..5u64).prop_map(Some)];
    let kind = prop_oneof![
        Just(OpKind::Read),
        (1..4i64, ttl.clone()).prop_map(|(value, ttl_ms)| OpKind::Write { value, ttl_ms }),
        (value(), 1..4i64, ttl).prop_map(|(expected, new, ttl_ms)| OpKind::Cas {
            expected,
            new,
            ttl_ms
        }),
    ];
    (kind, 0..3u8, value(), 0..40u64, 0..24u64).prop_map(|(kind, outcome, seen, invoke, length)| {
        let outcome = match (outcome, &kind) {
            (1, _) => Outcome::Ambiguous,
            (2, _) => Outcome::Fail,
            (_, OpKind::Read) => Outcome::Ok(Reply::Value(seen)),
            (_, OpKind::Cas { expected, .. }) if *expected != seen => {
                Outcome::Ok(Reply::Mismatch { current: seen })
            }
            _ => Outcome::Ok(Reply::Done),
        };
        let (invoke, length) = (invoke * MS / 4, length * MS / 4);
        Op::invoked(ProcessId(0), "x", kind, invoke).completed(outcome, invoke + length)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn checker_agrees_with_brute_force_on_small_ttl_histories(
        ops in prop::collection::vec(op(), 1..9)
    ) {
        let expected = linearizable(&ops, &mut vec![false; ops.len()], None, None);
        let verdict = register_verdict(&ops);
        prop_assert_eq!(verdict.is_valid(), expected, "{}", verdict);
        prop_assert!(!verdict.is_unknown());
    }
}

/// A history of `count` operations on `keys` keys recorded from a real
/// register whose values expire 0 to 2 ms after their write's
/// linearization point plus its TTL (1 to 20 ms; a quarter of the writes
/// have none): one linearization point every 0.2 ms, each operation
/// invoked up to 2 ms before its point and completing up to 2 ms after.
/// Keys take turns to rest (only reads) for 10 ms, as in the workload.
/// Linearizable by construction. With `ambiguous`, 1 in 15 operations is
/// ambiguous (half of those took effect), and 1 in 30 failed.
fn expiring_history(seed: u64, keys: u64, count: u64, ambiguous: bool) -> Vec<Op> {
    let mut rng = Rng(seed);
    // Per key: the value held and when it expires.
    let mut held: BTreeMap<u64, (Option<Value>, Option<u64>)> = BTreeMap::new();
    let mut ops = Vec::new();
    for i in 0..count {
        let at = 10 * MS + i * MS / 5;
        let key = rng.below(keys);
        let (value, expires) = held.entry(key).or_default();
        if expires.is_some_and(|e| e <= at) {
            (*value, *expires) = (None, None);
        }
        let current = *value;
        let unique = i as Value;
        let ttl_ms = (rng.below(4) > 0).then(|| 1 + rng.below(20));
        let resting = (key + i / 50) % 2 == 1;
        let action = if resting { 0 } else { rng.below(4) };
        let (kind, reply, writes) = match action {
            0 => (OpKind::Read, Reply::Value(current), false),
            1 => (
                OpKind::Write {
                    value: unique,
                    ttl_ms,
                },
                Reply::Done,
                true,
            ),
            2 => {
                let kind = OpKind::Cas {
                    expected: current,
                    new: unique,
                    ttl_ms,
                };
                (kind, Reply::Done, true)
            }
            _ => {
                let expected = Some(current.map_or(-7, |v| v - 1));
                let kind = OpKind::Cas {
                    expected,
                    new: unique,
                    ttl_ms,
                };
                (kind, Reply::Mismatch { current }, false)
            }
        };
        let outcome = match rng.below(30) {
            0 | 1 if ambiguous => Outcome::Ambiguous,
            2 if ambiguous => Outcome::Fail,
            _ => Outcome::Ok(reply),
        };
        let applied = match outcome {
            Outcome::Ok(_) => true,
            Outcome::Ambiguous => rng.below(2) == 0,
            Outcome::Fail => false,
        };
        if writes && applied {
            *value = Some(unique);
            *expires = ttl_ms.map(|t| at + t * MS + rng.below(2 * MS));
        }
        let invoke = at - rng.below(2 * MS);
        let complete = at + rng.below(2 * MS);
        let key = format!("k{key}");
        ops.push(Op::invoked(ProcessId(i), key, kind, invoke).completed(outcome, complete));
    }
    ops
}

#[test]
fn long_expiring_histories_are_valid_within_a_small_budget() {
    for seed in [1, 7, 42] {
        let ops = expiring_history(seed, 2, 4_000, true);
        let absent_reads = ops
            .iter()
            .filter(|op| op.outcome == Outcome::Ok(Reply::Value(None)))
            .count();
        assert!(absent_reads > 100, "too few expiries: {absent_reads}");
        let started = std::time::Instant::now();
        let reports = check_register_history(&ops, &Budget::default()).unwrap();
        for (key, report) in &reports {
            assert_eq!(report.verdict, Verdict::Valid, "seed {seed} key {key}");
            assert!(
                report.steps < 50 * report.ops as u64,
                "seed {seed} key {key}: {report:?}"
            );
        }
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }
}

#[test]
fn early_expiry_at_the_end_of_a_long_history_is_found() {
    // Definite outcomes only: an ambiguous write could still take effect
    // at the end, and expire.
    let mut ops = expiring_history(3, 1, 3_000, false);
    let t = ops.iter().filter_map(|op| op.complete_ns).max().unwrap() + 10 * MS;
    let key = ops[0].key.clone();
    let mut last = with_ttl(write(9_001, (t, t + MS), 1_000_000), 100);
    last.key.clone_from(&key);
    let mut early = read(9_002, (t + 20 * MS, t + 21 * MS), None);
    early.key = key;
    ops.extend([last, early]);
    assert!(register_verdict(&ops).is_invalid());
}
