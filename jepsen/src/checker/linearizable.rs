//! Per-key linearizability of register histories: read, write and
//! compare-and-swap on independent keys, each starting absent.
//!
//! The search is Wing & Gong's, with Lowe's refinements as Porcupine
//! implements them. Each key's operations become a time-ordered,
//! doubly-linked list of call and return entries. Walking from the head, a
//! call whose operation the register model accepts is *lifted* (its call
//! and return leave the list, the state advances) and the walk restarts; a
//! return reached while its operation is still listed means that operation
//! cannot take effect before it completed, so the search backtracks to the
//! last lift and tries the next candidate. A cache of (set of linearized
//! operations, state) configurations already reached prunes orders that
//! meet again. Ambiguous operations have no return entry: the search may
//! lift them at any point after their call, or leave them out. Reads and
//! values nobody observes are handled specially to keep real histories
//! cheap (see `search.rs`); a brute-force oracle test checks that this
//! never changes a verdict.
//!
//! A value written with a TTL may expire, at any time from its write's
//! invocation plus the TTL on, or never: expiry is one more optional
//! operation, which only the value of its own write lets apply, and which
//! leaves the key absent (see `register.rs`).
//!
//! The worst case is exponential: the cache bounds the work by the number
//! of distinct configurations, at most 2^n times the number of observed
//! values for n operations, each costing O(n / 64) to hash and store.
//! Histories with bounded concurrency need a few steps per operation (a
//! few hundred operations per key, ten in flight, some ambiguous: a few
//! thousand steps, milliseconds). A [`Budget`] caps steps, configurations
//! (memory) and wall time; a search that exceeds it returns
//! [`Verdict::Unknown`], never `Valid`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::register;
use super::search::Search;
use super::verdict::Verdict;
use crate::history::{HistoryError, Op, Workload};

/// How much work one key's search may do before giving up with
/// [`Verdict::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most search steps (entries visited plus backtracks); a step takes
    /// around a tenth of a microsecond.
    pub max_steps: u64,
    /// Most distinct configurations cached, which bounds memory: about
    /// 100 bytes each for a few hundred operations.
    pub max_configurations: usize,
    /// Most wall time, if any; checked every few thousand steps.
    pub max_time: Option<Duration>,
}

impl Default for Budget {
    /// Twenty million steps, a million configurations (~100 MiB) and 30
    /// seconds per key: far beyond what a few hundred operations per key
    /// need.
    fn default() -> Self {
        Budget {
            max_steps: 20_000_000,
            max_configurations: 1_000_000,
            max_time: Some(Duration::from_secs(30)),
        }
    }
}

/// The result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    /// What the check concluded.
    pub verdict: Verdict,
    /// Operations the search considered (failed operations, ambiguous
    /// reads and unobserved ambiguous writes are dropped before).
    pub ops: usize,
    /// Search steps used.
    pub steps: u64,
    /// Distinct (linearized set, value) configurations the search reached;
    /// its memory is proportional.
    pub configurations: usize,
}

/// Checks each key of a register history for linearizability, starting
/// from an absent value. Returns one report per key. Fails if an operation
/// is malformed or not a register operation; `Invalid` verdicts name
/// operations by their index in `ops`.
pub fn check_register_history(
    ops: &[Op],
    budget: &Budget,
) -> Result<BTreeMap<String, KeyReport>, HistoryError> {
    let mut by_key: BTreeMap<&str, Vec<(usize, &Op)>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        op.validate(index)?;
        let found = op.kind.workload();
        if found != Workload::Register {
            return Err(HistoryError::WrongWorkload {
                index,
                expected: Workload::Register,
                found,
            });
        }
        by_key.entry(&op.key).or_default().push((index, op));
    }
    Ok(by_key
        .into_iter()
        .map(|(key, key_ops)| (key.to_string(), check_key(key, ops, &key_ops, budget)))
        .collect())
}

/// Checks one key; `key_ops` pairs each of its operations with its index in
/// `history`.
fn check_key(key: &str, history: &[Op], key_ops: &[(usize, &Op)], budget: &Budget) -> KeyReport {
    let prepared = register::prepare(key_ops);
    let mut search = Search::new(&prepared);
    let verdict = match search.run(budget) {
        Ok(true) => Verdict::Valid,
        Ok(false) => match &search.stuck {
            Some(stuck) => stuck.verdict(key, &prepared, history),
            None => Verdict::Unknown {
                reason: format!("key {key:?}: search failed without a failure point"),
            },
        },
        Err(reason) => Verdict::Unknown {
            reason: format!("key {key:?}: {reason}; a timed-out check is not a pass"),
        },
    };
    KeyReport {
        verdict,
        ops: prepared.len(),
        steps: search.steps,
        configurations: search.configurations(),
    }
}
