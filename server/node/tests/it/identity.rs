//! A data directory keeps the identity of its first start: a restart with
//! another cluster layout or node id is refused with a clear error, and
//! writes nothing.

use std::time::Duration;

use atoll_server::config::InitialNode;
use atoll_server::dev::start_rocks_node;
use atoll_server::node::NodeError;
use atoll_server::{Node, NodeConfig};

fn config(dir: &std::path::Path, node_id: u64, shards: u32) -> NodeConfig {
    let mut cfg = NodeConfig {
        node_id,
        island: format!("island-{node_id}"),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        ..NodeConfig::default()
    };
    cfg.cluster.initial_shards = shards;
    cfg.cluster.initial_nodes = (1..=3)
        .map(|id| InitialNode {
            id,
            island: format!("island-{id}"),
            address: format!("127.0.0.1:{}", 1 + id),
            capacity: 100,
        })
        .collect();
    cfg
}

async fn start_and_close(cfg: NodeConfig) -> Result<(), NodeError> {
    let node = start_rocks_node(cfg).await?;
    assert!(Node::close(node, Duration::from_secs(10)).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_started_with_another_layout_or_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    start_and_close(config(dir.path(), 1, 4)).await.unwrap();
    // The same configuration starts again.
    start_and_close(config(dir.path(), 1, 4)).await.unwrap();

    let other_shards = start_and_close(config(dir.path(), 1, 8)).await;
    assert!(
        matches!(other_shards, Err(NodeError::Identity(_))),
        "another initial_shards is refused: {other_shards:?}"
    );
    let other_id = start_and_close(config(dir.path(), 2, 4)).await;
    assert!(
        matches!(other_id, Err(NodeError::Identity(_))),
        "another node id is refused: {other_id:?}"
    );
    let mut renamed = config(dir.path(), 1, 4);
    renamed.cluster.name = "elsewhere".into();
    let renamed = start_and_close(renamed).await;
    assert!(
        matches!(renamed, Err(NodeError::Identity(_))),
        "{renamed:?}"
    );
    let message = other_id.unwrap_err().to_string();
    assert!(message.contains("data directory"), "{message}");

    // Moving a node to another address is allowed.
    let mut moved = config(dir.path(), 1, 4);
    moved.cluster.initial_nodes[0].address = "127.0.0.1:9".into();
    start_and_close(moved).await.unwrap();
}
