//! Builders for hand-written histories, and a simulator that records
//! histories from a real sequential register.

use std::collections::BTreeMap;

use atoll_jepsen::{
    check_register_history, Budget, Op, OpKind, Outcome, ProcessId, Reply, Value, Verdict,
};

/// The key hand-written register histories use.
pub const KEY: &str = "x";

fn op(p: u64, kind: OpKind, (invoke, complete): (u64, u64), outcome: Outcome) -> Op {
    Op::invoked(ProcessId(p), KEY, kind, invoke).completed(outcome, complete)
}

/// An ok read that saw `seen`.
pub fn read(p: u64, t: (u64, u64), seen: Option<Value>) -> Op {
    op(p, OpKind::Read, t, Outcome::Ok(Reply::Value(seen)))
}

/// An ok write.
pub fn write(p: u64, t: (u64, u64), value: Value) -> Op {
    op(p, OpKind::write(value), t, Outcome::Ok(Reply::Done))
}

/// A write that definitely did not happen.
pub fn write_failed(p: u64, t: (u64, u64), value: Value) -> Op {
    op(p, OpKind::write(value), t, Outcome::Fail)
}

/// A write whose client gave up at `t.1` without learning its outcome.
pub fn write_ambiguous(p: u64, t: (u64, u64), value: Value) -> Op {
    op(p, OpKind::write(value), t, Outcome::Ambiguous)
}

/// A compare-and-swap that swapped.
pub fn cas(p: u64, t: (u64, u64), expected: Option<Value>, new: Value) -> Op {
    op(p, OpKind::cas(expected, new), t, Outcome::Ok(Reply::Done))
}

/// A compare-and-swap that found `current` and did not swap.
pub fn cas_mismatch(
    p: u64,
    t: (u64, u64),
    expected: Option<Value>,
    new: Value,
    current: Option<Value>,
) -> Op {
    let outcome = Outcome::Ok(Reply::Mismatch { current });
    op(p, OpKind::cas(expected, new), t, outcome)
}

/// `op`, a write or a swap, giving its value a TTL of `ms` milliseconds.
pub fn with_ttl(mut op: Op, ms: u64) -> Op {
    match &mut op.kind {
        OpKind::Write { ttl_ms, .. } | OpKind::Cas { ttl_ms, .. } => *ttl_ms = Some(ms),
        other => panic!("{other:?} takes no TTL"),
    }
    op
}

/// `op` on another key.
pub fn on(key: &str, mut op: Op) -> Op {
    op.key = key.to_string();
    op
}

/// The combined register verdict under the default budget.
pub fn register_verdict(ops: &[Op]) -> Verdict {
    let reports = check_register_history(ops, &Budget::default()).unwrap();
    Verdict::combine(reports.values().map(|r| &r.verdict))
}

/// One operation the simulator runs against the real register.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Which of the keys it addresses.
    pub key: u8,
    /// 0 read, 1 write, 2 cas expecting the current value, 3 cas expecting
    /// a stale one.
    pub action: u8,
    /// 0 ok, 1 ambiguous and applied, 2 ambiguous and not applied, 3 failed.
    pub outcome: u8,
    /// How long before its linearization point it was invoked.
    pub lead: u64,
    /// How long after its linearization point it completed.
    pub lag: u64,
}

/// Runs `steps` against a sequential register per key, one linearization
/// point every 100ns, and records what clients would have seen with the
/// given invocation and completion windows. The result is linearizable by
/// construction. Also returns each key's final value.
pub fn simulate(steps: &[Step]) -> (Vec<Op>, BTreeMap<String, Option<Value>>) {
    let mut state: BTreeMap<u8, Option<Value>> = BTreeMap::new();
    let mut previous: BTreeMap<u8, Option<Value>> = BTreeMap::new();
    let mut ops = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let at = 10_000 + 100 * i as u64;
        let current = *state.entry(s.key).or_default();
        let unique = i as Value;
        let applies = matches!(s.outcome, 0 | 1);
        let (kind, reply, next) = match s.action % 4 {
            0 => (OpKind::Read, Reply::Value(current), current),
            1 => (OpKind::write(unique), Reply::Done, Some(unique)),
            2 => {
                let kind = OpKind::cas(current, unique);
                (kind, Reply::Done, Some(unique))
            }
            _ => {
                let stale = previous.get(&s.key).copied().flatten();
                let expected = if stale == current { Some(-7) } else { stale };
                let kind = OpKind::cas(expected, unique);
                (kind, Reply::Mismatch { current }, current)
            }
        };
        if applies && next != current {
            previous.insert(s.key, current);
            state.insert(s.key, next);
        }
        let outcome = match s.outcome % 4 {
            0 => Outcome::Ok(reply),
            1 | 2 => Outcome::Ambiguous,
            _ => Outcome::Fail,
        };
        let key = format!("k{}", s.key);
        let invoke = at - s.lead.min(9_999);
        ops.push(
            Op::invoked(ProcessId(i as u64), key, kind, invoke).completed(outcome, at + s.lag),
        );
    }
    let finals = state
        .into_iter()
        .map(|(key, value)| (format!("k{key}"), value))
        .collect();
    (ops, finals)
}

/// A small deterministic generator (xorshift), for large histories
/// without proptest.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
