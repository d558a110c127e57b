//! The operations a workload issues, behind one trait, with an
//! implementation for Atoll and one for etcd, so that both targets run the
//! same workload code.
//!
//! Both implementations keep the targets' default guarantees: linearizable
//! reads, and writes acknowledged only once they are fsynced on a quorum.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use atoll_client::{BatchOp, Expect};
use atoll_proto::v1::ReplicaRole;
use etcd_client::{Compare, CompareOp, ConnectOptions, Txn, TxnOp};

/// What a compare-and-swap did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key held the expected value and now holds the new one.
    Swapped,
    /// The key held something else; nothing was written.
    Mismatch,
}

/// A key-value store under test. Cheap to clone: each client task gets a
/// clone of its own.
pub trait Store: Clone + Send + Sync + 'static {
    /// The current value of `key` (linearizable), `None` if absent.
    fn get(&self, key: &[u8]) -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send;

    /// Stores `value` under `key` (durable).
    fn put(&self, key: &[u8], value: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Sets `key` to `new` if it holds `expected` (`None`: if absent).
    fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> impl Future<Output = anyhow::Result<CasOutcome>> + Send;

    /// Stores every pair atomically. The keys share a hash tag, so that
    /// Atoll can apply them in one shard.
    fn batch_put(
        &self,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The target's own counters of how it batched work, where it has
    /// them (Atoll does, etcd does not).
    fn counters(&self) -> impl Future<Output = Option<Counters>> + Send;

    /// Stores every pair, for preloading: the keys may lie anywhere and the
    /// whole need not be atomic. At most [`LOAD_CHUNK`] pairs per call.
    fn load(
        &self,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Server counters summed over a cluster, since its nodes started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Log entries proposed for writes.
    pub entries: u64,
    /// The writes those entries carried.
    pub writes: u64,
    /// WAL syncs.
    pub syncs: u64,
    /// Log appends those syncs made durable.
    pub synced_appends: u64,
    /// Time spent in WAL syncs, microseconds.
    pub sync_micros: u64,
    /// WAL syncs slower than 100 ms.
    pub slow_syncs: u64,
}

impl Counters {
    /// What happened between `self` and the later `after`.
    pub fn until(self, after: Counters) -> Counters {
        Counters {
            entries: after.entries.saturating_sub(self.entries),
            writes: after.writes.saturating_sub(self.writes),
            syncs: after.syncs.saturating_sub(self.syncs),
            synced_appends: after.synced_appends.saturating_sub(self.synced_appends),
            sync_micros: after.sync_micros.saturating_sub(self.sync_micros),
            slow_syncs: after.slow_syncs.saturating_sub(self.slow_syncs),
        }
    }
}

/// Most pairs per [`Store::load`] call: under etcd's default limit of 128
/// operations per transaction.
pub const LOAD_CHUNK: usize = 100;

/// Atoll through its Rust client: requests go straight to each shard's
/// leader.
#[derive(Clone, Debug)]
pub struct AtollStore {
    client: atoll_client::Client,
}

impl AtollStore {
    /// Whether every shard is led by its preferred replica (the first of
    /// its replicas in the map), where the node's leader balancing puts it.
    pub async fn leaders_settled(&self) -> anyhow::Result<bool> {
        let status = self.client.cluster_status().await?;
        let map = status.map.context("the status has no cluster map")?;
        let mut leaders = std::collections::HashMap::new();
        for node in status.nodes.iter().filter_map(|n| n.status.as_ref()) {
            for replica in &node.replicas {
                if replica.role == ReplicaRole::Leader as i32 {
                    leaders.insert(replica.shard_id, replica.replica_id);
                }
            }
        }
        Ok(map.shards.iter().all(|shard| {
            let preferred = shard.replicas.first().map(|r| r.replica_id);
            preferred.is_some() && leaders.get(&shard.id).copied() == preferred
        }))
    }

    /// Wraps a connected client.
    pub fn new(client: atoll_client::Client) -> Self {
        Self { client }
    }
}

impl Store for AtollStore {
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.client.get(key).await?.map(|kv| kv.value))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.client.put(key, value).await?;
        Ok(())
    }

    async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> anyhow::Result<CasOutcome> {
        let expect = match expected {
            Some(value) => Expect::Value(value.to_vec()),
            None => Expect::Version(0),
        };
        match self
            .client
            .compare_and_swap(key, expect, Some(new.to_vec()))
            .await
        {
            Ok(_) => Ok(CasOutcome::Swapped),
            Err(atoll_client::Error::CasFailed { .. }) => Ok(CasOutcome::Mismatch),
            Err(e) => Err(e.into()),
        }
    }

    async fn batch_put(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
        let ops = pairs
            .into_iter()
            .map(|(key, value)| BatchOp::put(key, value))
            .collect();
        self.client.batch(ops).await?;
        Ok(())
    }

    async fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
        self.client.put_many(pairs).await?;
        Ok(())
    }

    async fn counters(&self) -> Option<Counters> {
        let status = self.client.cluster_status().await.ok()?;
        let mut sum = Counters::default();
        for node in status.nodes.iter().filter_map(|n| n.status.as_ref()) {
            sum.syncs += node.wal_syncs;
            sum.synced_appends += node.wal_synced_appends;
            sum.sync_micros += node.wal_sync_micros;
            sum.slow_syncs += node.wal_slow_syncs;
            for replica in &node.replicas {
                sum.entries += replica.proposed_entries;
                sum.writes += replica.proposed_writes;
            }
        }
        Some(sum)
    }
}

/// etcd through `etcd-client`, connected to every member (requests are
/// balanced over them; members forward writes to the leader).
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd_client::Client,
}

impl EtcdStore {
    /// Connects to the members at `addresses` (`host:port`).
    pub async fn connect(addresses: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(2));
        let endpoints: Vec<String> = addresses.iter().map(|a| format!("http://{a}")).collect();
        let client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .context("connecting to etcd")?;
        Ok(Self { client })
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let resp = self.client.clone().get(key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.client.clone().put(key, value, None).await?;
        Ok(())
    }

    async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> anyhow::Result<CasOutcome> {
        let compare = match expected {
            Some(value) => Compare::value(key, CompareOp::Equal, value),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, new, None)]);
        let resp = self.client.clone().txn(txn).await?;
        Ok(if resp.succeeded() {
            CasOutcome::Swapped
        } else {
            CasOutcome::Mismatch
        })
    }

    async fn batch_put(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
        let ops: Vec<TxnOp> = pairs
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        self.client.clone().txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }

    async fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<()> {
        self.batch_put(pairs).await
    }

    async fn counters(&self) -> Option<Counters> {
        None
    }
}
