//! Moving a replica (docs/design/elastic.md, "One move"): the new replica
//! is added as a learner, catches up (by snapshot when the log behind it
//! is purged), and replaces the old one in one joint change of voters,
//! while clients write; the old node then deletes everything the replica
//! held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_client::Error;
use atoll_proto::{NodeId, ShardId};
use atoll_raft::meta_command::Lifecycle;
use atoll_storage::keys::{data_range, replica_range};
use atoll_storage::Cf;

use crate::harness::{eventually, Spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_to_a_new_node_under_writes_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        snapshot_after_entries: 50,
        keep_entries_after_snapshot: 10,
        ..Spec::default()
    })
    .await;
    // An operator's move alone: the controller starts none of its own.
    cluster.pause_placement().await;
    // Node 4 joins on island "a", node 1's island, so a replica can move
    // from node 1 to it and keep the shard on three islands.
    let joined = cluster.join("a", 100).await;
    assert!(is_up(&cluster, NodeId(4)).await, "node 4 joins");
    let client = cluster.client().await;
    put_keys(&client, 400).await;
    let shard = ShardId(1);
    let before = cluster.node(0).map().shard(shard).unwrap().clone();
    let leaving = before.replica_on(NodeId(1)).unwrap();

    // Writers go on through the move; every acknowledged write must stay.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.client().await, stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if client.put(format!("w{i}"), format!("{i}")).await.is_ok() {
                    acked.push(i);
                }
                i += 1;
            }
            acked
        })
    };
    let refused = client.move_replica(1, 2, 4).await;
    assert!(
        matches!(&refused, Err(Error::Refused(m)) if m.contains("islands")),
        "node 2's island differs from node 4's: {refused:?}"
    );
    client.move_replica(1, 1, 4).await.unwrap();
    let again = client.move_replica(1, 1, 4).await;
    assert!(
        matches!(again, Err(Error::Refused(_))),
        "one move per shard: {again:?}"
    );

    let moved = eventually(Duration::from_secs(90), || {
        let map = cluster.node(0).map();
        let nodes: Vec<u64> = map
            .shard(shard)
            .unwrap()
            .replicas
            .iter()
            .map(|r| r.node_id)
            .collect();
        map.moves.is_empty() && nodes.contains(&4) && !nodes.contains(&1)
    })
    .await;
    assert!(
        moved,
        "the move finished: {:?}",
        cluster.node(0).map().moves
    );
    let after = cluster.node(0).map().shard(shard).unwrap().clone();
    assert_eq!(after.epoch, before.epoch + 1);
    assert!(
        eventually(Duration::from_secs(20), || cluster
            .node(0)
            .replica(shard)
            .is_none())
        .await,
        "node 1 stops the replica that left"
    );
    let engine = cluster.node(0).engine().clone();
    let (first, last) = (before.range_start, before.range_last);
    let (start, end) = data_range(first, last);
    assert!(
        engine.scan(Cf::Data, &start, &end, 1).unwrap().is_empty(),
        "its data is gone"
    );
    let (start, end) = replica_range(atoll_proto::ReplicaId(leaving));
    for cf in [Cf::RaftLog, Cf::RaftState, Cf::ApplyState] {
        assert!(
            engine.scan(cf, &start, &end, 1).unwrap().is_empty(),
            "its {cf:?} rows are gone"
        );
    }
    let new = cluster
        .node(joined)
        .replica(shard)
        .expect("node 4 runs the new replica");
    let membership = new.metrics().membership_config.membership().clone();
    let voters: Vec<u64> = membership.voter_ids().map(|r| r.get()).collect();
    assert!(
        voters.contains(&new.spec.replica.get()) && !voters.contains(&leaving),
        "{voters:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    check_keys(&client, 400).await;
    for i in acked {
        let got = client.get(format!("w{i}")).await.unwrap();
        assert_eq!(
            got.map(|kv| kv.value),
            Some(i.to_string().into_bytes()),
            "w{i}"
        );
    }
    cluster.shutdown().await;
}

