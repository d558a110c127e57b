//! The backtracking search behind the linearizability check (see
//! [`super::linearizable`] for the algorithm), for one key.
//!
//! Two refinements over plain Wing & Gong keep real histories cheap:
//!
//! - *Dead values.* Once every operation that observes a value (reads it,
//!   expects it, finds it) is linearized, holding that value is the same as
//!   holding one nobody observes: the state becomes [`State::Unseen`], so
//!   orders that differ only there meet in the cache; and an optional
//!   (ambiguous) write of a dead value is never tried, since whatever
//!   follows it must be a write, so leaving it out changes nothing.
//! - *At-once operations.* An operation that can apply next and leaves the
//!   state as it is (a read, a swap that found another value, a write of a
//!   dead value over a dead value) is applied at once, before anything else,
//!   and is never an alternative to backtrack to. Moving it to the front of
//!   any linearization that continues from here keeps that linearization
//!   valid: the state is unchanged, whatever followed it can follow the
//!   state before it, and nothing still listed completed before it was
//!   invoked. So if the configuration after it fails, the one before fails.
//!
//! Values written with a TTL: the register also records which expiry
//! operation is *armed* (the one of the write whose value it holds), and
//! only that one can apply. A configuration is the linearized operations
//! of the history, the state and the armed expiry: which expiries were
//! linearized is left out, since an expiry whose write was overwritten can
//! never apply again, whether it took effect or not. Such a dead expiry
//! leaves the entry list along with the write that overwrote it, so that
//! walks do not wade through them.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::linearizable::Budget;
use super::register::{Effect, Prepared, State};
use super::search_list::{EntryList, Node};
use super::window::Stuck;
use crate::history::Value;

/// The set of linearized operations, as a bitset.
type Linearized = Box<[u64]>;

/// The register as the search sees it: its state and the armed expiry.
type Register = (State, Option<usize>);

/// A lifted call: its entry, the register before it, whether it was
/// applied at once (no alternative to try on backtrack), and the entry of
/// the expiry it made dead, if any.
#[derive(Clone, Copy)]
struct Lifted {
    call: usize,
    before: Register,
    at_once: bool,
    dead_expiry: Option<usize>,
}

/// The search over one key's operations.
pub(crate) struct Search<'a> {
    ops: &'a [Prepared],
    list: EntryList,
    /// Lifted calls, in linearization order.
    stack: Vec<Lifted>,
    state: State,
    /// The expiry that may apply to the value the register holds.
    armed: Option<usize>,
    /// The history's operations linearized (expiries are left out).
    linearized: Linearized,
    /// Configurations already reached (and, once left, known to fail).
    cache: HashSet<(Linearized, Register)>,
    /// Per observed value: how many of its observers are not linearized.
    observers_left: HashMap<Value, u32>,
    /// Required operations not yet linearized.
    pending: usize,
    /// Steps taken: entries visited plus backtracks.
    pub steps: u64,
    /// The failure point furthest into the history, once reached.
    pub stuck: Option<Stuck>,
}

