//! Integration tests of `atoll-placement`, in one test binary.

// Tests may unwrap: a panic is the failure report.

mod examples;
mod movement;
mod oracle;
mod props;
mod scale;
