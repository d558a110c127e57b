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

use std::collections::HashSet;
use std::fmt;

use crate::history::{Op, OpKind, Outcome, Reply, Value};

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
/// An optional operation that writes an unseen value is dropped: whatever
/// follows it in a linearization must be a write (the only kind that
/// accepts an unseen value), so taking it out keeps every linearization
/// valid. This keeps the many unseen ambiguous writes of a crash-heavy run
/// from multiplying the search.
pub(crate) fn prepare(ops: &[(usize, &Op)]) -> Vec<Prepared> {
    let observed: HashSet<Value> = ops.iter().filter_map(|(_, op)| observed(op)).collect();
    let state = |v: Value| {
        if observed.contains(&v) {
            State::Holds(v)
        } else {
            State::Unseen
        }
    };
    ops.iter()
        .filter_map(|&(index, op)| {
            let effect = match (&op.kind, &op.outcome) {
                (_, Outcome::Fail) | (OpKind::Read, Outcome::Ambiguous) => return None,
                (OpKind::Read, Outcome::Ok(Reply::Value(seen))) => {
                    Effect::Observe(from_value(*seen))
                }
                (OpKind::Write { value }, _) => Effect::Set(state(*value)),
                (OpKind::Cas { expected, new }, Outcome::Ok(Reply::Done) | Outcome::Ambiguous) => {
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
                _ => return None,
            };
            let deadline_ns = match op.outcome {
                Outcome::Ok(_) => op.complete_ns,
                Outcome::Fail | Outcome::Ambiguous => None,
            };
            let unseen_write = matches!(
                effect,
                Effect::Set(State::Unseen)
                    | Effect::Swap {
                        new: State::Unseen,
                        ..
                    }
            );
            (deadline_ns.is_some() || !unseen_write).then_some(Prepared {
                index,
                effect,
                invoke_ns: op.invoke_ns,
                deadline_ns,
            })
        })
        .collect()
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
