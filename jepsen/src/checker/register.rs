//! The sequential specification of a register, and how one key's recorded
//! operations become the search's input.
//!
//! Outcomes map to the search as follows: an ok operation is *required* (it
//! takes effect between invocation and completion); a failed one is dropped
//! (it never happened); an ambiguous write or swap is *optional* (it may
//! take effect any time after invocation, or never); an ambiguous read
//! observed nothing and changes nothing, so it is dropped.
//!
//! Values no operation ever observes (no read returned them, no swap
//! expected or found them) are all one state to the search,
//! [`State::Unseen`]: from there only a write can follow, whichever value
//! it was. Orders that differ only in which unseen value was written last
//! then meet in the search's cache. (The search extends this to values
//! whose observers are all linearized already.)
//!
//! A value written with a TTL (`ttl_ms`) may expire: an optional *expiry*
//! operation, invoked at the write's invocation plus the TTL (less
//! [`TTL_SLACK_NS`]) and never completing, so that it may take effect at
//! any time from then on, or never (a server may expire late, by any
//! amount). It applies only while the register holds what that very write
//! wrote, and leaves the key absent. An optional write of an unseen value
//! with a TTL can matter only by expiring at once (nothing but a write or
//! its expiry follows an unseen value), so it becomes one optional
//! operation that leaves the key absent, invoked when its value may expire.

use std::collections::HashSet;
use std::fmt;

use crate::history::{Op, OpKind, Outcome, Reply, Value};

/// How much earlier than its write's invocation plus its TTL a value may
/// expire: the server counts TTLs in whole milliseconds of its wall clock,
/// from the moment it applies the write, so its rounding can take up to a
/// millisecond off.
pub const TTL_SLACK_NS: u64 = 1_000_000;

/// The register's state, as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum State {
    /// The key does not exist.
    Absent,
    /// The key holds a value some operation observed.
    Holds(Value),
    /// The key holds a value no operation observed.
    Unseen,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Absent => write!(f, "absent"),
            State::Holds(v) => write!(f, "{v}"),
            State::Unseen => write!(f, "a value no operation observed"),
        }
    }
}

/// What an operation needs from the state and does to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A read saw this state; it must hold, and stays.
    Observe(State),
    /// A write sets the state, whatever it was.
    Set(State),
    /// A swap needs `expected` and sets `new`.
    Swap { expected: State, new: State },
    /// A swap found `current`, not the `expected` value, and wrote nothing.
    Mismatch {
        expected: Option<Value>,
        current: State,
    },
    /// The value one write gave the key expires; the search applies it only
    /// while the register holds that write's value.
    Expire,
}

impl Effect {
    /// The state after the operation, or `None` if it cannot apply to
    /// `state`.
    pub(crate) fn step(self, state: State) -> Option<State> {
        match self {
            Effect::Observe(seen) => (state == seen).then_some(state),
            Effect::Set(new) => Some(new),
            Effect::Swap { expected, new } => (state == expected).then_some(new),
            Effect::Mismatch { expected, current } => {
                (state == current && state != from_value(expected)).then_some(state)
            }
            Effect::Expire => (state != State::Absent).then_some(State::Absent),
        }
    }

    /// The observed value the state must hold for this operation to apply,
    /// if it needs one.
    pub(crate) fn needs(self) -> Option<Value> {
        match self {
            Effect::Observe(State::Holds(v))
            | Effect::Swap {
                expected: State::Holds(v),
                ..
            }
            | Effect::Mismatch {
                current: State::Holds(v),
                ..
            } => Some(v),
            _ => None,
        }
    }

    /// Whether the operation writes (or may write) a value.
    pub(crate) fn writes(self) -> bool {
        matches!(self, Effect::Set(_) | Effect::Swap { .. })
    }

    /// Whether this is an optional TTL write of an unseen value, folded
    /// with its expiry into one operation that leaves the key absent.
    pub(crate) fn expires_at_once(self) -> bool {
        matches!(
            self,
            Effect::Set(State::Absent)
                | Effect::Swap {
                    new: State::Absent,
                    ..
                }
        )
    }

