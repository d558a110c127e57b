//! The restart read floor: a replica restarted with entries in its log that
//! never committed still serves linearizable reads once it leads again.

use std::time::Duration;

use atoll_proto::ShardId;
use atoll_raft::{Command, Request};

use crate::harness::{eventually, Spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_with_uncommitted_entries_serves_reads_on_an_idle_shard() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        shards: 1,
        ..Spec::default()
    })
    .await;
    cluster.wait_for_leaders().await;
    let client = cluster.client().await;
    client.put("k", "v").await.unwrap();
    let shard = ShardId(1);
    let old = cluster.leader_of(shard).unwrap();
    let replica = cluster.node(old).replica(shard).unwrap();
    let before = replica.metrics().last_log_index.unwrap_or(0);

    // Cut off, the leader appends writes it can never commit.
    cluster.isolate(old);
    for i in 0..5 {
        let raft = replica.raft.clone();
        let request = Request {
            write_id: atoll_raft::WriteId::Untracked,
            now_ms: 0,
            command: Command::Put {
                key: format!("lost-{i}").into_bytes(),
                value: b"x".to_vec(),
                ttl_ms: 0,
            },
        };
        tokio::spawn(async move { raft.client_write(request).await });
    }
    let appended = eventually(Duration::from_secs(5), || {
        replica.metrics().last_log_index.unwrap_or(0) >= before + 5
    })
    .await;
    assert!(appended, "the isolated leader appended the writes");
    drop(replica);
    cluster.stop(old).await;
    cluster.heal();
    let others_lead = eventually(Duration::from_secs(20), || {
        cluster.leader_of(shard).is_some()
    })
    .await;
    assert!(others_lead, "the others elect a leader");

    // Back, it catches up and is handed the leadership; nothing else is
    // written to the shard.
    cluster.restart(old).await;
    let replica = cluster.node(old).replica(shard).unwrap();
    let new = cluster.leader_of(shard).unwrap();
    let leader = cluster.node(new).replica(shard).unwrap();
    let caught_up = eventually(Duration::from_secs(20), || {
        replica.metrics().last_applied >= leader.metrics().last_applied
    })
    .await;
    assert!(caught_up, "the restarted replica caught up");
    if new != old {
        leader
            .raft
            .trigger()
            .transfer_leader(replica.spec.replica)
            .await
            .unwrap();
    }
    let leads = eventually(Duration::from_secs(20), || {
        replica.leader() == Some(replica.spec.replica)
    })
    .await;
    assert!(leads, "the restarted replica leads again");
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        cluster.node(old).read_barrier(&replica),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(()))),
        "a linearizable read on the idle shard is served (floor {}, applied {:?}): {read:?}",
        replica.read_index.restart_floor(),
        replica.metrics().last_applied
    );
    cluster.shutdown().await;
}
