//! The meta shard's map changes: checked in apply, one version each, kept
//! across a restart and carried by snapshots.

use std::sync::Arc;

use atoll_proto::v1::{ClusterMap, Node, NodeState};
use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::meta_command::{Lifecycle, MetaCommand};
use atoll_raft::state_machine::{read_cluster_map, StateMachine};
use atoll_raft::{Command, Outcome, ShardKind};
use atoll_storage::{Engine, MemEngine};
use openraft::storage::RaftStateMachine;
use prost::Message;

use crate::state_machine::entry;

fn open_meta(engine: &Arc<dyn Engine>, dir: &std::path::Path) -> StateMachine {
    StateMachine::open(
        ReplicaId(1),
        ShardId::META,
        ShardKind::Meta,
        engine.clone(),
        dir,
    )
    .unwrap()
}

fn initial_map() -> Vec<u8> {
    let node = |id: u64| Node {
        id,
        island: format!("island-{id}"),
        address: format!("127.0.0.1:{}", 7000 + id),
        capacity: 1,
        state: NodeState::Up as i32,
        join_token: 0,
        incarnation: 0,
    };
    ClusterMap {
        map_version: 1,
        nodes: (1..=3).map(node).collect(),
        next_node_id: 4,
        ..Default::default()
    }
    .encode_to_vec()
}

fn join(token: u64) -> Command {
    Command::Meta(MetaCommand::RegisterNode {
        island: "island-4".into(),
        address: format!("127.0.0.1:{}", 8000 + token),
        capacity: 2,
        token,
    })
}

#[tokio::test]
async fn meta_commands_change_the_map_one_version_at_a_time() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let dir = crate::state_machine::snapshot_dir();
    let mut meta = open_meta(&engine, &dir);
    let refused = meta
        .apply_entries(vec![entry(1, None, 1, join(9))])
        .unwrap();
    assert!(
        matches!(&refused[0], Outcome::Rejected { reason } if reason.contains("no map yet")),
        "{refused:?}"
    );
    let set = Command::SetClusterMap {
        expected_version: 0,
        map: initial_map(),
    };
    // Several changes in one applied batch each see the one before.
    let up = Command::Meta(MetaCommand::SetNodeState {
        node: 4,
        state: Lifecycle::Up,
        dead: false,
    });
    let outcomes = meta
        .apply_entries(vec![
            entry(2, None, 1, set),
            entry(3, None, 1, join(9)),
            entry(4, None, 1, join(9)),
            entry(5, None, 1, up),
            entry(6, None, 1, join(10)),
        ])
        .unwrap();
    assert_eq!(
        &outcomes[1..],
        &[
            Outcome::MapChanged {
                version: 2,
                allocated: Some(4)
            },
            Outcome::MapChanged {
                version: 2,
                allocated: Some(4)
            },
            Outcome::MapChanged {
                version: 3,
                allocated: None
            },
            Outcome::MapChanged {
                version: 4,
                allocated: Some(5)
            },
        ]
    );
    let stored = read_cluster_map(engine.as_ref(), ReplicaId(1))
        .unwrap()
        .unwrap();
    assert_eq!(stored.map_version, 4);
    assert_eq!(stored.nodes.len(), 5);
    assert_eq!(stored.nodes[3].state, NodeState::Up as i32);

    // A restart reloads the map the next command is checked against.
    drop(meta);
    let mut meta = open_meta(&engine, &dir);
    let capacity = Command::Meta(MetaCommand::SetCapacity {
        node: 5,
        capacity: 0,
    });
    let outcomes = meta
        .apply_entries(vec![
            entry(7, None, 1, capacity),
            entry(8, None, 1, join(11)),
        ])
        .unwrap();
    assert!(matches!(outcomes[0], Outcome::Rejected { .. }));
    assert_eq!(
        outcomes[1],
        Outcome::MapChanged {
            version: 5,
            allocated: Some(6)
        }
    );

    // A snapshot carries the map to a replica that then goes on from it.
    let snap = meta.get_current_snapshot().await.unwrap().unwrap();
    let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut follower = open_meta(&other, &crate::state_machine::snapshot_dir());
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let outcomes = follower
        .apply_entries(vec![entry(9, None, 1, join(12))])
        .unwrap();
    assert_eq!(
        outcomes[0],
        Outcome::MapChanged {
            version: 6,
            allocated: Some(7)
        }
    );
}
