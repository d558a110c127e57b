//! `atoll dev`: a complete local cluster of three islands in one process,
//! each node with its own RocksDB and port on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atoll_rocks::{RocksEngine, RocksOptions};

use crate::config::{InitialNode, NodeConfig};
use crate::node::{Node, NodeError};

/// The islands of the dev cluster.
pub const DEV_ISLANDS: [&str; 3] = ["island-a", "island-b", "island-c"];
/// The dev cluster's first port; atollctl's default endpoints point here.
pub const DEV_BASE_PORT: u16 = 7001;

/// Configs of a dev cluster: one node per island.
pub fn dev_configs(data_dir: &Path, base_port: u16, shards: u32) -> Vec<NodeConfig> {
    let initial: Vec<InitialNode> = DEV_ISLANDS
        .iter()
        .enumerate()
        .map(|(i, island)| InitialNode {
            id: i as u64 + 1,
            island: (*island).into(),
            address: format!("127.0.0.1:{}", base_port + i as u16),
            capacity: 100,
        })
        .collect();
    initial
        .iter()
        .map(|n| {
            let mut cfg = NodeConfig::default();
            cfg.node_id = n.id;
            cfg.island = n.island.clone();
            cfg.listen = n.address.parse().unwrap_or(cfg.listen);
            cfg.data_dir = data_dir.join(format!("node-{}", n.id));
            cfg.cluster.name = "atoll-dev".into();
            cfg.cluster.initial_shards = shards;
            cfg.cluster.initial_nodes = initial.clone();
            cfg
        })
        .collect()
}

/// Opens the node's RocksDB under `data_dir/db` and starts the node.
pub async fn start_rocks_node(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
    let db_dir: PathBuf = config.data_dir.join("db");
    std::fs::create_dir_all(&db_dir)
        .map_err(|e| atoll_storage::EngineError::Io(format!("{}: {e}", db_dir.display())))?;
    let options = RocksOptions {
        block_cache_bytes: config.storage.block_cache.0 as usize,
        write_buffer_bytes: config.storage.write_buffer.0 as usize,
        ..Default::default()
    };
    let engine = RocksEngine::open(&db_dir, &options)?;
    Node::start(config, Arc::new(engine)).await
}
