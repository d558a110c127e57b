//! The recorded history of a run: one [`Op`] per client operation, with its
//! invocation and completion times and what the client learned about it.
//!
//! A history is stored as JSON lines, one `Op` per line, in the order the
//! harness recorded them. The checkers never trust the order of the lines:
//! they order operations by their timestamps.
//!
//! One line, a compare-and-swap that found 4 instead of an absent key:
//!
//! ```json
//! {"process":3,"key":"x","kind":{"type":"cas","expected":null,"new":5},"invoke_ns":10,"complete_ns":20,"outcome":{"ok":{"mismatch":{"current":4}}}}
//! ```
//!
//! A write or swap of the `register-ttl` workload also carries the TTL it
//! gave its value, `"ttl_ms":800`; histories without it still parse.
//!
//! The outcome contract:
//! - [`Outcome::Ok`]: the operation happened, exactly once, somewhere between
//!   its invocation and its completion, and the reply says what it saw.
//! - [`Outcome::Fail`]: the operation definitely did not happen.
//! - [`Outcome::Ambiguous`]: it may have happened, at any time after its
//!   invocation (even after the client gave up), or never.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// A register value. Register workloads write a unique value per write.
pub type Value = i64;

/// An element of a set workload. Each add uses a unique element.
pub type Element = i64;

/// The logical client process that issued an operation. A process issues one
/// operation at a time; after an ambiguous outcome the harness continues
/// with a fresh process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// One client operation: what was asked, when, and what came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The process that issued it.
    pub process: ProcessId,
    /// The key (register, set or bank) it addressed.
    pub key: String,
    /// What was asked, with its arguments.
    pub kind: OpKind,
    /// When the client invoked it, in nanoseconds on the harness's clock.
    pub invoke_ns: u64,
    /// When the client learned its outcome; `None` if it never did. The
    /// checkers treat an ambiguous operation as never completing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_ns: Option<u64>,
    /// What the client learned.
    pub outcome: Outcome,
}

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// Register: read the key; replies [`Reply::Value`].
    Read,
    /// Register: set the key to `value`; replies [`Reply::Done`].
    Write {
        /// The value written.
        value: Value,
        /// The value's time to live in milliseconds, if it was written
        /// with one (`None` or 0: it never expires). Absent from older
        /// histories.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Register: set the key to `new` if it holds `expected` (`None`: if it
    /// is absent). Replies [`Reply::Done`] when it swapped, or
    /// [`Reply::Mismatch`] with the value it found instead.
    Cas {
        /// The value the key must hold; `None` means it must be absent.
        expected: Option<Value>,
        /// The value written when it matches.
        new: Value,
        /// The new value's time to live in milliseconds, as for
        /// [`OpKind::Write`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Set: add `element`; replies [`Reply::Done`].
    Add {
        /// The element added.
        element: Element,
    },
    /// Set: read every element; replies [`Reply::Elements`].
    ReadAll,
    /// Bank: move `amount` from account `from` to account `to` atomically;
    /// replies [`Reply::Done`].
    Transfer {
        /// The account debited.
        from: String,
        /// The account credited.
        to: String,
        /// How much moves.
        amount: i64,
    },
    /// Bank: read every balance in one snapshot; replies [`Reply::Balances`].
    ReadBalances,
}

/// The workload an operation kind belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Read, write and compare-and-swap on single keys.
    Register,
    /// Unique adds and whole-set reads.
    Set,
    /// Transfers between accounts and snapshot reads of all balances.
    Bank,
}

impl OpKind {
    /// The workload this kind of operation belongs to.
    pub fn workload(&self) -> Workload {
        match self {
            OpKind::Read | OpKind::Write { .. } | OpKind::Cas { .. } => Workload::Register,
            OpKind::Add { .. } | OpKind::ReadAll => Workload::Set,
            OpKind::Transfer { .. } | OpKind::ReadBalances => Workload::Bank,
        }
    }

    /// A register write of `value` without a TTL.
    pub fn write(value: Value) -> OpKind {
        OpKind::Write {
            value,
            ttl_ms: None,
        }
    }

    /// A register compare-and-swap without a TTL.
    pub fn cas(expected: Option<Value>, new: Value) -> OpKind {
        OpKind::Cas {
            expected,
            new,
            ttl_ms: None,
        }
    }

    /// The time to live a register write or swap gave its value, in
    /// milliseconds; `None` when it never expires (0 counts as never, as
    /// on the wire).
    pub fn ttl_ms(&self) -> Option<u64> {
        match self {
            OpKind::Write { ttl_ms, .. } | OpKind::Cas { ttl_ms, .. } => ttl_ms.filter(|&t| t > 0),
            _ => None,
        }
    }

