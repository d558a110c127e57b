//! Storage on a node (DESIGN section 3): one engine shared by every replica,
//! four column families, hash-prefixed data keys, and crc32-framed values.
//!
//! The engine is a narrow trait ([`Engine`]); RocksDB implements it in
//! `atoll-rocks`, and [`MemEngine`] implements it for tests.

mod engine;
mod error;
pub mod frame;
mod group_commit;
pub mod keys;
mod memory;
pub mod record;

pub use engine::{BatchOp, BulkLoad, Cf, Engine, EngineSnapshot, KvPair, Visitor, WriteBatch};
pub use error::{EngineError, Result};
pub use group_commit::{GroupCommitStats, GroupCommitter};
pub use memory::MemEngine;
pub use record::Record;
