//! TTL expiry is decided in the log (docs/design/ttl-and-clocks.md): once a
//! read has seen a key expire, no write can see it live, however early that
//! write was stamped.

use std::time::Duration;

use atoll_proto::ShardId;
use atoll_raft::{BatchStep, Command, Expected, Outcome, Request};

use atoll_client::Consistency;

use crate::harness::{wait_until_absent, Spec, TestCluster};

/// Proposes `command` on the leader of `key`'s shard as if its proposer's
/// clock read `now_ms`: a write queued before the expiry, applied after.
async fn propose_stamped(
    cluster: &TestCluster,
    shard: ShardId,
    now_ms: u64,
    command: Command,
) -> Outcome {
    let leader = cluster.leader_of(shard).expect("the shard has a leader");
    let replica = cluster.node(leader).replica(shard).unwrap();
    let request = Request {
        write_id: atoll_raft::WriteId::Untracked,
        now_ms,
        command,
    };
    replica.proposer.propose(request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stamped_before_expiry_cannot_see_a_key_a_read_saw_expire() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let key = b"{t}:k".to_vec();
    client
        .put_with_ttl(&key, "v", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let live = client
        .get(&key)
        .await
        .unwrap()
        .expect("live before its TTL");
    let shard = ShardId(
        client
            .cluster_map()
            .await
            .unwrap()
            .shard_for_key(&key)
            .unwrap()
            .id,
    );

    // A linearizable read sees the key expire.
    wait_until_absent(&client, &key, Consistency::Linearizable).await;

    // Writes stamped before the expiry time, applied after that read.
    let before = live.expires_at_ms - 1;
    let cas = Command::Cas {
        key: key.clone(),
        expected: Expected::Version(live.version),
        new_value: Some(b"late".to_vec()),
        ttl_ms: 0,
    };
    let out = propose_stamped(&cluster, shard, before, cas).await;
    assert!(
        matches!(out, Outcome::CasFailed { current: None, .. }),
        "a CAS on the expired version fails: {out:?}"
    );
    let check = Command::Batch {
        steps: vec![
            BatchStep::Check {
                key: key.clone(),
                expected_version: live.version,
            },
            BatchStep::Put {
                key: b"{t}:other".to_vec(),
                value: b"x".to_vec(),
                ttl_ms: 0,
            },
        ],
    };
    let out = propose_stamped(&cluster, shard, before, check).await;
    assert!(
        matches!(out, Outcome::CasFailed { .. }),
        "a batch checking the expired version fails: {out:?}"
    );
    let delete = Command::Delete { key: key.clone() };
    let out = propose_stamped(&cluster, shard, before, delete).await;
    assert!(
        matches!(out, Outcome::Deleted { deleted: false, .. }),
        "deleting an expired key deletes nothing: {out:?}"
    );
    assert_eq!(
        client.get(&key).await.unwrap(),
        None,
        "and it never reappears"
    );
    assert_eq!(client.get(b"{t}:other").await.unwrap(), None);
    cluster.shutdown().await;
}
