//! An in-process cluster: real nodes with real gRPC on 127.0.0.1, on
//! RocksDB in temp dirs (or the in-memory engine), which tests can stop,
//! restart and cut off from each other.

use std::sync::Arc;
use std::time::Duration;

use atoll_client::{Client, ClientOptions};
use atoll_proto::{NodeId, ShardId};
use atoll_server::config::InitialNode;
use atoll_server::dev::start_rocks_node;
use atoll_server::{server, Node, NodeConfig};
use atoll_storage::MemEngine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub node: Arc<Node>,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

pub struct TestCluster {
    pub configs: Vec<NodeConfig>,
    pub nodes: Vec<Option<Running>>,
    pub rocks: bool,
    _dir: tempfile::TempDir,
}

/// Shape of a test cluster.
pub struct Spec {
    /// Island of each node (node ids are 1, 2, ...).
    pub islands: Vec<&'static str>,
    pub shards: u32,
    /// RocksDB in a temp dir (true) or the in-memory engine.
    pub rocks: bool,
    pub snapshot_after_entries: u64,
    pub keep_entries_after_snapshot: u64,
    /// The unsafe testing switch that serves linearizable reads anywhere.
    pub stale_linearizable_reads: bool,
    /// `raft.snapshot_rate` in bytes per second, if not the default.
    pub snapshot_rate: Option<u64>,
    /// `cluster.dead_after`, if not the default.
    pub dead_after: Option<Duration>,
    /// `cluster.split_bytes`; none: no split by size.
    pub split_bytes: Option<u64>,
    /// `raft.quiesce_after`, if not the default.
    pub quiesce_after: Option<Duration>,
    /// `cluster.move_abort_after`, if not the default.
    pub move_abort_after: Option<Duration>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            islands: vec!["a", "b", "c"],
            shards: 4,
            rocks: false,
            snapshot_after_entries: 20_000,
            keep_entries_after_snapshot: 5_000,
            stale_linearizable_reads: false,
            snapshot_rate: None,
            dead_after: None,
            split_bytes: None,
            quiesce_after: None,
            move_abort_after: None,
        }
    }
}

impl TestCluster {
    pub async fn start(spec: Spec) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut listeners = Vec::new();
        for _ in &spec.islands {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let initial: Vec<InitialNode> = spec
            .islands
            .iter()
            .zip(&listeners)
            .enumerate()
            .map(|(i, (island, l))| InitialNode {
                id: i as u64 + 1,
                island: (*island).into(),
                address: l.local_addr().expect("addr").to_string(),
                capacity: 100,
            })
            .collect();
        let configs: Vec<NodeConfig> = initial
            .iter()
            .map(|n| {
                let mut cfg = NodeConfig {
                    node_id: n.id,
                    island: n.island.clone(),
                    listen: n.address.parse().expect("address"),
                    data_dir: dir.path().join(format!("node-{}", n.id)),
                    ..NodeConfig::default()
                };
                cfg.cluster.initial_shards = spec.shards;
                cfg.cluster.initial_nodes = initial.clone();
                cfg.raft.heartbeat = Duration::from_millis(100);
                cfg.raft.election_timeout_min = Duration::from_millis(800);
                cfg.raft.election_timeout_max = Duration::from_millis(1600);
                cfg.raft.snapshot_after_entries = spec.snapshot_after_entries;
                cfg.raft.keep_entries_after_snapshot = spec.keep_entries_after_snapshot;
                cfg.testing.stale_linearizable_reads = spec.stale_linearizable_reads;
                if let Some(rate) = spec.snapshot_rate {
                    cfg.raft.snapshot_rate = atoll_server::size::ByteSize(rate);
                }
                if let Some(after) = spec.dead_after {
                    cfg.cluster.dead_after = after;
                }
                if let Some(after) = spec.quiesce_after {
                    cfg.raft.quiesce_after = after;
                }
                if let Some(after) = spec.move_abort_after {
                    cfg.cluster.move_abort_after = after;
                }
                cfg.cluster.split_bytes =
                    atoll_server::size::ByteSize(spec.split_bytes.unwrap_or(0));
                cfg
            })
            .collect();
        let mut cluster = TestCluster {
            configs,
            nodes: Vec::new(),
            rocks: spec.rocks,
            _dir: dir,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let running = cluster.launch(i, listener).await;
            cluster.nodes.push(Some(running));
        }
        cluster.wait_for_leaders().await;
        cluster
    }

