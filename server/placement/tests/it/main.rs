//! Integration tests of `atoll-placement`, in one test binary.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod examples;
mod movement;
mod oracle;
mod props;
mod scale;
