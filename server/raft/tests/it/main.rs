//! Tests of the raft crate on the in-memory engine: openraft's storage
//! suite, and the state machine's key-value and dedup semantics.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod conformance;
mod expiry;
mod log_cache;
mod meta;
mod sessions;
mod snapshot_install;
mod state_machine;