    async fn launch(&self, i: usize, listener: TcpListener) -> Running {
        let config = self.configs[i].clone();
        let node = if self.rocks {
            // A stopped node's engine closes once openraft's tasks have let
            // go of it, which can take a moment after shutdown.
            let mut attempts = 0;
            loop {
                match start_rocks_node(config.clone()).await {
                    Ok(node) => break node,
                    Err(e) if attempts < 100 && e.to_string().contains("lock") => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("start node: {e}"),
                }
            }
        } else {
            Node::start(config, Arc::new(MemEngine::new()))
                .await
                .expect("start node")
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        Running {
            node,
            stop,
            serving,
        }
    }

    /// Starts a new node that joins the running cluster through node 0,
    /// on `island` with `capacity`; returns its index. Its config leaves
    /// `node_id` unset: the cluster gives it one.
    pub async fn join(&mut self, island: &str, capacity: u64) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let i = self.configs.len();
        let mut config = NodeConfig {
            node_id: 0,
            island: island.into(),
            listen: listener.local_addr().expect("addr"),
            data_dir: self._dir.path().join(format!("joined-{i}")),
            capacity,
            raft: self.configs[0].raft.clone(),
            ..NodeConfig::default()
        };
        config.cluster.name = self.configs[0].cluster.name.clone();
        config.cluster.dead_after = self.configs[0].cluster.dead_after;
        config.cluster.split_bytes = self.configs[0].cluster.split_bytes;
        config.cluster.join = vec![self.configs[0].listen.to_string()];
        self.configs.push(config);
        let running = self.launch(i, listener).await;
        self.nodes.push(Some(running));
        i
    }

    pub fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i].as_ref().expect("node is running").node
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.configs[i].data_dir.clone()
    }

    pub fn addresses(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.listen.to_string()).collect()
    }

    pub async fn client(&self) -> Client {
        let options = ClientOptions {
            timeout: Duration::from_secs(20),
            ..Default::default()
        };
        Client::connect_with(self.addresses(), options)
            .await
            .expect("client connects")
    }

    /// Stops the controller from starting moves of its own (an operator's
    /// still run).
    pub async fn pause_placement(&self) {
        let client = self.client().await;
        client
            .set_placement_paused(true)
            .await
            .expect("pause placement");
    }

    /// Stops node `i` (its replicas shut down, its port closes).
    pub async fn stop(&mut self, i: usize) {
        if let Some(running) = self.nodes[i].take() {
            let _ = running.stop.send(());
            running.node.shutdown().await;
            let _ = running.serving.await;
        }
    }

    /// Starts node `i` again on the same port and data dir (RocksDB only).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.rocks, "a restart keeps data only on RocksDB");
        self.stop(i).await;
        let listener = TcpListener::bind(self.configs[i].listen)
            .await
            .expect("rebind");
        let running = self.launch(i, listener).await;
        self.nodes[i] = Some(running);
    }

    /// The id of node `i` (a joined node's comes from the cluster).
    fn id_of(&self, i: usize) -> NodeId {
        match &self.nodes[i] {
            Some(running) => running.node.id,
            None => NodeId(self.configs[i].node_id),
        }
    }

    /// Cuts Raft traffic between node `i` and every other node, both ways.
    pub fn isolate(&self, i: usize) {
        let id = self.id_of(i);
        let ids: Vec<NodeId> = (0..self.nodes.len()).map(|j| self.id_of(j)).collect();
        for (j, running) in self.nodes.iter().enumerate() {
            let Some(running) = running else { continue };
            if j == i {
                for other in ids.iter().filter(|other| **other != id) {
                    running.node.faults.cut(*other);
                }
            } else {
                running.node.faults.cut(id);
            }
        }
    }

    pub fn heal(&self) {
        let ids: Vec<NodeId> = (0..self.nodes.len()).map(|j| self.id_of(j)).collect();
        for running in self.nodes.iter().flatten() {
            for id in &ids {
                running.node.faults.heal(*id);
            }
        }
    }

    pub async fn wait_for_leaders(&self) {
        for running in self.nodes.iter().flatten() {
            assert!(
                running.node.wait_for_leaders(Duration::from_secs(30)).await,
                "every shard elects a leader"
            );
        }
    }

    /// The running node that leads `shard`, by index.
    pub fn leader_of(&self, shard: ShardId) -> Option<usize> {
        self.nodes.iter().position(|r| {
            r.as_ref()
                .and_then(|r| r.node.replica(shard))
                .is_some_and(|rep| rep.leader() == Some(rep.spec.replica))
        })
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `key` reads as absent at `consistency`: a key with a TTL
/// does once the leader's sweeper has moved the log clock past it (about
/// 500 ms late, docs/design/ttl-and-clocks.md).
pub async fn wait_until_absent(
    client: &Client,
    key: &[u8],
    consistency: atoll_client::Consistency,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get_with(key, consistency).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} still reads as present 10 s later",
            String::from_utf8_lossy(key)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
