//! Atoll's fault-injection harness: the recorded history model and the
//! consistency checkers that judge it.
//!
//! A run records one [`Op`] per client operation ([`history`], stored as
//! JSON lines) and hands the history to a checker ([`checker`]):
//! [`check_register_history`] (linearizability per key),
//! [`check_set_history`] (lost and phantom elements) or
//! [`check_bank_history`] (conserved totals). Every checker answers with a
//! [`Verdict`]: `Valid`, `Invalid` with the operations involved, or
//! `Unknown`, which is a failed run, not a pass.

pub mod checker;
pub mod cluster;
mod describe;
pub mod history;
pub mod lazyfs;
pub mod netns;
pub mod partition;
pub mod timeline;

pub use checker::{
    check_bank_history, check_register_history, check_set_history, BankSpec, Budget, KeyReport,
    Verdict, TTL_SLACK_NS,
};
pub use history::{
    read_jsonl, write_jsonl, Element, HistoryError, Op, OpKind, Outcome, ProcessId, Reply, Value,
    Workload,
};
