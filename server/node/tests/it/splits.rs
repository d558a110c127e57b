//! Splitting a shard (docs/design/elastic.md, "Splits"): the shard keeps
//! the lower half of its range, a new shard with replicas on the same
//! nodes takes the upper half, no data moves, and clients follow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_proto::keyhash::key_hash;
use atoll_proto::v1::kv_client::KvClient;
use atoll_proto::v1::{ErrorCode, ErrorDetail, GetRequest, PutRequest, WriteId};
use atoll_proto::ShardId;
use prost::Message;

use crate::harness::{eventually, Spec, TestCluster};

/// Waits until the map has no split in progress and `shards` data shards.
async fn split_done(cluster: &TestCluster, shards: usize) -> bool {
    eventually(Duration::from_secs(60), || {
        let map = cluster.node(0).map();
        map.splits.is_empty() && map.shards.len() == shards
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_splits_under_writes_and_clients_follow() {
    let cluster = TestCluster::start(Spec {
        rocks: true,
        shards: 2,
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    for i in 0..300 {
        let ttl = (i % 10 == 0).then_some(Duration::from_secs(3600));
        client
            .put_with_ttl(format!("k{i}"), format!("v{i}"), ttl)
            .await
            .unwrap();
    }
    let before = cluster.node(0).map().shard(ShardId(1)).unwrap().clone();

    // A write to the shard's upper half, with a write id of a session, as a
    // client sends it; its retry comes after the split, to the new shard.
    let mut raw = KvClient::connect(format!("http://{}", cluster.addresses()[0]))
        .await
        .unwrap();
    let at = before.range_start + (before.range_last - before.range_start) / 2 + 1;
    let high = (0..)
        .map(|i| format!("retried-{i}"))
        .find(|k| (at..=before.range_last).contains(&key_hash(k.as_bytes())))
        .unwrap();
    let write_id = WriteId {
        client_id: 0xfeed,
        seq: 1,
        lowest_awaited: 1,
        session_start: 1,
    };
    let put = |shard_id: u64| PutRequest {
        shard_id,
        key: high.clone().into_bytes(),
        value: b"once".to_vec(),
        ttl_ms: 0,
        write_id: Some(write_id),
    };
    let first = leader_put(&cluster, &mut raw, put(1)).await;

    // Writers go on through the split: each overwrites its keys in turn,
    // and every acknowledged version of a key is above the one before.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{}", i % 20);
                    if let Ok(version) = client.put(&key, i.to_string()).await {
                        versions.entry(key).or_default().push(version);
                    }
                    i += 1;
                }
                versions
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = client.split_shard(1, 0).await.unwrap();
    assert_eq!(answer.at, at);
    let child = ShardId(answer.child_shard_id);
    assert!(split_done(&cluster, 3).await, "{:?}", cluster.node(0).map());
    let map = cluster.node(0).map();
    let parent = map.shard(ShardId(1)).unwrap();
    let new = map.shard(child).unwrap();
    assert_eq!(
        (parent.range_start, parent.range_last),
        (before.range_start, at - 1)
    );
    assert_eq!((new.range_start, new.range_last), (at, before.range_last));
    assert_eq!(
        (parent.epoch, new.epoch),
        (before.epoch + 1, before.epoch + 1)
    );
    let nodes = |s: &atoll_proto::v1::Shard| {
        let mut n: Vec<u64> = s.replicas.iter().map(|r| r.node_id).collect();
        n.sort_unstable();
        n
    };
    assert_eq!(
        nodes(new),
        nodes(&before),
        "the child is on the shard's nodes"
    );
    assert!(
        eventually(Duration::from_secs(30), || (0..3).all(|i| cluster
            .node(i)
            .replica(child)
            .is_some_and(|r| r.leader().is_some())))
        .await,
        "every node runs the child, and it has a leader"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        for (key, versions) in writer.await.unwrap() {
            assert!(
                versions.windows(2).all(|v| v[0] < v[1]),
                "versions of {key} go up: {versions:?}"
            );
        }
    }

    // The retry, to the shard that owns the key now, is answered from the
    // session the child took over: the same version, not a second write.
    let again = leader_put(&cluster, &mut raw, put(child.get())).await;
    assert_eq!(again, first, "the retry is answered with the first outcome");
    // Sent to the old shard, the key is refused as routed to the wrong
    // shard, for reads and writes alike.
    let get = GetRequest {
        shard_id: 1,
        key: high.clone().into_bytes(),
        ..Default::default()
    };
    let code = |s: tonic::Status| ErrorDetail::decode(s.details()).unwrap().code;
    let stale = raw.get(get).await.unwrap_err();
    assert_eq!(code(stale), ErrorCode::StaleMap as i32);

    for i in 0..300 {
        let got = client.get(format!("k{i}")).await.unwrap();
        assert_eq!(got.map(|kv| kv.value), Some(format!("v{i}").into_bytes()));
    }
    // Every key is found once by a scan of the whole key space.
    let mut seen = 0;
    let mut cursor = None;
    loop {
        let page = client.scan_all(cursor.as_ref(), 100).await.unwrap();
        seen += page
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with(b"k"))
            .count();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 300);
    cluster.shutdown().await;
}

/// Sends `put` until the node asked leads its shard (following NOT_LEADER
/// hints by trying every node); returns the version.
async fn leader_put(
    cluster: &TestCluster,
    raw: &mut KvClient<tonic::transport::Channel>,
    put: PutRequest,
) -> u64 {
    for _ in 0..100 {
        for address in cluster.addresses() {
            *raw = KvClient::connect(format!("http://{address}"))
                .await
                .unwrap();
            if let Ok(answer) = raw.put(put.clone()).await {
                return answer.into_inner().version;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader took the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_past_split_bytes_splits_by_itself_and_a_bad_split_is_refused() {
    // The in-memory engine sizes a range exactly (RocksDB's estimate
    // counts flushed data only).
    let cluster = TestCluster::start(Spec {
        shards: 1,
        split_bytes: Some(1 << 20),
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    let refused = client.split_shard(0, 0).await;
    assert!(
        matches!(&refused, Err(atoll_client::Error::Refused(m)) if m.contains("not a data shard")),
        "the meta shard does not split: {refused:?}"
    );
    let value = vec![7u8; 64 << 10];
    for i in 0..64 {
        client.put(format!("big{i}"), &value).await.unwrap();
    }
    // 4 MiB in a shard of at most 1 MiB: it splits, and its halves again,
    // until each is below the bound.
    assert!(
        eventually(Duration::from_secs(90), || {
            let map = cluster.node(0).map();
            map.shards.len() >= 4 && map.splits.is_empty()
        })
        .await,
        "the shard split by size: {:?}",
        cluster.node(0).map().shards
    );
    for i in 0..64 {
        let got = client.get(format!("big{i}")).await.unwrap();
        assert_eq!(got.map(|kv| kv.value.len()), Some(value.len()), "big{i}");
    }
    cluster.shutdown().await;
}
