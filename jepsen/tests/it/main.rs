//! Integration tests of `atoll-jepsen`, in one test binary: the checkers
//! classify known-good and known-bad histories, and histories generated
//! from a real sequential register always pass.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod bank;
mod harness_run;
mod history;
mod oracle;
mod oracle_ttl;
mod partition;
mod props;
mod register;
mod register_ttl;
mod scale;
mod set;
mod support;
mod timeline;
mod timeline_synthetic;
