//! Quiescence: idle shards stop ticking, wake for requests without an
//! election, and elect when the node of a quiet leader goes away.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_proto::ShardId;

use crate::harness::{eventually, Spec, TestCluster};

const QUIET_AFTER: Duration = Duration::from_millis(300);

fn spec(rocks: bool) -> Spec {
    Spec {
        rocks,
        quiesce_after: Some(QUIET_AFTER),
        ..Spec::default()
    }
}

/// Whether every replica on every running node is quiet.
fn all_quiet(cluster: &TestCluster, nodes: &[usize]) -> bool {
    nodes.iter().all(|&i| {
        cluster
            .node(i)
            .replicas()
            .iter()
            .all(|r| r.quiescence().is_quiet())
    })
}

/// Waits until every shard is led by its preferred replica (the first in
/// the map: the node hands leadership there once the shard is stable) and
/// every replica is quiet.
async fn settle(cluster: &TestCluster, nodes: &[usize]) {
    let preferred_leads = || {
        let map = cluster.node(nodes[0]).map();
        map.meta.iter().chain(&map.shards).all(|shard| {
            let Some(first) = shard.replicas.first() else {
                return false;
            };
            nodes.iter().any(|&i| {
                cluster.node(i).replica(ShardId(shard.id)).is_some_and(|r| {
                    r.spec.replica.get() == first.replica_id && r.leader() == Some(r.spec.replica)
                })
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(30), preferred_leads).await,
        "every shard is led by its preferred replica"
    );
    assert!(
        eventually(Duration::from_secs(20), || all_quiet(cluster, nodes)).await,
        "every replica goes quiet once the cluster is idle"
    );
}

/// Every shard's term and leader, as node `i` sees them.
fn terms(cluster: &TestCluster, i: usize) -> BTreeMap<ShardId, (u64, Option<u64>)> {
    cluster
        .node(i)
        .replicas()
        .iter()
        .map(|r| {
            let m = r.metrics();
            (
                r.spec.shard,
                (m.current_term, m.current_leader.map(|l| l.get())),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_shards_go_quiet_and_wake_for_requests_without_an_election() {
    let cluster = TestCluster::start(spec(false)).await;
    let nodes = [0, 1, 2];
    settle(&cluster, &nodes).await;
    let before = terms(&cluster, 0);
    // Quiet for several election timeouts: nobody elects.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let awake: Vec<_> = nodes
        .iter()
        .flat_map(|&i| cluster.node(i).replicas())
        .filter(|r| !r.quiescence().is_quiet())
        .map(|r| (r.spec.shard, r.spec.replica, r.metrics().state))
        .collect();
    assert!(
        awake.is_empty(),
        "replicas stay quiet while idle: {awake:?} woke"
    );
    assert_eq!(terms(&cluster, 0), before, "no election while quiet");

    let client = cluster.client().await;
    for i in 0..20 {
        client.put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    for i in 0..20 {
        let kv = client.get(format!("k{i}")).await.unwrap().expect("written");
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    // The leaders that woke for the writes heartbeat until they go quiet
    // again; their followers never time out on them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        terms(&cluster, 0),
        before,
        "waking for writes and reads runs no election"
    );
    assert!(
        eventually(Duration::from_secs(20), || all_quiet(&cluster, &nodes)).await,
        "the shards go quiet again"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sent_to_a_quiet_follower_is_refused_and_runs_no_election() {
    let cluster = TestCluster::start(spec(false)).await;
    let nodes = [0, 1, 2];
    settle(&cluster, &nodes).await;
    let before = terms(&cluster, 0);
    let shard = ShardId(1);
    let leader = cluster.leader_of(shard).expect("shard 1 has a leader");
    let follower = (leader + 1) % 3;
    let replica = cluster.node(follower).replica(shard).expect("a replica");
    assert!(
        replica.read_index.wait().await.is_err(),
        "a follower does not serve a linearizable read"
    );
    assert!(replica.quiescence().is_quiet(), "the follower stays quiet");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(terms(&cluster, 0), before, "nobody elected");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_followers_elect_a_new_leader_when_their_leaders_node_stops() {
    let mut cluster = TestCluster::start(spec(false)).await;
    settle(&cluster, &[0, 1, 2]).await;
    let map = cluster.node(1).map();
    let led_by_first: Vec<ShardId> = map
        .shards
        .iter()
        .map(|s| ShardId(s.id))
        .filter(|s| cluster.leader_of(*s) == Some(0))
        .collect();
    // Four shards' leaders over three nodes, by placement.
    assert!(!led_by_first.is_empty(), "node 1 leads a data shard");
    cluster.stop(0).await;
    // Quiet followers do not time out on their own: the watch on the
    // leader's node wakes them.
    assert!(
        eventually(Duration::from_secs(15), || {
            led_by_first
                .iter()
                .all(|s| matches!(cluster.leader_of(*s), Some(1 | 2)))
        })
        .await,
        "every shard node 1 led elects a leader on the other nodes"
    );
    let client = cluster.client().await;
    for i in 0..20 {
        client.put(format!("after-{i}"), "v").await.unwrap();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_wakes_its_quiet_leader_instead_of_deposing_it() {
    let mut cluster = TestCluster::start(spec(true)).await;
    settle(&cluster, &[0, 1, 2]).await;
    let before = terms(&cluster, 1);
    // Shards node 3 does not lead: node 3 only follows them.
    let followed: Vec<ShardId> = before
        .keys()
        .copied()
        .filter(|s| matches!(cluster.leader_of(*s), Some(0 | 1)))
        .collect();
    assert!(!followed.is_empty());
    cluster.restart(2).await;
    // Longer than an election timeout after the restart.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = terms(&cluster, 1);
    for shard in followed {
        assert_eq!(
            after.get(&shard),
            before.get(&shard),
            "{shard}: the restarted follower did not depose its quiet leader"
        );
    }
    cluster.shutdown().await;
}