    /// Why the operation cannot apply when the register holds `held` (as
    /// rendered), for explanations; only meaningful when [`Effect::step`]
    /// refuses it.
    pub(crate) fn conflict(self, held: &str) -> String {
        match self {
            Effect::Observe(seen) => format!("it saw {seen}, the register held {held}"),
            Effect::Swap { expected, .. } => {
                format!("it expected {expected}, the register held {held}")
            }
            Effect::Mismatch { expected, current } if from_value(expected) == current => {
                format!("it found {current}, the value it expected, yet did not swap")
            }
            Effect::Mismatch { current, .. } => {
                format!("it found {current}, the register held {held}")
            }
            Effect::Set(_) => "a write always applies".to_string(),
            Effect::Expire => "the register did not hold the value that expires".to_string(),
        }
    }
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prepared {
    /// Index of the operation in the checked history.
    pub index: usize,
    /// What it needs and does.
    pub effect: Effect,
    /// When it was invoked.
    pub invoke_ns: u64,
    /// When it must have taken effect by; `None` for an optional operation,
    /// which may take effect any time after invocation, or never.
    pub deadline_ns: Option<u64>,
    /// For a write with a TTL: the position (among the prepared
    /// operations) of the expiry of the value it writes.
    pub expiry: Option<usize>,
}

impl Prepared {
    /// Whether every linearization must include this operation.
    pub(crate) fn required(&self) -> bool {
        self.deadline_ns.is_some()
    }
}

fn from_value(v: Option<Value>) -> State {
    v.map_or(State::Absent, State::Holds)
}

/// Turns one key's register operations into the search's input, dropping
/// what cannot matter. `ops` pairs each operation with its history index;
/// the caller has checked that they are valid register operations.
///
/// An optional operation that writes an unseen value without a TTL is
/// dropped: whatever follows it in a linearization must be a write (the
/// only kind that accepts an unseen value), so taking it out keeps every
/// linearization valid. This keeps the many unseen ambiguous writes of a
/// crash-heavy run from multiplying the search. With a TTL it is folded
/// with its expiry (see the module documentation). Every other write with
/// a TTL gets an expiry operation, after the operations of the history.
pub(crate) fn prepare(ops: &[(usize, &Op)]) -> Vec<Prepared> {
    let observed: HashSet<Value> = ops.iter().filter_map(|(_, op)| observed(op)).collect();
    let state = |v: Value| {
        if observed.contains(&v) {
            State::Holds(v)
        } else {
            State::Unseen
        }
    };
    let mut prepared = Vec::with_capacity(ops.len());
    // (position of a write with a TTL, when its value may expire)
    let mut expiring = Vec::new();
    for &(index, op) in ops {
        let mut effect = match (&op.kind, &op.outcome) {
            (_, Outcome::Fail) | (OpKind::Read, Outcome::Ambiguous) => continue,
            (OpKind::Read, Outcome::Ok(Reply::Value(seen))) => Effect::Observe(from_value(*seen)),
            (OpKind::Write { value, .. }, _) => Effect::Set(state(*value)),
            (OpKind::Cas { expected, new, .. }, Outcome::Ok(Reply::Done) | Outcome::Ambiguous) => {
                Effect::Swap {
                    expected: from_value(*expected),
                    new: state(*new),
                }
            }
            (OpKind::Cas { expected, .. }, Outcome::Ok(Reply::Mismatch { current })) => {
                Effect::Mismatch {
                    expected: *expected,
                    current: from_value(*current),
                }
            }
            // Other workloads and mismatched replies were refused before.
            _ => continue,
        };
        let deadline_ns = match op.outcome {
            Outcome::Ok(_) => op.complete_ns,
            Outcome::Fail | Outcome::Ambiguous => None,
        };
        let expires_from = op.kind.ttl_ms().filter(|_| effect.writes()).map(|ttl| {
            op.invoke_ns
                .saturating_add(ttl.saturating_mul(1_000_000))
                .saturating_sub(TTL_SLACK_NS)
        });
        let mut invoke_ns = op.invoke_ns;
        let unseen_write = matches!(
            effect,
            Effect::Set(State::Unseen)
                | Effect::Swap {
                    new: State::Unseen,
                    ..
                }
        );
        match (deadline_ns, unseen_write, expires_from) {
            (None, true, None) => continue,
            (None, true, Some(from)) => {
                effect = match effect {
                    Effect::Swap { expected, .. } => Effect::Swap {
                        expected,
                        new: State::Absent,
                    },
                    _ => Effect::Set(State::Absent),
                };
                invoke_ns = from;
            }
            (_, _, Some(from)) => expiring.push((prepared.len(), from)),
            _ => {}
        }
        prepared.push(Prepared {
            index,
            effect,
            invoke_ns,
            deadline_ns,
            expiry: None,
        });
    }
    for (writer, from) in expiring {
        prepared[writer].expiry = Some(prepared.len());
        prepared.push(Prepared {
            index: prepared[writer].index,
            effect: Effect::Expire,
            invoke_ns: from,
            deadline_ns: None,
            expiry: None,
        });
    }
    prepared
}

/// The value `op` shows the register held, if any: what a read returned,
/// what a swap expected (whether it swapped or not is unknown for an
/// ambiguous one), or what a mismatched swap found.
fn observed(op: &Op) -> Option<Value> {
    match (&op.kind, &op.outcome) {
        (_, Outcome::Fail) => None,
        (OpKind::Read, Outcome::Ok(Reply::Value(seen))) => *seen,
        (OpKind::Cas { expected, .. }, Outcome::Ok(Reply::Done) | Outcome::Ambiguous) => *expected,
        (OpKind::Cas { .. }, Outcome::Ok(Reply::Mismatch { current })) => *current,
        _ => None,
    }
}
