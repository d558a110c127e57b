//! Integration tests of the Atoll node: an in-process cluster harness
//! (nodes on 127.0.0.1 ports, with network faults between chosen nodes) and
//! end-to-end tests on the real `atoll` and `atollctl` binaries.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod faults;
mod harness;
mod identity;
mod join;
mod kv;
mod moves;
mod overload;
mod placement;
mod processes;
mod quiesce;
mod read_floor;
mod read_pages;
mod splits;
mod ttl;
