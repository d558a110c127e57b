//! Node configuration: a typed tree with defaults in code, human units
//! (`"150ms"`, `"1MiB"`), one `validate()`, and the precedence
//! defaults < file < `ATOLL_*` environment < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, for a node of `cluster.initial_nodes`: assigned
    /// once, never reused. A node that joins (`cluster.join`) leaves it
    /// unset (0): the cluster gives it one.
    pub node_id: u64,
    /// This node's island (failure domain).
    pub island: String,
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The address other nodes and clients use; defaults to `listen`.
    pub advertise: Option<String>,
    /// The node's data directory (RocksDB lives in `<data_dir>/db`).
    pub data_dir: PathBuf,
    /// This node's relative capacity weight, registered when it joins (a
    /// node of `cluster.initial_nodes` has its capacity there).
    pub capacity: u64,
    pub cluster: ClusterConfig,
    pub raft: RaftConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub testing: TestingConfig,
}

/// The cluster this node bootstraps or joins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub name: String,
    /// Data shards a new cluster starts with.
    pub initial_shards: u32,
    pub replication_factor: u32,
    /// Every node of a new cluster; all nodes must be given the same list.
    pub initial_nodes: Vec<InitialNode>,
    /// Addresses of nodes of a running cluster: a node started with an
    /// empty data dir joins through any of them (instead of
    /// `initial_nodes`). Later starts use the identity the join stored.
    pub join: Vec<String>,
    /// A node that has not answered the meta shard's leader for this long
    /// has its replicas re-created on other nodes (it stays in the
    /// cluster: if it comes back, it gets replicas again). The meta
    /// leader's setting counts.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// A move whose new replica has made no progress for this long (its
    /// learner's matched index, its membership, and the snapshot bytes
    /// its shard leader's node sends all unchanged) is given up while the
    /// new replica is not yet a voter; placement may start it again. A
    /// move still waiting shows why in `atollctl moves list`. The meta
    /// leader's setting counts.
    #[serde(with = "humantime_serde")]
    pub move_abort_after: Duration,
    /// Moves in progress at once in the whole cluster, and into one node
    /// (each copies a shard at `raft.snapshot_rate`). The meta leader's
    /// settings count, unless `atollctl placement limits` set others.
    pub max_moves: u32,
    pub max_moves_into_node: u32,
    /// A data shard whose data passes this size (RocksDB's estimate, on
    /// its largest replica) is split in two at the middle of its hash
    /// range. 0: never split by size. The meta leader's setting counts.
    pub split_bytes: ByteSize,
}

/// One member of `initial_nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialNode {
    pub id: u64,
    pub island: String,
    pub address: String,
    #[serde(default = "default_capacity")]
    pub capacity: u64,
}

fn default_capacity() -> u64 {
    100
}

/// Raft timing and log retention.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many applied entries, once the log since
    /// the last snapshot takes at least a quarter of the shard's bytes (so a
    /// large shard is not rewritten for a little log).
    pub snapshot_after_entries: u64,
    /// Entries kept behind the last snapshot for slow followers.
    pub keep_entries_after_snapshot: u64,
    /// Bytes per second this node sends to replicas that are catching up,
    /// over all its snapshots and the log entries it sends to learners (a
    /// move's new replica) ("0B" for no limit). A rate set in the map
    /// (`atollctl placement limits`) applies instead.
    pub snapshot_rate: ByteSize,
    /// Snapshots this node sends at once; more wait their turn.
    pub snapshot_sends: usize,
    /// A snapshot send that hands over no chunk for this long (waiting for
    /// `snapshot_rate` aside) is given up and tried again later. There is
    /// no deadline on the whole send.
    #[serde(with = "humantime_serde")]
    pub snapshot_stall_timeout: Duration,
    /// How long a write may wait for commit before the client is told the
    /// outcome is unknown.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Log entries a shard leader proposes at once; writes that arrive
    /// while these are in flight share the next entry. Default 1: each
    /// entry costs CPU on every replica, so fewer, larger entries are faster
    /// under load.
    pub max_proposals_in_flight: usize,
    /// A shard with no write or read for this long, every replica of which
    /// holds its whole log, goes quiet: no tick, no heartbeat, until
    /// something wakes it ("0s" never). See `server/raft/src/quiesce.rs`.
    #[serde(with = "humantime_serde")]
    pub quiesce_after: Duration,
}

