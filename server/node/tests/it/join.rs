//! Joining a running cluster and leaving it for good
//! (docs/design/elastic.md, "Joining"): a new node gets a fresh id from the
//! meta shard, registers its island and capacity, follows the map without
//! a meta replica, and keeps its id across restarts; a removed node is
//! refused by its peers and cannot start again.

use std::time::Duration;

use atoll_client::{Error, NodeState};
use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::raft_client::RaftClient;
use atoll_proto::v1::{RaftCall, SetNodeCapacityRequest};
use atoll_proto::{NodeId, ShardId};
use atoll_raft::meta_command::Lifecycle;
use atoll_raft::network::FROM_NODE_HEADER;
use atoll_server::dev::start_rocks_node;
use atoll_server::join::JoinError;
use atoll_server::node::NodeError;

use crate::harness::{eventually, Spec, TestCluster};

const SETTLE: Duration = Duration::from_secs(20);

fn node_state(cluster: &TestCluster, observer: usize, node: u64) -> Option<(Lifecycle, u64)> {
    let map = cluster.node(observer).map();
    map.node(NodeId(node))
        .map(|n| (Lifecycle::of(n), n.capacity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_gets_a_fresh_id_follows_the_map_and_keeps_its_id() {
    let mut cluster = TestCluster::start(Spec {
        rocks: true,
        ..Spec::default()
    })
    .await;
    // This test follows the map's versions: no moves meanwhile.
    cluster.pause_placement().await;
    let joined = cluster.join("d", 200).await;
    let id = cluster.node(joined).id;
    assert_eq!(id, NodeId(4), "the first id above the initial nodes'");
    assert!(
        cluster.node(joined).replica(ShardId::META).is_none(),
        "the test needs a node without a meta replica"
    );
    // It asks to be up by itself, and every node learns it.
    assert!(
        eventually(SETTLE, || (0..=joined)
            .all(|i| node_state(&cluster, i, 4) == Some((Lifecycle::Up, 200))))
        .await,
        "node 4 is up with capacity 200 in every node's map"
    );
    let map = cluster.node(0).map();
    let joined_entry = map.node(id).unwrap();
    assert_eq!(
        (joined_entry.island.as_str(), joined_entry.address.clone()),
        ("d", cluster.configs[joined].listen.to_string())
    );

    // A change sent to the node without a meta replica is forwarded to
    // the meta leader, and the change reaches that node's map by its watch.
    let mut admin = ClusterClient::connect(format!("http://{}", cluster.configs[joined].listen))
        .await
        .unwrap();
    let version = admin
        .set_node_capacity(SetNodeCapacityRequest {
            node_id: 4,
            capacity: 300,
        })
        .await
        .unwrap()
        .into_inner()
        .map_version;
    assert!(
        eventually(SETTLE, || cluster.node(joined).map().map_version >= version).await,
        "the joined node follows the map to version {version}"
    );
    assert_eq!(node_state(&cluster, joined, 4), Some((Lifecycle::Up, 300)));

    // A restart keeps the id (no second registration) and starts from the
    // map the node last followed.
    let nodes_before = cluster.node(0).map().nodes.len();
    cluster.restart(joined).await;
    assert_eq!(cluster.node(joined).id, id);
    assert!(cluster.node(joined).map().map_version >= version);
    assert_eq!(cluster.node(0).map().nodes.len(), nodes_before);

    // Refused changes say why and change nothing. The meta leader records
    // each node's data directory incarnation when it first hears from it,
    // a map change of its own: those come first.
    assert!(
        eventually(SETTLE, || (cluster.node(0).map().nodes.iter())
            .all(|n| n.incarnation != 0))
        .await,
        "every node's incarnation is recorded"
    );
    let client = cluster.client().await;
    let before = cluster.node(0).map().map_version;
    let refused = client.set_node_capacity(4, 0).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    let refused = client.set_node_state(4, NodeState::Removed, false).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    let refused = client.set_node_capacity(99, 5).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    assert_eq!(cluster.node(0).map().map_version, before);

    // Removed for good: the node learns it, and may not start again.
    client
        .set_node_state(4, NodeState::Removed, true)
        .await
        .unwrap();
    assert!(
        eventually(SETTLE, || cluster.node(joined).lifecycle()
            == Some(Lifecycle::Removed))
        .await,
        "the removed node learns it is removed"
    );
    cluster.stop(joined).await;
    // The stopped node's RocksDB closes once its tasks let go of it.
    let mut again = start_rocks_node(cluster.configs[joined].clone()).await;
    for _ in 0..100 {
        match &again {
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                again = start_rocks_node(cluster.configs[joined].clone()).await;
            }
            _ => break,
        }
    }
    assert!(
        matches!(again, Err(NodeError::Removed { node, .. }) if node == id),
        "a removed node is refused at start: {again:?}"
    );
    // Its id is never given again.
    let next = cluster.join("d", 100).await;
    assert_eq!(cluster.node(next).id, NodeId(5));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_node_is_refused_by_its_peers_and_the_cluster_goes_on() {
    let cluster = TestCluster::start(Spec::default()).await;
    let client = cluster.client().await;
    client.put("before", "1").await.unwrap();
    client
        .set_node_state(3, NodeState::Removed, true)
        .await
        .unwrap();
    assert!(
        eventually(SETTLE, || (0..3).all(|i| node_state(&cluster, i, 3)
            .map(|s| s.0)
            == Some(Lifecycle::Removed)))
        .await,
        "every node learns that node 3 is removed, node 3 too"
    );

    // A Raft stream that names node 3 is refused at once.
    let mut raft = RaftClient::connect(format!("http://{}", cluster.configs[0].listen))
        .await
        .unwrap();
    let mut request = tonic::Request::new(futures::stream::iter(Vec::<RaftCall>::new()));
    request
        .metadata_mut()
        .insert(FROM_NODE_HEADER, "3".parse().unwrap());
    let refused = raft.exchange(request).await.map(|_| ());
    let status = refused.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("removed"), "{status:?}");

    // The two nodes left keep a quorum of every shard: writes and reads go on.
    client.put("after", "2").await.unwrap();
    assert_eq!(client.get("before").await.unwrap().unwrap().value, b"1");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_configured_for_another_cluster_does_not_join() {
    let cluster = TestCluster::start(Spec::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = atoll_server::NodeConfig {
        island: "d".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.cluster.name = "elsewhere".into();
    config.cluster.join = vec![cluster.configs[0].listen.to_string()];
    let joined = start_rocks_node(config).await;
    assert!(
        matches!(joined, Err(NodeError::Join(JoinError::WrongCluster { .. }))),
        "{joined:?}"
    );
    assert_eq!(cluster.node(0).map().nodes.len(), 3, "nothing registered");
    cluster.shutdown().await;
}
