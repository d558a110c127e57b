//! The key-value API against an in-process three-island cluster.

use std::collections::HashMap;
use std::time::Duration;

use atoll_client::{BatchOp, Consistency, Error, Expect, Limit, ScanCursor};
use atoll_proto::limits::{MAX_BATCH_BYTES, MAX_BATCH_OPS, MAX_KEY_BYTES};

use crate::harness::{wait_until_absent, Spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_report_versions() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    assert_eq!(client.get("missing").await.unwrap(), None);
    let v1 = client.put("k", "v1").await.unwrap();
    let kv = client.get("k").await.unwrap().expect("written");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v1"[..], v1));
    let v2 = client.put("k", "v2").await.unwrap();
    assert!(v2 > v1, "a later write has a higher version");
    assert!(client.delete("k").await.unwrap());
    assert!(
        !client.delete("k").await.unwrap(),
        "deleting an absent key reports false"
    );
    assert_eq!(client.get("k").await.unwrap(), None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_by_version_and_by_value() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let v1 = client
        .compare_and_swap("lock", Expect::Version(0), Some(b"a".to_vec()))
        .await
        .unwrap();
    let err = client
        .compare_and_swap("lock", Expect::Version(0), Some(b"b".to_vec()))
        .await
        .unwrap_err();
    match err {
        Error::CasFailed {
            current: Some(cur), ..
        } => assert_eq!((cur.value.as_slice(), cur.version), (&b"a"[..], v1)),
        other => panic!("expected CasFailed with the current value, got {other:?}"),
    }
    let err = client
        .compare_and_swap("lock", Expect::Version(v1 + 1000), Some(b"b".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CasFailed { .. }));
    let v2 = client
        .compare_and_swap("lock", Expect::Version(v1), Some(b"b".to_vec()))
        .await
        .unwrap();
    assert!(v2 > v1);
    let err = client
        .compare_and_swap("lock", Expect::Value(b"a".to_vec()), Some(b"c".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CasFailed { .. }));
    client
        .compare_and_swap("lock", Expect::Value(b"b".to_vec()), Some(b"c".to_vec()))
        .await
        .unwrap();
    assert_eq!(client.get("lock").await.unwrap().unwrap().value, b"c");
    client
        .compare_and_swap("lock", Expect::Value(b"c".to_vec()), None)
        .await
        .unwrap();
    assert_eq!(
        client.get("lock").await.unwrap(),
        None,
        "CAS with no new value deletes"
    );
    let err = client
        .compare_and_swap("absent", Expect::Value(b"x".to_vec()), Some(b"y".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CasFailed { current: None, .. }));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_read_as_absent_and_are_removed() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    client
        .put_with_ttl("session", "s1", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    client.put("forever", "f").await.unwrap();
    let kv = client
        .get("session")
        .await
        .unwrap()
        .expect("alive before its TTL");
    assert!(kv.expires_at_ms > 0);
    // Expiry is decided in the log: the key reads as absent once the
    // leader's sweeper has moved the log clock past it.
    wait_until_absent(&client, b"session", Consistency::Linearizable).await;
    wait_until_absent(&client, b"session", Consistency::Stale).await;
    // A CAS that expects the key absent succeeds once it has expired.
    client
        .compare_and_swap("session", Expect::Version(0), Some(b"s2".to_vec()))
        .await
        .unwrap();
    client
        .put_with_ttl("gone", "g", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    // The leader's sweeper removes the expired record from storage.
    let hash_key = atoll_storage::keys::data_key(b"gone");
    let removed = crate::harness::eventually(Duration::from_secs(10), || {
        (0..3).all(|i| {
            cluster
                .node(i)
                .engine()
                .get(atoll_storage::Cf::Data, &hash_key)
                .unwrap()
                .is_none()
        })
    })
    .await;
    assert!(removed, "expired record is deleted on every replica");
    assert_eq!(client.get("forever").await.unwrap().unwrap().value, b"f");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_atomic_within_a_hash_tag() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let v = client
        .batch(vec![
            BatchOp::put("{acct}:alice", "100"),
            BatchOp::put("{acct}:bob", "0"),
        ])
        .await
        .unwrap();
    let alice = client.get("{acct}:alice").await.unwrap().unwrap();
    let bob = client.get("{acct}:bob").await.unwrap().unwrap();
    assert_eq!(
        (alice.version, bob.version),
        (v, v),
        "one batch, one version"
    );

    // A failed check applies nothing.
    let err = client
        .batch(vec![
            BatchOp::check("{acct}:alice", alice.version + 1),
            BatchOp::put("{acct}:alice", "50"),
            BatchOp::put("{acct}:bob", "50"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CasFailed { .. }), "{err:?}");
    assert_eq!(
        client.get("{acct}:alice").await.unwrap().unwrap().value,
        b"100"
    );
    assert_eq!(client.get("{acct}:bob").await.unwrap().unwrap().value, b"0");

    // A transfer guarded by both versions.
    client
        .batch(vec![
            BatchOp::check("{acct}:alice", alice.version),
            BatchOp::check("{acct}:bob", bob.version),
            BatchOp::put("{acct}:alice", "50"),
            BatchOp::put("{acct}:bob", "50"),
            BatchOp::delete("{acct}:nobody"),
        ])
        .await
        .unwrap();
    assert_eq!(
        client.get("{acct}:bob").await.unwrap().unwrap().value,
        b"50"
    );

    // Keys of different shards are refused with a clear error.
    let map = client.cluster_map().await.unwrap();
    let mut other = None;
    for i in 0..1000 {
        let key = format!("k{i}");
        if map.shard_for_key(key.as_bytes()).map(|s| s.id)
            != map.shard_for_key(b"{acct}:alice").map(|s| s.id)
        {
            other = Some(key);
            break;
        }
    }
    let other = other.expect("some key lives in another shard");
    let err = client
        .batch(vec![
            BatchOp::put("{acct}:alice", "0"),
            BatchOp::put(other.clone(), "x"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                limit: Limit::BatchCrossesShards,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.get(&other).await.unwrap(), None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_a_tags_keys_in_order_and_resumes() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let mut expected: Vec<String> = (0..25).map(|i| format!("{{user7}}:item:{i:03}")).collect();
    for key in expected.iter().rev() {
        client.put(key, key).await.unwrap();
    }
    client.put("{user8}:item:000", "other tag").await.unwrap();
    let mut seen = Vec::new();
    let mut start = "{user7}:".as_bytes().to_vec();
    loop {
        let page = client.scan(&start, "", 10).await.unwrap();
        assert!(page.kvs.len() <= 10);
        seen.extend(
            page.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap()),
        );
        match page.resume_key {
            Some(next) => start = next,
            None => break,
        }
    }
    expected.sort();
    assert_eq!(seen, expected);
    let bounded = client
        .scan("{user7}:item:005", "{user7}:item:008", 100)
        .await
        .unwrap();
    let keys: Vec<_> = bounded
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(
        keys,
        ["{user7}:item:005", "{user7}:item:006", "{user7}:item:007"]
    );
    let err = client.scan("no-tag", "", 10).await.unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidArgument {
            limit: Limit::ScanNeedsHashTag,
            ..
        }
    ));
    cluster.shutdown().await;
}

/// The untagged key `a` hashes like every key of tag `a`, so it sits in the
/// same hash range, between `A{a}...` and `{a}...`: a page must neither
/// resume at it (the next request would be refused) nor return it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_scan_resumes_at_a_key_of_its_tag() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    for key in ["A{a}1", "a", "{a}:1"] {
        client.put(key, "v").await.unwrap();
    }
    let first = client.scan("A{a}", "", 1).await.unwrap();
    let keys = |page: &atoll_client::ScanPage| -> Vec<String> {
        page.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    };
    assert_eq!(keys(&first), ["A{a}1"]);
    let resume = first
        .resume_key
        .clone()
        .expect("more keys of the tag follow");
    assert_eq!(resume, b"{a}:1", "the page resumes at the tag's next key");
    let second = client.scan(&resume, "", 1).await.unwrap();
    assert_eq!(keys(&second), ["{a}:1"]);
    assert_eq!(second.resume_key, None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_all_covers_every_key_exactly_once_while_writes_continue() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let mut stable = HashMap::new();
    for i in 0..300 {
        let key = format!("stable-{i}");
        client.put(&key, "v").await.unwrap();
        stable.insert(key, 0u32);
    }
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                client.put(format!("churn-{i}"), "x").await.unwrap();
                client
                    .put(format!("stable-{}", i % 300), "v2")
                    .await
                    .unwrap();
            }
        })
    };
    let mut cursor: Option<ScanCursor> = None;
    let mut pages = 0;
    loop {
        let page = client.scan_all(cursor.as_ref(), 37).await.unwrap();
        pages += 1;
        for kv in page.kvs {
            let key = String::from_utf8(kv.key).unwrap();
            if let Some(count) = stable.get_mut(&key) {
                *count += 1;
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    writer.await.unwrap();
    assert!(pages > 8, "the scan took many pages across shards");
    let wrong: Vec<_> = stable.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "keys seen other than once: {wrong:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_named_and_nothing_is_written() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let limit_of = |e: Error| match e {
        Error::InvalidArgument { limit, message } => {
            assert!(!message.is_empty());
            limit
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert_eq!(
        limit_of(client.put("", "v").await.unwrap_err()),
        Limit::KeyEmpty
    );
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    assert_eq!(
        limit_of(client.put(&long_key, "v").await.unwrap_err()),
        Limit::KeyTooLarge
    );
    assert_eq!(
        client
            .get_with(&long_key[..MAX_KEY_BYTES], Consistency::Linearizable)
            .await
            .unwrap(),
        None
    );
    let big_value = vec![0u8; (1 << 20) + 1];
    assert_eq!(
        limit_of(client.put("big", &big_value).await.unwrap_err()),
        Limit::ValueTooLarge
    );
    assert_eq!(client.get("big").await.unwrap(), None);
    client
        .put("at-limit", vec![0u8; 1 << 20])
        .await
        .expect("a value of exactly 1 MiB is accepted");

    let too_many: Vec<BatchOp> = (0..=MAX_BATCH_OPS)
        .map(|i| BatchOp::put(format!("{{t}}:{i}"), "v"))
        .collect();
    assert_eq!(
        limit_of(client.batch(too_many).await.unwrap_err()),
        Limit::BatchTooManyOps
    );
    let chunk = vec![0u8; 900 * 1024];
    let too_big: Vec<BatchOp> = (0..5)
        .map(|i| BatchOp::put(format!("{{t}}:big{i}"), chunk.clone()))
        .collect();
    assert!(5 * chunk.len() > MAX_BATCH_BYTES);
    assert_eq!(
        limit_of(client.batch(too_big).await.unwrap_err()),
        Limit::BatchTooLarge
    );
    for key in ["{t}:0", "{t}:1000", "{t}:big0", "{t}:big4"] {
        assert_eq!(
            client.get(key).await.unwrap(),
            None,
            "{key} must not be written"
        );
    }
    let page = client.scan("{t}:", "", 100).await.unwrap();
    assert!(page.kvs.is_empty(), "no key of a rejected batch exists");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_reads_keys_of_many_shards() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let keys: Vec<String> = (0..40).map(|i| format!("bg-{i}")).collect();
    for key in keys.iter().step_by(2) {
        client.put(key, key).await.unwrap();
    }
    let values = client
        .batch_get(&keys, Consistency::Linearizable)
        .await
        .unwrap();
    for (i, (key, value)) in keys.iter().zip(values).enumerate() {
        if i % 2 == 0 {
            assert_eq!(value.expect("written").value, key.as_bytes());
        } else {
            assert!(value.is_none());
        }
    }
    cluster.shutdown().await;
}

/// Found by the bank workload of the fault-injection harness: BatchGet read
/// its keys one by one, so a read could see half of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_of_one_hash_tag_never_sees_half_a_batch() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let keys = ["{acct}a", "{acct}b", "{acct}c"];
    let set = move |values: [i64; 3]| {
        keys.iter()
            .zip(values)
            .map(|(k, v)| BatchOp::put(*k, v.to_string()))
            .collect::<Vec<_>>()
    };
    client.batch(set([1000, 0, 0])).await.unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 1..=300i64 {
                let moved = [1000 - 2 * i, i, i];
                client.batch(set(moved)).await.unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let values = client
            .batch_get(&keys, Consistency::Linearizable)
            .await
            .unwrap();
        let total: i64 = values
            .iter()
            .map(|kv| {
                std::str::from_utf8(&kv.as_ref().unwrap().value)
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 1000, "read #{reads} saw {values:?}");
        reads += 1;
    }
    writer.await.unwrap();
    assert!(
        reads > 10,
        "the reads overlapped the writes ({reads} reads)"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_routed_to_the_wrong_shard_gets_stale_map() {
    use atoll_proto::v1::kv_client::KvClient;
    use atoll_proto::v1::{ErrorCode, ErrorDetail, GetRequest, PutRequest};
    use prost::Message;

    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    let map = client.cluster_map().await.unwrap();
    let right = map.shard_for_key(b"k").unwrap().id;
    let wrong = map.shards.iter().find(|s| s.id != right).unwrap().id;
    let mut raw = KvClient::connect(format!("http://{}", cluster.addresses()[0]))
        .await
        .unwrap();
    let code_of = |status: tonic::Status| ErrorDetail::decode(status.details()).unwrap().code;
    let get = GetRequest {
        shard_id: wrong,
        key: b"k".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        code_of(raw.get(get).await.unwrap_err()),
        ErrorCode::StaleMap as i32
    );
    let put = PutRequest {
        shard_id: wrong,
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        code_of(raw.put(put).await.unwrap_err()),
        ErrorCode::StaleMap as i32
    );
    let get = GetRequest {
        shard_id: 999,
        key: b"k".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        code_of(raw.get(get).await.unwrap_err()),
        ErrorCode::StaleMap as i32
    );
    assert_eq!(client.get("k").await.unwrap(), None, "nothing was written");
    cluster.shutdown().await;
}

/// Write ids as a client sends them in its session on a shard
/// (docs/design/sessions.md): one without `lowest_awaited` is malformed; one
/// of a session the shard does not hold is refused with SESSION_EXPIRED,
/// unless it opens one; a retry is answered with the first outcome; a write
/// below the session's floor never applies. Refused writes change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_deduplicated_in_sessions_and_refused_without_one() {
    use atoll_proto::v1::kv_client::KvClient;
    use atoll_proto::v1::{ErrorCode, ErrorDetail, PutRequest, WriteId};
    use atoll_proto::ShardId;
    use prost::Message;

    let cluster = TestCluster::start(Spec::default()).await;
    cluster.wait_for_leaders().await;
    let client = cluster.client().await;
    let map = client.cluster_map().await.unwrap();
    let shard = map.shard_for_key(b"k").unwrap().id;
    let leader = cluster.leader_of(ShardId(shard)).unwrap();
    let mut raw = KvClient::connect(format!("http://{}", cluster.addresses()[leader]))
        .await
        .unwrap();
    let put = |value: &str, seq, lowest_awaited, session_start| PutRequest {
        shard_id: shard,
        key: b"k".to_vec(),
        value: value.as_bytes().to_vec(),
        ttl_ms: 0,
        write_id: Some(WriteId {
            client_id: 42,
            seq,
            lowest_awaited,
            session_start,
        }),
    };
    let code_of = |status: tonic::Status| {
        let detail = ErrorDetail::decode(status.details()).unwrap();
        ErrorCode::try_from(detail.code).unwrap()
    };

    let malformed = raw.put(put("a", 5, 0, 0)).await.unwrap_err();
    assert_eq!(code_of(malformed), ErrorCode::InvalidArgument);
    let no_session = raw.put(put("a", 5, 5, 0)).await.unwrap_err();
    assert_eq!(code_of(no_session), ErrorCode::SessionExpired);
    assert_eq!(client.get("k").await.unwrap(), None, "nothing was written");

    let first = raw.put(put("b", 6, 5, 6)).await.unwrap().into_inner();
    let retry = raw.put(put("b", 6, 6, 0)).await.unwrap().into_inner();
    assert_eq!(retry.version, first.version, "the first outcome, again");
    let below = raw.put(put("c", 5, 5, 5)).await.unwrap_err();
    assert_eq!(code_of(below), ErrorCode::SessionExpired);
    let kv = client.get("k").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version),
        (&b"b"[..], first.version)
    );
    cluster.shutdown().await;
}