/// Request limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_value_bytes: ByteSize,
    /// The bytes one read answer (a Scan, ScanAll or BatchGet page) holds:
    /// a page stops once its keys and values would pass it (it always
    /// holds one key) and tells the caller where to go on.
    pub read_page_bytes: ByteSize,
}

/// RocksDB tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub block_cache: ByteSize,
    /// Memtable size of each RocksDB column family.
    pub write_buffer: ByteSize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            island: "default".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            advertise: None,
            data_dir: PathBuf::from("atoll-data"),
            capacity: default_capacity(),
            cluster: ClusterConfig::default(),
            raft: RaftConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            testing: TestingConfig::default(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "atoll".into(),
            initial_shards: 8,
            replication_factor: 3,
            initial_nodes: Vec::new(),
            join: Vec::new(),
            dead_after: Duration::from_secs(300),
            move_abort_after: Duration::from_secs(600),
            max_moves: 4,
            max_moves_into_node: 1,
            split_bytes: ByteSize(512 << 20),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_after_entries: 20_000,
            keep_entries_after_snapshot: 5_000,
            snapshot_rate: ByteSize(64 << 20),
            snapshot_sends: 2,
            snapshot_stall_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_proposals_in_flight: 1,
            quiesce_after: Duration::from_secs(2),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: ByteSize(atoll_proto::limits::DEFAULT_MAX_VALUE_BYTES as u64),
            read_page_bytes: ByteSize(4 << 20),
        }
    }
}

/// Deliberately unsafe switches, for proving that the fault-injection
/// harness (`jepsen/`) catches the bugs they plant. Never set in production.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Report log appends durable before the WAL is fsynced.
    pub ack_before_fsync: bool,
    /// Serve linearizable reads from any replica without a ReadIndex round.
    pub stale_linearizable_reads: bool,
}