impl<'a> Search<'a> {
    /// A search from an absent register.
    pub(crate) fn new(ops: &'a [Prepared]) -> Search<'a> {
        let mut observers_left = HashMap::new();
        for v in ops.iter().filter_map(|op| op.effect.needs()) {
            *observers_left.entry(v).or_insert(0) += 1;
        }
        Search {
            ops,
            list: EntryList::new(ops),
            stack: Vec::new(),
            state: State::Absent,
            armed: None,
            linearized: vec![0; ops.len().div_ceil(64)].into_boxed_slice(),
            cache: HashSet::new(),
            observers_left,
            pending: ops.iter().filter(|op| op.required()).count(),
            steps: 0,
            stuck: None,
        }
    }

    /// Distinct configurations reached (the cache's size).
    pub(crate) fn configurations(&self) -> usize {
        self.cache.len()
    }

    /// `Ok(true)` if linearizable, `Ok(false)` if not, `Err` with the reason
    /// if the budget ran out first.
    pub(crate) fn run(&mut self, budget: &Budget) -> Result<bool, String> {
        let started = Instant::now();
        let mut cursor = self.list.first();
        // Whether the configuration was just entered (at-once ops first).
        let mut fresh = true;
        loop {
            if self.pending == 0 {
                return Ok(true);
            }
            self.steps += 1;
            if self.steps > budget.max_steps {
                return Err(format!(
                    "search exceeded its budget of {} steps",
                    budget.max_steps
                ));
            }
            if self.cache.len() > budget.max_configurations {
                return Err(format!(
                    "search exceeded its budget of {} configurations",
                    budget.max_configurations
                ));
            }
            if let Some(limit) = budget.max_time.filter(|_| self.steps.is_multiple_of(4096)) {
                if started.elapsed() > limit {
                    return Err(format!("search exceeded its time budget of {limit:?}"));
                }
            }
            if fresh {
                fresh = false;
                match self.lift_at_once() {
                    Some(true) => {
                        cursor = self.list.first();
                        fresh = true;
                        continue;
                    }
                    // It leads to a configuration explored already, which
                    // failed: so does this one.
                    Some(false) => match self.backtrack() {
                        Some(next) => {
                            cursor = next;
                            continue;
                        }
                        None => return Ok(false),
                    },
                    None => {}
                }
            }
            let blocked = match self.list.node(cursor) {
                Node::Call { op } => {
                    if self.lift(cursor, op, false) {
                        cursor = self.list.first();
                        fresh = true;
                    } else {
                        cursor = self.list.next(cursor);
                    }
                    continue;
                }
                Node::Return { op } => Some(op),
                // Unreachable while operations are pending (their returns
                // stop the walk first); backtrack all the same.
                Node::End => None,
            };
            // A return whose operation is not linearized: in this order it
            // cannot take effect before it completed.
            if let Some(op) = blocked {
                self.note_stuck(cursor, op);
            }
            match self.backtrack() {
                Some(next) => cursor = next,
                None => return Ok(false),
            }
        }
    }

    /// The register after `op` applies to the current one, with dead
    /// values made unseen; `None` if it cannot apply.
    fn after(&self, op: usize) -> Option<Register> {
        let Prepared { effect, expiry, .. } = self.ops[op];
        if effect == Effect::Expire && self.armed != Some(op) {
            return None;
        }
        let state = match effect.step(self.state)? {
            State::Holds(v) => {
                let left = self.observers_left.get(&v).copied().unwrap_or(0);
                let own = u32::from(effect.needs() == Some(v));
                if left > own {
                    State::Holds(v)
                } else {
                    State::Unseen
                }
            }
            other => other,
        };
        let armed = match effect {
            Effect::Expire => None,
            _ if effect.writes() => expiry,
            _ => self.armed,
        };
        Some((state, armed))
    }

    /// Lifts the first listed operation that can apply at once:
    /// `Some(true)` if it did, `Some(false)` if one can but leads to a
    /// configuration explored already, `None` if there is none.
    fn lift_at_once(&mut self) -> Option<bool> {
        let mut entry = self.list.first();
        while let Node::Call { op } = self.list.node(entry) {
            let effect = self.ops[op].effect;
            let unseen = (State::Unseen, None);
            let at_once = match self.after(op) {
                Some(after) if effect.writes() => {
                    self.ops[op].required() && after == unseen && (self.state, self.armed) == unseen
                }
                Some(_) => effect != Effect::Expire,
                None => false,
            };
            if at_once {
                return Some(self.lift(entry, op, true));
            }
            entry = self.list.next(entry);
        }
        None
    }

    /// Linearizes `op` (called at entry `call`) next if it can apply, is
    /// worth trying, and the resulting configuration is new.
    fn lift(&mut self, call: usize, op: usize, at_once: bool) -> bool {
        let Some(after) = self.after(op) else {
            return false;
        };
        let prepared = self.ops[op];
        if !prepared.required() && after == (State::Unseen, None) {
            return false;
        }
        self.flip(op);
        if !self.cache.insert((self.linearized.clone(), after)) {
            self.flip(op);
            return false;
        }
        // A write over a value whose expiry is armed kills that expiry.
        let dead_expiry = self
            .armed
            .filter(|_| prepared.effect.writes() && after.1 != self.armed)
            .map(|expiry| self.list.call_of(expiry));
        self.stack.push(Lifted {
            call,
            before: (self.state, self.armed),
            at_once,
            dead_expiry,
        });
        (self.state, self.armed) = after;
        self.list.lift(call);
        if let Some(entry) = dead_expiry {
            self.list.lift(entry);
        }
        self.count_observer(op, false);
        if prepared.required() {
            self.pending -= 1;
        }
        true
    }

    /// Undoes lifts back to the last one that has an alternative, and
    /// returns the entry after it to resume the walk from; `None` when no
    /// lift is left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let Lifted {
                call,
                before,
                at_once,
                dead_expiry,
            } = self.stack.pop()?;
            self.steps += 1;
            let op = self.list.op_of(call);
            self.flip(op);
            (self.state, self.armed) = before;
            if let Some(entry) = dead_expiry {
                self.list.unlift(entry);
            }
            self.list.unlift(call);
            self.count_observer(op, true);
            if self.ops[op].required() {
                self.pending += 1;
            }
            if !at_once {
                return Some(self.list.next(call));
            }
        }
    }

    fn count_observer(&mut self, op: usize, restored: bool) {
        if let Some(left) = self.ops[op]
            .effect
            .needs()
            .and_then(|v| self.observers_left.get_mut(&v))
        {
            if restored {
                *left += 1;
            } else {
                *left -= 1;
            }
        }
    }

    /// Marks `op` linearized or not; expiries are not recorded.
    fn flip(&mut self, op: usize) {
        if self.ops[op].effect != Effect::Expire {
            self.linearized[op / 64] ^= 1 << (op % 64);
        }
    }

    /// Records the failure at return entry `ret` if it is further into the
    /// history than any before.
    fn note_stuck(&mut self, ret: usize, op: usize) {
        if self.stuck.as_ref().is_some_and(|s| s.position >= ret) {
            return;
        }
        let linearized = self
            .stack
            .iter()
            .map(|lifted| self.list.op_of(lifted.call))
            .collect();
        self.stuck = Some(Stuck {
            position: ret,
            blocked: op,
            linearized,
            state: self.state,
            armed: self.armed,
            candidates: self.list.calls_before(ret),
        });
    }
}
