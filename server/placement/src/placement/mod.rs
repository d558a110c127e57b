//! Shard -> nodes placement: RF distinct nodes per shard, spread over as many
//! islands as possible, load proportional to capacity, few moves from the
//! current assignment, and preferred leaders spread by capacity.
//!
//! [`place()`] runs the steps in order, one concept per file:
//!
//! 1. `cluster` validates and indexes the nodes; `spread` says how many
//!    replicas of each shard every island holds.
//! 2. `target` computes each node's exact ideal load (`share` does the
//!    exact proportional arithmetic) and its window `[floor, ceil]`.
//! 3. `keep` keeps every current replica the island bounds allow; `fill`
//!    fills the empty slots greedily (`rendezvous` breaks ties).
//! 4. `rebalance` brings every node into its window in three `phase`s,
//!    with bulk direct moves (`sweep`) and shortest chains of moves
//!    (`paths`, `search`), preferring moves that add no data transfer.
//! 5. `leaders` keeps current leaders, chooses the rest, and balances them.
//!
//! `layout` is the working assignment all steps edit; `spec` holds the
//! public input and output types; `test_support` builds the unit tests'
//! clusters and layouts.

mod cluster;
mod fill;
mod keep;
mod layout;
mod leaders;
mod paths;
mod phase;
mod place;
mod rebalance;
mod rendezvous;
mod search;
mod share;
mod spec;
mod spread;
mod sweep;
mod target;
#[cfg(test)]
mod test_support;

pub use place::place;
pub use spec::{Assignment, NodeSpec};