impl TestingConfig {
    /// Whether any unsafe switch is on.
    pub fn any(&self) -> bool {
        self.ack_before_fsync || self.stale_linearizable_reads
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let rocks = atoll_rocks::RocksOptions::default();
        Self {
            block_cache: ByteSize(rocks.block_cache_bytes as u64),
            write_buffer: ByteSize(rocks.write_buffer_bytes as u64),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies `ATOLL_NODE_ID`, `ATOLL_ISLAND`, `ATOLL_LISTEN`,
    /// `ATOLL_ADVERTISE`, `ATOLL_DATA_DIR`, `ATOLL_CAPACITY` and
    /// `ATOLL_JOIN` (comma-separated addresses) from `vars`.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let bad = |name: &str, e: &dyn std::fmt::Display| ConfigError::Env {
            name: name.into(),
            message: e.to_string(),
        };
        for (name, value) in vars {
            match name.as_str() {
                "ATOLL_NODE_ID" => self.node_id = value.parse().map_err(|e| bad(&name, &e))?,
                "ATOLL_ISLAND" => self.island = value,
                "ATOLL_LISTEN" => self.listen = value.parse().map_err(|e| bad(&name, &e))?,
                "ATOLL_ADVERTISE" => self.advertise = Some(value),
                "ATOLL_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "ATOLL_CAPACITY" => self.capacity = value.parse().map_err(|e| bad(&name, &e))?,
                "ATOLL_JOIN" => self.cluster.join = split_addresses(&value),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether this node joins a running cluster (`cluster.join`) rather
    /// than being one of `cluster.initial_nodes`.
    pub fn joins(&self) -> bool {
        !self.cluster.join.is_empty()
    }

    /// The address peers and clients use.
    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.island.is_empty() {
            return invalid("island must not be empty".into());
        }
        if self.cluster.dead_after < Duration::from_secs(1) {
            return invalid("cluster.dead_after must be at least 1s".into());
        }
        if self.cluster.move_abort_after < Duration::from_secs(1) {
            return invalid("cluster.move_abort_after must be at least 1s".into());
        }
        if self.cluster.max_moves == 0 || self.cluster.max_moves_into_node == 0 {
            return invalid(
                "cluster.max_moves and cluster.max_moves_into_node must be at least 1 \
                 (`atollctl placement pause` stops moves)"
                    .into(),
            );
        }
        if self.joins() {
            self.validate_join()?;
        } else {
            self.validate_initial_node()?;
        }
        self.raft.validate()?;
        // A value must fit in one gRPC message with its key and framing.
        let most = atoll_proto::limits::MAX_VALUE_BYTES_LIMIT as u64;
        if self.limits.max_value_bytes.0 == 0 || self.limits.max_value_bytes.0 > most {
            return invalid("limits.max_value_bytes must be between 1 byte and 8MiB".into());
        }
        if !(64 << 10..=most).contains(&self.limits.read_page_bytes.0) {
            return invalid("limits.read_page_bytes must be between 64KiB and 8MiB".into());
        }
        let write_buffer = self.storage.write_buffer.0;
        if !(1 << 20..=1 << 30).contains(&write_buffer) {
            return invalid("storage.write_buffer must be between 1MiB and 1GiB".into());
        }
        Ok(())
    }

    fn validate_initial_node(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return invalid(
                "node_id must be > 0 for a node of cluster.initial_nodes \
                 (a node joining a running cluster sets cluster.join instead)"
                    .into(),
            );
        }
        self.cluster.validate()?;
        if !self
            .cluster
            .initial_nodes
            .iter()
            .any(|n| n.id == self.node_id)
        {
            return invalid(format!(
                "node_id {} is not in cluster.initial_nodes",
                self.node_id
            ));
        }
        if let Some(me) = self
            .cluster
            .initial_nodes
            .iter()
            .find(|n| n.id == self.node_id)
        {
            if me.island != self.island {
                return invalid(format!(
                    "island {:?} differs from {:?} given for node {} in cluster.initial_nodes",
                    self.island, me.island, self.node_id
                ));
            }
        }
        Ok(())
    }

    fn validate_join(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id != 0 {
            return invalid(
                "node_id must be unset with cluster.join: the cluster gives a joining node its id"
                    .into(),
            );
        }
        if !self.cluster.initial_nodes.is_empty() {
            return invalid(
                "cluster.join and cluster.initial_nodes exclude each other: \
                 initial_nodes start a new cluster, join enters a running one"
                    .into(),
            );
        }
        if self.capacity == 0 {
            return invalid("capacity must be > 0".into());
        }
        if let Some(bad) = self.cluster.join.iter().find(|a| a.trim().is_empty()) {
            return invalid(format!("cluster.join has an empty address: {bad:?}"));
        }
        Ok(())
    }
}

/// `a:1, b:2` as `["a:1", "b:2"]`.
pub fn split_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.initial_shards == 0 || self.initial_shards > 4096 {
            return invalid("cluster.initial_shards must be between 1 and 4096".into());
        }
        if self.replication_factor == 0 {
            return invalid("cluster.replication_factor must be > 0".into());
        }

        if self.initial_nodes.is_empty() {
            return invalid("cluster.initial_nodes must list every node of the new cluster".into());
        }
        let mut ids: Vec<u64> = self.initial_nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.initial_nodes.len() {
            return invalid("cluster.initial_nodes has a duplicate id".into());
        }
        if self
            .initial_nodes
            .iter()
            .any(|n| n.id == 0 || n.capacity == 0 || n.island.is_empty())
        {
            return invalid(
                "cluster.initial_nodes: ids and capacities must be > 0, islands non-empty".into(),
            );
        }
        if (self.replication_factor as usize) > self.initial_nodes.len() {
            return invalid(format!(
                "cluster.replication_factor {} exceeds the {} initial nodes",
                self.replication_factor,
                self.initial_nodes.len()
            ));
        }
        Ok(())
    }
}

