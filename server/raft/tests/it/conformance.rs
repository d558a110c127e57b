//! openraft's storage conformance suite on the in-memory engine (the
//! RocksDB run is in `atoll-rocks`).

use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::log_store::LogStore;
use atoll_raft::state_machine::StateMachine;
use atoll_raft::types::{StorageError, TypeConfig};
use atoll_raft::ShardKind;
use atoll_storage::{Engine, GroupCommitter, MemEngine};
use openraft::testing::log::{StoreBuilder, Suite};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let committer = Arc::new(GroupCommitter::start(engine.clone()).unwrap());
        let log = LogStore::new(ReplicaId(3), engine.clone(), committer);
        let kind = ShardKind::Data {
            first: 0,
            last: u64::MAX,
        };
        let sm = StateMachine::open(
            ReplicaId(3),
            ShardId(1),
            kind,
            engine,
            &crate::state_machine::snapshot_dir(),
        )
        .unwrap();
        Ok(((), log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite_passes_on_the_memory_engine() {
    if let Err(e) = Suite::test_all(MemBuilder).await {
        panic!("storage suite failed: {e}");
    }
}
