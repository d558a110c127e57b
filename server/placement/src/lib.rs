//! Pure placement for Atoll: how the 64-bit hash space is cut into shard
//! ranges ([`split_hash_space`]) and which nodes hold each shard's replicas
//! ([`place`]).
//!
//! Everything here is a pure function of its input: no I/O, no clocks, no
//! randomness, and equal input always gives equal output.

pub mod error;
pub mod hash_space;
pub mod placement;

pub use error::PlacementError;
pub use hash_space::{split_hash_space, HashRange};
pub use placement::{place, Assignment, NodeSpec};