/// Writes `k0..k{n}`.
async fn put_keys(client: &atoll_client::Client, n: usize) {
    for i in 0..n {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
}

/// Reads `k0..k{n}` back, linearizably.
async fn check_keys(client: &atoll_client::Client, n: usize) {
    for i in 0..n {
        let got = client.get(format!("k{i}")).await.unwrap();
        let want = format!("v{i}").into_bytes();
        assert_eq!(got.map(|kv| kv.value), Some(want), "k{i}");
    }
}

/// Waits until no move is in progress, node `gone` holds no replica, and
/// every shard has its 3 replicas again.
async fn repaired_around(cluster: &TestCluster, gone: u64) -> bool {
    eventually(Duration::from_secs(120), || {
        let map = cluster.node(1).map();
        map.moves.is_empty()
            && held(&map, gone) == 0
            && (map.meta.iter().chain(&map.shards)).all(|s| s.replicas.len() == 3)
    })
    .await
}

/// Replicas (meta included) that `map` puts on `node`.
fn held(map: &atoll_proto::v1::ClusterMap, node: u64) -> usize {
    (map.meta.iter().chain(&map.shards))
        .filter(|s| s.replicas.iter().any(|r| r.node_id == node))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_gets_its_share_and_a_drained_node_gives_it_back() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    let refused = client
        .set_node_state(2, atoll_client::NodeState::Draining, false)
        .await;
    assert!(
        matches!(&refused, Err(Error::Refused(m)) if m.contains("cannot hold")),
        "3 nodes with RF 3 cannot drain one: {refused:?}"
    );
    put_keys(&client, 200).await;
    // Island a's 5 replicas (4 shards and meta) end split between nodes 1
    // and 4, with no one computing a layout.
    cluster.join("a", 100).await;
    let balanced = eventually(Duration::from_secs(120), || {
        let map = cluster.node(1).map();
        map.moves.is_empty()
            && (2..=3).contains(&held(&map, 4))
            && held(&map, 1) + held(&map, 4) == 5
    })
    .await;
    let map = cluster.node(1).map();
    assert!(
        balanced,
        "node 4 got its share: {} and {} replicas, moves {:?}",
        held(&map, 1),
        held(&map, 4),
        map.moves
    );
    assert!(map.shards.iter().all(|s| s.replicas.len() == 3));

    client
        .set_node_state(4, atoll_client::NodeState::Draining, false)
        .await
        .unwrap();
    let drained = eventually(Duration::from_secs(120), || {
        let map = cluster.node(1).map();
        map.node(NodeId(4))
            .is_some_and(|n| Lifecycle::of(n) == Lifecycle::Removed)
    })
    .await;
    let map = cluster.node(1).map();
    assert!(
        drained,
        "node 4 drained and removed: {} replicas, moves {:?}",
        held(&map, 4),
        map.moves
    );
    assert_eq!((held(&map, 1), held(&map, 4)), (5, 0));
    check_keys(&client, 200).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_removed_as_dead_has_its_replicas_repaired_elsewhere() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    put_keys(&client, 200).await;
    let joined = cluster.join("a", 100).await;
    let balanced = eventually(Duration::from_secs(120), || {
        let map = cluster.node(1).map();
        map.moves.is_empty() && held(&map, 4) >= 2
    })
    .await;
    assert!(balanced, "node 4 got replicas");

    // Node 4 is lost for good: stopped, then removed as dead.
    cluster.stop(joined).await;
    client
        .set_node_state(4, atoll_client::NodeState::Removed, true)
        .await
        .unwrap();
    let repaired = repaired_around(&cluster, 4).await;
    let map = cluster.node(1).map();
    assert!(
        repaired,
        "every shard is back to 3 replicas: moves {:?}",
        map.moves
    );
    assert_eq!(held(&map, 1), 5, "island a's replicas are back on node 1");
    check_keys(&client, 200).await;
    client.put("after", "repair").await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_is_repaired_around_and_gets_replicas_again_when_it_returns() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        dead_after: Some(Duration::from_secs(4)),
        ..Spec::default()
    })
    .await;
    let client = cluster.client().await;
    put_keys(&client, 100).await;
    let joined = cluster.join("a", 100).await;
    let balanced = || {
        let map = cluster.node(1).map();
        map.moves.is_empty() && held(&map, 4) >= 2
    };
    assert!(
        eventually(Duration::from_secs(120), balanced).await,
        "node 4 got replicas"
    );

    // Node 4 stops answering: after dead_after its replicas are re-created
    // on node 1, though node 4 stays in the cluster.
    cluster.stop(joined).await;
    let repaired = repaired_around(&cluster, 4).await;
    let map = cluster.node(1).map();
    assert!(
        repaired,
        "repaired around the silent node: moves {:?}",
        map.moves
    );
    let state = map.node(NodeId(4)).map(Lifecycle::of);
    assert_eq!(state, Some(Lifecycle::Up), "a silent node is not removed");
    check_keys(&client, 100).await;

    // Back, it is up again and gets its share again.
    cluster.restart(joined).await;
    assert!(
        eventually(Duration::from_secs(120), || {
            let map = cluster.node(1).map();
            map.moves.is_empty() && held(&map, 4) >= 2
        })
        .await,
        "the returning node gets replicas again"
    );
    check_keys(&client, 100).await;
    cluster.shutdown().await;
}