impl RaftConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat.is_zero() || self.election_timeout_min <= self.heartbeat * 3 {
            return Err(ConfigError::Invalid(
                "raft.election_timeout_min must be more than 3 heartbeats".into(),
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(ConfigError::Invalid(
                "raft.election_timeout_max must exceed election_timeout_min".into(),
            ));
        }
        if self.max_proposals_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "raft.max_proposals_in_flight must be at least 1".into(),
            ));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "raft.write_timeout must be > 0".into(),
            ));
        }
        if self.snapshot_sends == 0 {
            return Err(ConfigError::Invalid(
                "raft.snapshot_sends must be at least 1".into(),
            ));
        }
        if self.snapshot_stall_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "raft.snapshot_stall_timeout must be > 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> NodeConfig {
        let mut cfg = NodeConfig {
            node_id: 1,
            island: "a".into(),
            ..NodeConfig::default()
        };
        cfg.cluster.initial_nodes = (1..=3)
            .map(|i| InitialNode {
                id: i,
                island: ["a", "b", "c"][(i - 1) as usize].into(),
                address: format!("127.0.0.1:{}", 7000 + i),
                capacity: 100,
            })
            .collect();
        cfg
    }

    #[test]
    fn a_complete_config_validates() {
        three_nodes().validate().unwrap();
    }

    #[test]
    fn replication_factor_above_node_count_is_rejected() {
        let mut cfg = three_nodes();
        cfg.cluster.replication_factor = 5;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn a_write_buffer_out_of_range_is_rejected() {
        for bytes in [0, 512 << 10, 2 << 30] {
            let mut cfg = three_nodes();
            cfg.storage.write_buffer = ByteSize(bytes);
            assert!(cfg.validate().is_err(), "{bytes} bytes accepted");
        }
    }

    #[test]
    fn env_overrides_file() {
        let mut cfg = three_nodes();
        cfg.apply_env([
            ("ATOLL_NODE_ID".to_string(), "2".to_string()),
            ("ATOLL_ISLAND".into(), "b".into()),
        ])
        .unwrap();
        assert_eq!(cfg.node_id, 2);
        cfg.validate().unwrap();
        assert!(cfg
            .apply_env([("ATOLL_NODE_ID".to_string(), "x".to_string())])
            .is_err());
    }

    #[test]
    fn human_units_parse() {
        let cfg: NodeConfig = toml::from_str(
            r#"
            [raft]
            heartbeat = "100ms"
            election_timeout_min = "1s"
            election_timeout_max = "2s"
            [limits]
            max_value_bytes = "2MiB"
            [storage]
            write_buffer = "16MiB"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.raft.heartbeat, Duration::from_millis(100));
        assert_eq!(cfg.limits.max_value_bytes.0, 2 << 20);
        assert_eq!(cfg.storage.write_buffer.0, 16 << 20);
    }

    /// A value or a read page must fit in one gRPC message (16 MiB): a
    /// larger limit could never be used, so it is refused at start.
    #[test]
    fn limits_that_no_message_could_carry_are_refused() {
        let mut cfg = NodeConfig {
            node_id: 1,
            ..NodeConfig::default()
        };
        cfg.cluster.initial_nodes = vec![crate::config::InitialNode {
            id: 1,
            island: cfg.island.clone(),
            address: "127.0.0.1:7001".into(),
            capacity: 1,
        }];
        cfg.cluster.replication_factor = 1;
        cfg.validate().unwrap();
        cfg.limits.max_value_bytes = ByteSize(32 << 20);
        assert!(cfg.validate().is_err(), "a 32 MiB value limit");
        cfg.limits.max_value_bytes = ByteSize(8 << 20);
        cfg.validate().unwrap();
        cfg.limits.read_page_bytes = ByteSize(16 << 20);
        assert!(cfg.validate().is_err(), "a 16 MiB read page");
    }

    #[test]
    fn a_joining_node_names_no_id_and_no_initial_nodes() {
        let mut cfg = NodeConfig::default();
        assert!(cfg.validate().is_err(), "neither initial_nodes nor join");
        cfg.apply_env([("ATOLL_JOIN".to_string(), " a:1, b:2 ,".to_string())])
            .unwrap();
        assert_eq!(cfg.cluster.join, ["a:1", "b:2"]);
        cfg.validate().unwrap();
        let with_id = NodeConfig {
            node_id: 4,
            ..cfg.clone()
        };
        assert!(with_id.validate().is_err(), "the cluster gives the id");
        let both = three_nodes();
        let mut both = NodeConfig { node_id: 0, ..both };
        both.cluster.join = cfg.cluster.join.clone();
        assert!(both.validate().is_err(), "join and initial_nodes");
        let no_capacity = NodeConfig { capacity: 0, ..cfg };
        assert!(no_capacity.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<NodeConfig>("nod_id = 3").is_err());
    }
}