    /// Whether `reply` is a reply this kind of operation can get.
    pub fn accepts(&self, reply: &Reply) -> bool {
        matches!(
            (self, reply),
            (OpKind::Read, Reply::Value(_))
                | (OpKind::Write { .. }, Reply::Done)
                | (OpKind::Cas { .. }, Reply::Done | Reply::Mismatch { .. })
                | (OpKind::Add { .. }, Reply::Done)
                | (OpKind::ReadAll, Reply::Elements(_))
                | (OpKind::Transfer { .. }, Reply::Done)
                | (OpKind::ReadBalances, Reply::Balances(_))
        )
    }
}

/// What the client learned about an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened, once, between invocation and completion.
    Ok(Reply),
    /// It definitely did not happen.
    Fail,
    /// It may have happened at any time after invocation, or never.
    Ambiguous,
}

/// The reply of an operation that completed [`Outcome::Ok`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A write, swap, add or transfer took effect.
    Done,
    /// A read found this value; `None` means the key was absent.
    Value(Option<Value>),
    /// A compare-and-swap found `current` instead of what it expected and
    /// wrote nothing. (A harness that does not know `current` records the
    /// swap as [`Outcome::Fail`] instead, which tells the checker less.)
    Mismatch {
        /// What the key held; `None` means absent.
        current: Option<Value>,
    },
    /// A set read found these elements.
    Elements(Vec<Element>),
    /// A bank read found these balances.
    Balances(BTreeMap<String, i64>),
}

/// A history that cannot be read or checked as recorded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the history file failed.
    #[error("history I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a valid JSON operation.
    #[error("history line {line}: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// What serde_json reported.
        source: serde_json::Error,
    },
    /// An operation is inconsistent in itself (index into the history).
    #[error("op #{index}: {reason}")]
    Malformed {
        /// Index of the operation in the history.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation of another workload was handed to a checker.
    #[error("op #{index} is a {found:?} operation; this checker takes {expected:?}")]
    WrongWorkload {
        /// Index of the operation in the history.
        index: usize,
        /// The workload the checker checks.
        expected: Workload,
        /// The workload of the operation.
        found: Workload,
    },
}

impl Op {
    /// A just-invoked operation; until [`Op::completed`] it is ambiguous,
    /// which is what it stays if the run ends first.
    pub fn invoked(process: ProcessId, key: impl Into<String>, kind: OpKind, invoke_ns: u64) -> Op {
        Op {
            process,
            key: key.into(),
            kind,
            invoke_ns,
            complete_ns: None,
            outcome: Outcome::Ambiguous,
        }
    }

    /// The same operation, completed at `complete_ns` with `outcome`.
    pub fn completed(self, outcome: Outcome, complete_ns: u64) -> Op {
        Op {
            outcome,
            complete_ns: Some(complete_ns),
            ..self
        }
    }

    /// Checks that the operation is self-consistent: a definite outcome has
    /// a completion time, completion does not precede invocation, and an ok
    /// reply fits the kind. `index` only labels the error.
    pub fn validate(&self, index: usize) -> Result<(), HistoryError> {
        let malformed = |reason: String| Err(HistoryError::Malformed { index, reason });
        match (self.complete_ns, &self.outcome) {
            (None, Outcome::Ok(_) | Outcome::Fail) => {
                return malformed("a definite outcome without a completion time".into())
            }
            (Some(done), _) if done < self.invoke_ns => {
                return malformed(format!("completes at {done}ns before its invocation"))
            }
            _ => {}
        }
        match &self.outcome {
            Outcome::Ok(reply) if !self.kind.accepts(reply) => {
                malformed(format!("{:?} cannot reply {reply:?}", self.kind))
            }
            _ => Ok(()),
        }
    }
}

/// Reads a JSON-lines history; blank lines are skipped. Operations are
/// validated with [`Op::validate`], indexed in file order.
pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
            line: number + 1,
            source,
        })?;
        op.validate(ops.len())?;
        ops.push(op);
    }
    Ok(ops)
}

/// Writes `ops` as JSON lines, one operation per line.
pub fn write_jsonl(mut writer: impl Write, ops: &[Op]) -> Result<(), HistoryError> {
    for (index, op) in ops.iter().enumerate() {
        let line = serde_json::to_string(op).map_err(|source| HistoryError::Json {
            line: index + 1,
            source,
        })?;
        writeln!(writer, "{line}")?;
    }
    writer.flush()?;
    Ok(())
}
