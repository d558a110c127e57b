//! A new node enters a running cluster (docs/design/elastic.md, "Joining"):
//! it asks any node of `cluster.join` for the map, registers through it
//! (the request is forwarded to the meta shard's leader, which gives the
//! next node id), waits for a map that holds it, and stores its identity.
//!
//! Crash points: the join token is stored, synced, before the first
//! request, so a node that crashes before its identity is written joins
//! again with the same token and gets the same id, never a second one.
//! The identity is written last; once it is, later starts use it and ask
//! nobody.

use std::time::Duration;

use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::{ClusterMap, GetClusterMapRequest, JoinClusterRequest};
use atoll_proto::ReplicaId;
use atoll_raft::state_machine::{read_node_map, store_node_map};
use atoll_storage::keys::{apply_tag, tagged_key};
use atoll_storage::{Cf, Engine, EngineError, WriteBatch};
use tonic::transport::Channel;

use crate::config::NodeConfig;
use crate::identity::{self, Identity};

/// How long a joining node keeps trying the addresses it was given.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// The deadline of one request to one of them.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the cluster refused the join: {0}")]
    Refused(String),
    #[error("no node of cluster.join ({addresses}) let this node join within {patience:?}; last error: {last}")]
    Unreachable {
        addresses: String,
        patience: Duration,
        last: String,
    },
    #[error(
        "cluster.join leads to cluster {found:?}, but this node is configured for cluster {configured:?}"
    )]
    WrongCluster { found: String, configured: String },
    #[error(
        "this data directory belongs to cluster id {stored:#018x}, but the cluster at cluster.join has id {found:#018x}"
    )]
    OtherCluster { stored: u64, found: u64 },
    #[error(transparent)]
    Storage(#[from] EngineError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

/// The identity and map of a node that joins through `config.cluster.join`:
/// the stored ones on a restart, otherwise those of a new join.
pub async fn enter(
    config: &NodeConfig,
    engine: &dyn Engine,
) -> Result<(Identity, ClusterMap), JoinError> {
    if let Some(identity) = identity::read(engine)? {
        let map = match read_node_map(engine)? {
            Some(map) => map,
            // The identity is written after the map, so only a data dir
            // of a node of `initial_nodes` can lack it: fetch it.
            None => newest_map(config, 0).await?,
        };
        if map.cluster_id != identity.cluster_id {
            return Err(JoinError::OtherCluster {
                stored: identity.cluster_id,
                found: map.cluster_id,
            });
        }
        return Ok((identity, map));
    }
    let token = join_token(engine)?;
    let (node_id, version) = register(config, token).await?;
    let map = newest_map(config, version).await?;
    let identity = Identity {
        cluster_name: map.cluster_name.clone(),
        cluster_id: map.cluster_id,
        node_id,
    };
    store_node_map(engine, &map)?;
    identity::store_joined(engine, &identity, &join_token_key())?;
    tracing::info!(node = node_id, cluster = %map.cluster_name, map_version = map.map_version, "joined the cluster");
    Ok((identity, map))
}

fn join_token_key() -> Vec<u8> {
    tagged_key(ReplicaId(0), apply_tag::JOIN_TOKEN, &[])
}

/// The token this data dir joins with: stored, synced, before first use.
fn join_token(engine: &dyn Engine) -> Result<u64, EngineError> {
    if let Some(bytes) = engine.get(Cf::ApplyState, &join_token_key())? {
        let raw: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| EngineError::Corruption(format!("join token of {} bytes", bytes.len())))?;
        return Ok(u64::from_be_bytes(raw));
    }
    // Never 0, which marks the nodes of the initial layout.
    let token = rand::random::<u64>().max(1);
    let mut batch = WriteBatch::new();
    batch.put(
        Cf::ApplyState,
        join_token_key(),
        token.to_be_bytes().to_vec(),
    );
    engine.write(batch, true)?;
    Ok(token)
}

async fn client(address: &str, timeout: Duration) -> Result<ClusterClient<Channel>, String> {
    let endpoint = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{address}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    Ok(ClusterClient::new(channel))
}

/// Tries `attempt` on every address of `cluster.join` in turn, pausing
/// between rounds, until one succeeds, one fails for good, or
/// [`JOIN_PATIENCE`] has passed.
async fn with_any_address<T, F, Fut>(config: &NodeConfig, mut attempt: F) -> Result<T, JoinError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut last = String::from("no address tried");
    loop {
        for address in &config.cluster.join {
            match attempt(address.clone()).await {
                Ok(value) => return Ok(value),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    tracing::debug!(%address, %why, "join attempt failed");
                    last = format!("{address}: {why}");
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::Unreachable {
                addresses: config.cluster.join.join(","),
                patience: JOIN_PATIENCE,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How one attempt on one address ended, when it did not succeed.
enum Attempt {
    /// Worth trying again, there or elsewhere.
    Retry(String),
    Fatal(JoinError),
}

/// A client of the node at `address`, and the map it has.
async fn map_at(address: &str) -> Result<(ClusterClient<Channel>, ClusterMap), Attempt> {
    let mut client = client(address, CALL_TIMEOUT)
        .await
        .map_err(Attempt::Retry)?;
    let map = map_of(&mut client).await.map_err(Attempt::Retry)?;
    Ok((client, map))
}

async fn map_of(client: &mut ClusterClient<Channel>) -> Result<ClusterMap, String> {
    client
        .get_cluster_map(GetClusterMapRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .map
        .ok_or_else(|| "answered without a map".into())
}

/// The map the node at `address` has, asked with `timeout`.
pub(crate) async fn map_at_within(address: &str, timeout: Duration) -> Result<ClusterMap, String> {
    map_of(&mut client(address, timeout).await?).await
}

/// Registers this node; returns its id and the map version that holds it.
async fn register(config: &NodeConfig, token: u64) -> Result<(u64, u64), JoinError> {
    with_any_address(config, |address| async move {
        let (mut client, map) = map_at(&address).await?;
        if map.cluster_name != config.cluster.name {
            return Err(Attempt::Fatal(JoinError::WrongCluster {
                found: map.cluster_name,
                configured: config.cluster.name.clone(),
            }));
        }
        let request = JoinClusterRequest {
            island: config.island.clone(),
            address: config.advertise_address(),
            capacity: config.capacity,
            token,
        };
        match client.join_cluster(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                Ok((answer.node_id, answer.map_version))
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition && refused(&status) => {
                Err(Attempt::Fatal(JoinError::Refused(
                    status.message().to_string(),
                )))
            }
            Err(status) => Err(Attempt::Retry(status.message().to_string())),
        }
    })
    .await
}

/// Whether `status` is the cluster refusing a change (not a leader moving).
fn refused(status: &tonic::Status) -> bool {
    use prost::Message;
    atoll_proto::v1::ErrorDetail::decode(status.details())
        .is_ok_and(|d| d.code == atoll_proto::v1::ErrorCode::Refused as i32)
}

/// The newest map the join addresses have, once one has at least
/// `version`.
async fn newest_map(config: &NodeConfig, version: u64) -> Result<ClusterMap, JoinError> {
    with_any_address(config, |address| async move {
        let (_, map) = map_at(&address).await?;
        if map.map_version < version {
            return Err(Attempt::Retry(format!(
                "has map version {}, waiting for {version}",
                map.map_version
            )));
        }
        Ok(map)
    })
    .await
}
