//! Corruption, lost responses and a replica that falls behind a purged log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_client::{Error, Expect};
use atoll_proto::ShardId;
use atoll_raft::ShardKind;
use atoll_storage::keys::{data_key, data_range};
use atoll_storage::{Cf, WriteBatch};

use crate::harness::{eventually, Spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_reads_as_data_corruption_never_as_a_value() {
    let cluster = TestCluster::start(Spec {
        rocks: true,
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    client.put("precious", "the real value").await.unwrap();
    let map = client.cluster_map().await.unwrap();
    let shard = ShardId(map.shard_for_key(b"precious").unwrap().id);
    let leader = cluster.leader_of(shard).expect("shard has a leader");
    // Flip one byte of the stored record on the leader, through its engine.
    let engine = cluster.node(leader).engine().clone();
    let dkey = data_key(b"precious");
    let mut stored = engine.get(Cf::Data, &dkey).unwrap().expect("record stored");
    let last = stored.len() - 1;
    stored[last] ^= 0x20;
    let mut batch = WriteBatch::new();
    batch.put(Cf::Data, dkey, stored);
    engine.write(batch, true).unwrap();

    match client.get("precious").await {
        Err(Error::DataCorruption(message)) => assert!(message.contains("crc32"), "{message}"),
        other => panic!("expected DATA_CORRUPTION, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_whose_response_was_lost_applies_once() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    // Every node drops the response of its next write after applying it.
    for i in 0..3 {
        cluster
            .node(i)
            .hooks
            .drop_write_responses
            .store(1, Ordering::SeqCst);
    }
    // A create-if-absent: applied twice, the second application would fail.
    let version = client
        .compare_and_swap("once", Expect::Version(0), Some(b"first".to_vec()))
        .await
        .expect("the retry returns the first result");
    let dropped: u32 = (0..3)
        .map(|i| {
            1 - cluster
                .node(i)
                .hooks
                .drop_write_responses
                .load(Ordering::SeqCst)
        })
        .sum();
    assert_eq!(
        dropped, 1,
        "exactly one response was lost and the client retried"
    );
    let kv = client.get("once").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"first"[..], version));
    // A fresh CAS with the same expectation now fails: the key exists once.
    let err = client
        .compare_and_swap("once", Expect::Version(0), Some(b"second".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CasFailed { .. }));
    cluster.shutdown().await;
}

/// crc32 over every (data key, stored record) of `[first, last]`.
fn range_checksum(engine: &dyn atoll_storage::Engine, first: u64, last: u64) -> (u32, usize) {
    let (start, end) = data_range(first, last);
    let rows = engine.scan(Cf::Data, &start, &end, usize::MAX).unwrap();
    let mut hasher = crc32fast::Hasher::new();
    for (k, v) in &rows {
        hasher.update(k);
        hasher.update(v);
    }
    (hasher.finalize(), rows.len())
}

/// A follower of a shard kept cut off while the log moved past it.
struct Lag {
    leader: usize,
    lagging: usize,
    /// The lagging replica's last log index when it was cut off.
    behind_at: u64,
    /// The leader's applied index once it had purged past the follower.
    target: u64,
}

/// Writes `n` keys `{prefix}-{i}` of about 8 KiB each.
async fn put_padded(client: &atoll_client::Client, prefix: &str, n: usize) {
    let padding = "x".repeat(8 << 10);
    for i in 0..n {
        client
            .put(format!("{prefix}-{i}"), format!("value-{i}-{padding}"))
            .await
            .unwrap();
    }
}

/// Cuts a follower of `shard` off, writes 400 values of 8 KiB (so a
/// snapshot spans several 1 MiB chunks), and waits until the leader has
/// purged its log past the follower.
async fn lag_a_follower_past_the_purge_point(
    cluster: &TestCluster,
    client: &atoll_client::Client,
    shard: ShardId,
) -> Lag {
    let leader = cluster.leader_of(shard).unwrap();
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    cluster.isolate(lagging);
    let lagging_replica = cluster.node(lagging).replica(shard).unwrap();
    let behind_at = lagging_replica.metrics().last_log_index.unwrap_or(0);
    put_padded(client, "late", 400).await;
    let leader_replica = cluster.node(leader).replica(shard).unwrap();
    let purged = eventually(Duration::from_secs(20), || {
        leader_replica
            .metrics()
            .purged
            .is_some_and(|p| p.index > behind_at + 10)
    })
    .await;
    assert!(
        purged,
        "the leader purged its log past the lagging replica's position"
    );
    let target = leader_replica.metrics().last_applied.unwrap().index;
    Lag {
        leader,
        lagging,
        behind_at,
        target,
    }
}

impl Lag {
    /// Waits (up to 60 s) until the lagging replica has applied what the
    /// leader had.
    async fn caught_up(&self, cluster: &TestCluster, shard: ShardId) -> bool {
        let follower = cluster.node(self.lagging).replica(shard).unwrap();
        eventually(Duration::from_secs(60), || {
            follower
                .metrics()
                .last_applied
                .is_some_and(|a| a.index >= self.target)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_purged_log_catches_up_by_snapshot() {
    let spec = Spec {
        rocks: true,
        shards: 1,
        snapshot_after_entries: 50,
        keep_entries_after_snapshot: 10,
        ..Spec::default()
    };
    let cluster = TestCluster::start(spec).await;
    let client = cluster.client().await;
    let shard = ShardId(1);
    for i in 0..20 {
        client.put(format!("early-{i}"), "v").await.unwrap();
    }
    let lag = lag_a_follower_past_the_purge_point(&cluster, &client, shard).await;
    let (leader, lagging) = (lag.leader, lag.lagging);
    cluster.heal();
    assert!(
        lag.caught_up(&cluster, shard).await,
        "the lagging replica caught up"
    );
    let follower = cluster.node(lagging).replica(shard).unwrap();
    assert!(
        follower
            .metrics()
            .snapshot
            .is_some_and(|s| s.index > lag.behind_at),
        "it caught up by installing a snapshot"
    );
    let ShardKind::Data { first, last } = follower.spec.kind else {
        panic!("data shard")
    };
    let want = range_checksum(cluster.node(leader).engine().as_ref(), first, last);
    let same = eventually(Duration::from_secs(10), || {
        range_checksum(cluster.node(lagging).engine().as_ref(), first, last) == want
    })
    .await;
    assert!(
        same,
        "the shard range on the lagging replica equals the leader's ({} records)",
        want.1
    );
    assert_eq!(want.1, 420);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_data_and_serves_again() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    for i in 0..50 {
        client.put(format!("r-{i}"), format!("{i}")).await.unwrap();
    }
    // Restart every node in turn; the cluster keeps a majority throughout.
    for i in 0..3 {
        cluster.restart(i).await;
        // Reads on a restarted replica wait until what its log knew to be
        // committed at open is applied: the floor is the saved commit
        // index, never past the log's end (entries there may never
        // commit). The commit index is saved with a later append, so the
        // data shards, which took 50 writes, have one above zero; the meta
        // shard, with its few entries, may not.
        for replica in cluster.node(i).replicas() {
            let floor = replica.read_index.restart_floor();
            let last = replica.metrics().last_log_index.unwrap_or(0);
            assert!(
                floor <= last,
                "{:?}: floor {floor} past the log's end {last}",
                replica.spec
            );
            if matches!(replica.spec.kind, ShardKind::Data { .. }) {
                assert!(
                    floor > 0,
                    "{:?} reopened with an empty restart floor",
                    replica.spec
                );
            }
        }
        cluster.wait_for_leaders().await;
        client.put(format!("after-{i}"), "x").await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            client.get(format!("r-{i}")).await.unwrap().unwrap().value,
            format!("{i}").as_bytes()
        );
    }
    // Each node's own engine holds every key of the shards it replicates.
    let map = client.cluster_map().await.unwrap();
    for n in 0..3 {
        let node = cluster.node(n);
        for i in 0..50 {
            let key = format!("r-{i}");
            let shard = map.shard_for_key(key.as_bytes()).unwrap();
            if shard.replica_on(node.id).is_some() {
                let have = eventually(Duration::from_secs(10), || {
                    node.engine()
                        .get(Cf::Data, &data_key(key.as_bytes()))
                        .unwrap()
                        .is_some()
                })
                .await;
                assert!(have, "node {} lost {key}", node.id);
            }
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_on_large_values_by_log() {
    // More entry bytes than one AppendEntries may carry, all in the log.
    let spec = Spec {
        shards: 1,
        ..Spec::default()
    };
    let cluster = TestCluster::start(spec).await;
    let client = cluster.client().await;
    let shard = ShardId(1);
    let leader = cluster.leader_of(shard).unwrap();
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    cluster.isolate(lagging);
    let value = vec![7u8; 1 << 20];
    for i in 0..40 {
        client.put(format!("big-{i}"), &value).await.unwrap();
    }
    cluster.heal();
    let leader_replica = cluster.node(leader).replica(shard).unwrap();
    let follower = cluster.node(lagging).replica(shard).unwrap();
    let target = leader_replica.metrics().last_applied.unwrap().index;
    let caught_up = eventually(Duration::from_secs(60), || {
        follower
            .metrics()
            .last_applied
            .is_some_and(|a| a.index >= target)
    })
    .await;
    assert!(
        caught_up,
        "the follower caught up through size-bounded AppendEntries"
    );
    assert_eq!(follower.metrics().snapshot, None, "by log, not by snapshot");
    for i in 0..40 {
        let stored = cluster
            .node(lagging)
            .engine()
            .get(Cf::Data, &data_key(format!("big-{i}").as_bytes()))
            .unwrap();
        assert!(
            stored.is_some_and(|s| s.len() > 1 << 20),
            "big-{i} replicated"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_reach_a_quorum_is_reported_ambiguous() {
    let cluster = TestCluster::start(Spec::default()).await;
    let options = atoll_client::ClientOptions {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let client = atoll_client::Client::connect_with(cluster.addresses(), options)
        .await
        .unwrap();
    client.put("before", "v").await.unwrap();
    // Every node cut off from every other: no shard has a quorum.
    for i in 0..3 {
        cluster.isolate(i);
    }
    match client.put("during", "v").await {
        Err(Error::Ambiguous(_)) => {}
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    // Reads that need a quorum fail cleanly instead of answering stale.
    let read = client.get("before").await;
    assert!(matches!(read, Err(ref e) if e.is_retryable()), "{read:?}");
    cluster.heal();
    cluster.wait_for_leaders().await;
    assert_eq!(client.get("before").await.unwrap().unwrap().value, b"v");
    cluster.shutdown().await;
}

/// A linearizable read sent straight to a follower that is cut off from the
/// leader: `(answered, value)`.
async fn read_on_cut_off_follower(
    stale_switch: bool,
) -> Result<Option<Vec<u8>>, atoll_client::Error> {
    use atoll_proto::v1::kv_client::KvClient;
    use atoll_proto::v1::GetRequest;

    let spec = Spec {
        shards: 1,
        stale_linearizable_reads: stale_switch,
        ..Spec::default()
    };
    let cluster = TestCluster::start(spec).await;
    let client = cluster.client().await;
    client.put("x", "old").await.unwrap();
    let shard = ShardId(1);
    let leader = cluster.leader_of(shard).unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let replica = cluster.node(follower).replica(shard).unwrap();
    let written = eventually(Duration::from_secs(10), || {
        replica.metrics().last_applied.is_some_and(|a| a.index >= 2)
    })
    .await;
    assert!(written, "the follower applied the first write");
    cluster.isolate(follower);
    client.put("x", "new").await.unwrap();
    let mut raw = KvClient::connect(format!("http://{}", cluster.addresses()[follower]))
        .await
        .unwrap();
    let request = GetRequest {
        shard_id: 1,
        key: b"x".to_vec(),
        consistency: 0,
    };
    let result = tokio::time::timeout(Duration::from_secs(8), raw.get(request)).await;
    cluster.shutdown().await;
    match result {
        Ok(Ok(resp)) => Ok(resp.into_inner().kv.map(|kv| kv.value)),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(atoll_client::Error::Timeout("no answer".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_refuses_linearizable_reads() {
    let result = read_on_cut_off_follower(false).await;
    assert!(
        result.is_err(),
        "a follower must not answer a linearizable read itself: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsafe_stale_reads_switch_really_serves_stale_values() {
    // The planted bug the fault-injection harness must catch.
    let result = read_on_cut_off_follower(true).await;
    assert_eq!(result.unwrap(), Some(b"old".to_vec()));
}

/// A snapshot goes to a follower no faster than `raft.snapshot_rate`
/// (docs/design/elastic.md; issue 15 asks for at most 1.1x the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_sent_no_faster_than_the_snapshot_rate() {
    const RATE: u64 = 1 << 20;
    let spec = Spec {
        rocks: true,
        shards: 1,
        snapshot_after_entries: 50,
        keep_entries_after_snapshot: 10,
        snapshot_rate: Some(RATE),
        ..Spec::default()
    };
    let cluster = TestCluster::start(spec).await;
    let client = cluster.client().await;
    let shard = ShardId(1);
    // The lag below writes about 3.2 MiB, but the snapshot sent is the
    // last one taken, up to `snapshot_after_entries` writes behind, and
    // may hold less than 3 MiB (seen in CI): 1.6 MiB written first keeps
    // it several seconds long at the rate.
    put_padded(&client, "early", 200).await;
    let lag = lag_a_follower_past_the_purge_point(&cluster, &client, shard).await;
    let started = std::time::Instant::now();
    cluster.heal();
    let caught_up = lag.caught_up(&cluster, shard).await;
    let elapsed = started.elapsed();
    assert!(caught_up, "the lagging replica caught up");
    let leader = lag.leader;
    let snapshots = cluster.data_dir(leader).join("snapshots");
    let bytes: u64 = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0);
    let rate = bytes as f64 / elapsed.as_secs_f64();
    eprintln!(
        "snapshot of {bytes} bytes sent and installed in {elapsed:?}: {:.2}x the limit",
        rate / RATE as f64
    );
    assert!(
        bytes > 3 * RATE,
        "the snapshot spans several seconds at the rate"
    );
    assert!(rate <= 1.1 * RATE as f64, "{rate:.0} bytes/s");
    cluster.shutdown().await;
}