/// A shard's log from before a split holds writes to the half it gave
/// away. A replica that joins the shard later must start from a snapshot
/// taken after the split: replaying that log against the narrowed range,
/// it refused batches that spanned both halves, which the old replicas had
/// applied, and lost their keys in its own half.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moved_after_a_split_holds_every_key_of_its_range() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        shards: 1,
        ..Spec::default()
    })
    .await;
    cluster.pause_placement().await;
    let client = cluster.client().await;
    // Batches of keys over the whole hash space, while one shard holds it.
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(8) {
        let pairs = (chunk.iter())
            .map(|k| (k.clone().into_bytes(), k.clone().into_bytes()))
            .collect();
        client.put_many(pairs).await.unwrap();
    }
    client.split_shard(1, 0).await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let map = cluster.node(0).map();
            map.splits.is_empty() && map.shards.len() == 2
        })
        .await,
        "the split finishes"
    );
    let joined = cluster.join("a", 100).await;
    assert!(is_up(&cluster, NodeId(4)).await, "node 4 joins");
    client.move_replica(1, 1, 4).await.unwrap();
    let shard = ShardId(1);
    assert!(
        eventually(Duration::from_secs(90), || {
            let map = cluster.node(0).map();
            let nodes: Vec<u64> = (map.shard(shard).unwrap().replicas.iter())
                .map(|r| r.node_id)
                .collect();
            map.moves.is_empty() && nodes.contains(&4) && !nodes.contains(&1)
        })
        .await,
        "the move finishes"
    );
    let map = client.cluster_map().await.unwrap();
    let ours: Vec<&String> = keys
        .iter()
        .filter(|k| map.shard_for_key(k.as_bytes()).is_some_and(|s| s.id == 1))
        .collect();
    assert!(ours.len() > 100, "about half the keys stay in shard 1");
    let new = cluster
        .node(joined)
        .replica(shard)
        .expect("the new replica");
    let applied = cluster
        .node(1)
        .replica(shard)
        .unwrap()
        .metrics()
        .last_applied
        .map(|l| l.index);
    assert!(
        eventually(Duration::from_secs(20), || new
            .metrics()
            .last_applied
            .map(|l| l.index)
            >= applied)
        .await,
        "the new replica catches up"
    );
    let engine = cluster.node(joined).engine().clone();
    let missing: Vec<&&String> = ours
        .iter()
        .filter(|k| {
            let key = atoll_storage::keys::data_key(k.as_bytes());
            engine.get(Cf::Data, &key).unwrap().is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} keys of shard 1 missing on the new replica: {:?}",
        missing.len(),
        ours.len(),
        &missing[..missing.len().min(5)]
    );
    cluster.shutdown().await;
}

/// Waits until node 0's map shows `node` up.
async fn is_up(cluster: &TestCluster, node: NodeId) -> bool {
    eventually(Duration::from_secs(20), || {
        (cluster.node(0).map().node(node)).is_some_and(|n| Lifecycle::of(n) == Lifecycle::Up)
    })
    .await
}
