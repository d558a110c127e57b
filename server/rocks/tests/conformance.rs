//! openraft's storage conformance suite against the log store and state
//! machine of `atoll-raft`, running on the RocksDB engine.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::log_store::LogStore;
use atoll_raft::state_machine::StateMachine;
use atoll_raft::types::{StorageError, TypeConfig};
use atoll_raft::ShardKind;
use atoll_rocks::{RocksEngine, RocksOptions};
use atoll_storage::{Engine, GroupCommitter};
use openraft::testing::log::{StoreBuilder, Suite};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine: Arc<dyn Engine> = Arc::new(
            RocksEngine::open(dir.path(), &RocksOptions::default()).expect("open rocksdb"),
        );
        let committer = Arc::new(GroupCommitter::start(engine.clone()).expect("committer"));
        let replica = ReplicaId(7);
        let log = LogStore::new(replica, engine.clone(), committer);
        let kind = ShardKind::Data {
            first: 0,
            last: u64::MAX,
        };
        // Snapshots are kept in this dir: each store needs its own.
        let snapshots = dir.path().join("snapshots");
        let sm = StateMachine::open(replica, ShardId(1), kind, engine, &snapshots)
            .expect("state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite_passes_on_rocksdb() {
    if let Err(e) = Suite::test_all(RocksBuilder).await {
        panic!("storage suite failed: {e}");
    }
}
