//! The failing window of a non-linearizable key: where the search got
//! furthest before every order failed, rendered for humans.
//!
//! Every order the search tried broke at some completion: an operation that
//! had to take effect by then could not. No order gets past the furthest
//! such completion, so the history up to it is the failing window. The
//! report shows the blocked operation, the furthest attempt's
//! linearization (its tail), the register's value there, the concurrent
//! operations that could not go next, and every write of the value the
//! blocked operation needed (a failed write shows up here). An expiry
//! shows as the write whose value expired, and when the register holds a
//! value that may expire, the report says from when.

use std::fmt::Write;

use super::register::{Effect, Prepared, State, TTL_SLACK_NS};
use super::verdict::Verdict;
use crate::history::{Op, OpKind, Value};

/// How many of the furthest attempt's linearized operations to show.
const SHOWN_LINEARIZED: usize = 10;

/// The furthest point the search reached; operations are indices into the
/// prepared operations.
#[derive(Clone, Debug)]
pub(crate) struct Stuck {
    /// The entry number of the blocking return (larger is later).
    pub position: usize,
    /// The operation that had to take effect before that return.
    pub blocked: usize,
    /// The furthest attempt's linearization, in order.
    pub linearized: Vec<usize>,
    /// The register's value after it.
    pub state: State,
    /// The expiry armed then: the value held may expire.
    pub armed: Option<usize>,
    /// Operations invoked before the return and not linearized.
    pub candidates: Vec<usize>,
}

impl Stuck {
    /// The register's value after the furthest attempt, rendered. The
    /// search folds values nobody observed into one state; this recovers
    /// the value from the last write linearized.
    fn held(&self, ops: &[Prepared], history: &[Op]) -> String {
        if self.state != State::Unseen {
            return self.state.to_string();
        }
        let last_write = self.linearized.iter().rev().find_map(|&op| {
            if !ops[op].effect.writes() {
                return None;
            }
            match history[ops[op].index].kind {
                OpKind::Write { value, .. } | OpKind::Cas { new: value, .. } => Some(value),
                _ => None,
            }
        });
        last_write.map_or_else(|| self.state.to_string(), |v| v.to_string())
    }

    /// The `Invalid` verdict for `key`, naming operations by their index in
    /// `history`.
    pub(crate) fn verdict(&self, key: &str, ops: &[Prepared], history: &[Op]) -> Verdict {
        let line = |index: usize| format!("  #{index} {}", history[index]);
        let prepared_line = |op: &Prepared| match op.effect {
            Effect::Expire => format!("  the value #{} wrote expires", op.index),
            effect if effect.expires_at_once() => {
                format!("{}, and its value expires", line(op.index))
            }
            _ => line(op.index),
        };
        let held = self.held(ops, history);
        let blocked = &ops[self.blocked];
        let mut window = vec![blocked.index];
        let mut text = format!(
            "key {key:?} is not linearizable: no order of its operations lets op #{} take \
             effect before it completed.\n{}\n",
            blocked.index,
            line(blocked.index)
        );
        let _ = writeln!(
            text,
            "Furthest attempt: {} linearized, leaving the register at {held}; op #{} cannot go \
             there: {}.",
            plural(self.linearized.len(), "operation"),
            blocked.index,
            why_not(blocked, self.state, &held),
        );
        let elided = self.linearized.len().saturating_sub(SHOWN_LINEARIZED);
        if elided > 0 {
            let _ = writeln!(text, "  ... {}", plural(elided, "earlier operation"));
        }
        for &op in &self.linearized[elided..] {
            window.push(ops[op].index);
            let _ = writeln!(text, "{}", prepared_line(&ops[op]));
        }
        if let Some(expiry) = self.armed {
            let writer = ops[expiry].index;
            let from = ops[expiry].invoke_ns;
            let _ = writeln!(
                text,
                "The value #{writer} wrote may expire from {}.{:03}ms on (its invocation plus its \
                 TTL, less {}ms for the server's rounding), not before.",
                from / 1_000_000,
                (from / 1_000) % 1_000,
                TTL_SLACK_NS / 1_000_000
            );
        }
        let others: Vec<usize> = self
            .candidates
            .iter()
            .copied()
            .filter(|&op| op != self.blocked && ops[op].effect != Effect::Expire)
            .collect();
        if !others.is_empty() {
            let _ = writeln!(text, "Concurrent operations that could not go next either:");
            for &op in &others {
                window.push(ops[op].index);
                let why = why_not(&ops[op], self.state, &held);
                let _ = writeln!(text, "{} ({why})", prepared_line(&ops[op]));
            }
        }
        if let Some(value) = blocked.effect.needs() {
            let writers: Vec<usize> = (0..history.len())
                .filter(|&i| history[i].key == key && writes(&history[i].kind, value))
                .collect();
            if writers.is_empty() {
                let _ = writeln!(text, "No operation ever wrote {value}.");
            } else {
                let _ = writeln!(text, "Operations that wrote {value}:");
                for index in writers {
                    window.push(index);
                    let _ = writeln!(text, "{}", line(index));
                }
            }
        }
        window.sort_unstable();
        window.dedup();
        Verdict::Invalid {
            explanation: text.trim_end().to_string(),
            ops: window,
        }
    }
}

/// Whether an operation of `kind` writes `value` when it takes effect.
fn writes(kind: &OpKind, value: Value) -> bool {
    matches!(kind, OpKind::Write { value: v, .. } | OpKind::Cas { new: v, .. } if *v == value)
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Why `op` cannot be linearized next from `state` (rendered as `held`).
fn why_not(op: &Prepared, state: State, held: &str) -> String {
    match op.effect.step(state) {
        Some(_) => "it applies, but every order continuing from there fails".to_string(),
        None => op.effect.conflict(held),
    }
}
