//! The sending side of Raft traffic: one cached gRPC channel per peer node,
//! shared by every shard; each message names its shard and target replica.
//! Snapshots stream in crc32-checked chunks.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atoll_proto::v1::raft_client::RaftClient;
use atoll_proto::v1::{RaftMessage, SnapshotChunk};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint};

use crate::types::{
    AppendEntriesRequest, AppendEntriesResponse, EntryPayload, Fatal, ReplicaNode, Snapshot,
    SnapshotData, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, TypeConfig,
    Vote, VoteRequest, VoteResponse,
};

/// Size of one snapshot chunk on the wire.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Most entry bytes sent in one AppendEntries; a request with more is cut
/// and answered as a partial success. openraft gives each AppendEntries one
/// heartbeat interval to complete, so a request must stay small enough to
/// cross the network and be fsynced in that time even with 1 MiB values.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

/// How many of `entries` (at least one) fit in [`MAX_APPEND_BYTES`].
fn entries_that_fit(entries: &[crate::types::Entry]) -> usize {
    let mut total = 0;
    for (i, entry) in entries.iter().enumerate() {
        total += match &entry.payload {
            EntryPayload::Normal(req) => req.approx_bytes(),
            _ => 256,
        };
        if total > MAX_APPEND_BYTES {
            return i.max(1);
        }
    }
    entries.len()
}

/// Where peer nodes listen.
pub trait PeerDirectory: Send + Sync + 'static {
    /// The gRPC address (`host:port`) of `node`, if known.
    fn address(&self, node: NodeId) -> Option<String>;
}

/// Test hook: peers whose traffic is dropped, as if the network were cut.
#[derive(Debug, Default)]
pub struct NetworkFaults {
    cut: RwLock<HashSet<NodeId>>,
}

impl NetworkFaults {
    /// Drops all Raft traffic from this node to `node` until [`Self::heal`].
    pub fn cut(&self, node: NodeId) {
        if let Ok(mut cut) = self.cut.write() {
            cut.insert(node);
        }
    }

    pub fn heal(&self, node: NodeId) {
        if let Ok(mut cut) = self.cut.write() {
            cut.remove(&node);
        }
    }

    pub fn is_cut(&self, node: NodeId) -> bool {
        self.cut.read().is_ok_and(|cut| cut.contains(&node))
    }
}

/// The node's channels to its peers.
pub struct PeerPool {
    directory: Arc<dyn PeerDirectory>,
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    faults: Arc<NetworkFaults>,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

impl PeerPool {
    pub fn new(directory: Arc<dyn PeerDirectory>, faults: Arc<NetworkFaults>) -> Self {
        Self {
            directory,
            channels: Mutex::new(HashMap::new()),
            faults,
        }
    }

    /// The cached channel to `node` (created lazily; reconnects on its own).
    fn channel(&self, node: NodeId) -> Result<Channel, Unreachable<TypeConfig>> {
        if self.faults.is_cut(node) {
            return Err(unreachable(format!(
                "network to {node} is cut (test fault)"
            )));
        }
        let address = self
            .directory
            .address(node)
            .ok_or_else(|| unreachable(format!("no address known for {node}")))?;
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| unreachable("pool poisoned"))?;
        if let Some((known, channel)) = channels.get(&node) {
            if *known == address {
                return Ok(channel.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(unreachable)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(node, (address, channel.clone()));
        Ok(channel)
    }
}

/// Creates the per-target clients of one shard.
#[derive(Clone)]
pub struct NetworkFactory {
    shard: ShardId,
    /// The sending replica.
    from: ReplicaId,
    pool: Arc<PeerPool>,
}

impl NetworkFactory {
    pub fn new(shard: ShardId, from: ReplicaId, pool: Arc<PeerPool>) -> Self {
        Self { shard, from, pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: ReplicaId, node: &ReplicaNode) -> Network {
        Network {
            shard: self.shard,
            from: self.from,
            target,
            node: *node,
            pool: self.pool.clone(),
        }
    }
}

/// Sends one shard's messages to one target replica.
pub struct Network {
    shard: ShardId,
    from: ReplicaId,
    target: ReplicaId,
    node: ReplicaNode,
    pool: Arc<PeerPool>,
}

/// Encodes `value` into a checksummed [`RaftMessage`].
pub fn message<T: Serialize>(
    shard: ShardId,
    target: ReplicaId,
    value: &T,
) -> Result<RaftMessage, String> {
    let payload = postcard::to_allocvec(value).map_err(|e| format!("encode raft message: {e}"))?;
    Ok(RaftMessage {
        shard_id: shard.get(),
        target_replica: target.get(),
        crc32: crc32fast::hash(&payload),
        payload,
    })
}

/// Checks and decodes a [`RaftMessage`].
pub fn unpack<T: DeserializeOwned>(msg: &RaftMessage) -> Result<T, String> {
    if crc32fast::hash(&msg.payload) != msg.crc32 {
        return Err("raft message failed its crc32 check".into());
    }
    postcard::from_bytes(&msg.payload).map_err(|e| format!("decode raft message: {e}"))
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(e: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::new(&PeerError(e.to_string()))
}

fn network_error(e: impl ToString) -> NetworkError<TypeConfig> {
    NetworkError::new(&PeerError(e.to_string()))
}

impl Network {
    /// Sends one call of kind `action` and waits for its answer at most
    /// the call's TTL (one heartbeat interval for AppendEntries; openraft
    /// leaves that limit to the network). An answer slower than that (a
    /// follower's fsync stalled by the disk) is a timeout, after which
    /// openraft simply sends again; reported as an unreachable peer, it
    /// would make openraft back off from the peer.
    ///
    /// The target's Raft answers with its result or a fatal error (it has
    /// stopped); a stopped replica is reported as unreachable.
    async fn call<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        req: &Req,
        send: F,
    ) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let channel = self.pool.channel(self.node.node)?;
        let msg = message(self.shard, self.target, req).map_err(network_error)?;
        let client = RaftClient::new(channel).max_decoding_message_size(64 << 20);
        let ttl = option.hard_ttl();
        let reply = tokio::time::timeout(ttl, send(client, msg))
            .await
            .map_err(|_| {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.from,
                    target: self.target,
                    timeout: ttl,
                })
            })?
            .map_err(unreachable)?;
        let result: Result<Resp, Fatal> = unpack(reply.get_ref()).map_err(network_error)?;
        result.map_err(|e| {
            RPCError::Unreachable(unreachable(format!("replica {}: {e}", self.target)))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for Network {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse> {
        let fit = entries_that_fit(&rpc.entries);
        let cut = (fit < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|e| e.log_id)
        });
        let response = self
            .call(
                RPCTypes::AppendEntries,
                &option,
                &rpc,
                |mut c, m| async move { c.append_entries(m).await },
            )
            .await?;
        Ok(match (response, cut) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            (other, _) => other,
        })
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> RpcResult<VoteResponse> {
        self.call(RPCTypes::Vote, &option, &rpc, |mut c, m| async move {
            c.vote(m).await
        })
        .await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> RpcResult<VoteResponse> {
        self.call(RPCTypes::Vote, &option, &rpc, |mut c, m| async move {
            c.pre_vote(m).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse> {
        self.call(
            RPCTypes::TransferLeader,
            &option,
            &req,
            |mut c, m| async move { c.transfer_leader(m).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        let channel = self.pool.channel(self.node.node)?;
        let header = postcard::to_allocvec(&(vote, snapshot.meta.clone()))
            .map_err(|e| network_error(format!("encode snapshot header: {e}")))?;
        let mut file = snapshot.snapshot;
        let len = async {
            file.seek(SeekFrom::Start(0)).await?;
            Ok::<_, std::io::Error>(file.metadata().await?.len())
        }
        .await
        .map_err(|e| network_error(format!("snapshot file: {e}")))?;
        let chunks = chunk_stream(self.shard, self.target, header, file, len);
        let mut client = RaftClient::new(channel).max_decoding_message_size(64 << 20);
        let send = client.install_snapshot(chunks);
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = tokio::time::timeout(timeout, send) => reply,
        };
        let reply = reply
            .map_err(|_| unreachable("snapshot stream timed out"))?
            .map_err(unreachable)?;
        let result: Result<SnapshotResponse, Fatal> =
            unpack(reply.get_ref()).map_err(network_error)?;
        result.map_err(|e| {
            StreamingError::Unreachable(unreachable(format!("replica {}: {e}", self.target)))
        })
    }
}

/// crc32 of a chunk's header and data.
fn chunk_crc(header: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(data);
    hasher.finalize()
}

/// Checks a received chunk's crc32.
pub fn verify_chunk(chunk: &SnapshotChunk) -> Result<(), String> {
    if chunk_crc(&chunk.header, &chunk.data) != chunk.crc32 {
        return Err(format!(
            "snapshot chunk at offset {} failed its crc32 check",
            chunk.offset
        ));
    }
    Ok(())
}

/// One checksummed chunk.
pub fn make_chunk(
    shard: ShardId,
    target: ReplicaId,
    header: Vec<u8>,
    offset: u64,
    data: Vec<u8>,
    done: bool,
) -> SnapshotChunk {
    SnapshotChunk {
        shard_id: shard.get(),
        target_replica: target.get(),
        crc32: chunk_crc(&header, &data),
        header,
        offset,
        data,
        done,
    }
}

/// Streams the first `len` bytes of a snapshot file as checksummed chunks
/// of [`SNAPSHOT_CHUNK_BYTES`], reading one chunk at a time; the first
/// carries `header`, the last is marked `done`. A read error ends the stream
/// early, which the receiver rejects (no `done`).
pub fn chunk_stream(
    shard: ShardId,
    target: ReplicaId,
    header: Vec<u8>,
    file: tokio::fs::File,
    len: u64,
) -> impl futures::Stream<Item = SnapshotChunk> + Send + 'static {
    futures::stream::unfold(Some((file, 0u64, header)), move |state| async move {
        let (mut file, offset, header) = state?;
        let n = (len - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let mut data = vec![0u8; n];
        if let Err(e) = file.read_exact(&mut data).await {
            tracing::warn!(shard = %shard, error = %e, "reading snapshot file");
            return None;
        }
        let done = offset + n as u64 == len;
        let chunk = make_chunk(shard, target, header, offset, data, done);
        let next = (!done).then_some((file, offset + n as u64, Vec::new()));
        Some((chunk, next))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn chunks_reassemble_and_a_flipped_byte_is_caught() {
        let data: Vec<u8> = (0..(SNAPSHOT_CHUNK_BYTES * 2 + 10))
            .map(|i| i as u8)
            .collect();
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(&data).await.unwrap();
        file.seek(SeekFrom::Start(0)).await.unwrap();
        let chunks: Vec<SnapshotChunk> = chunk_stream(
            ShardId(1),
            ReplicaId(2),
            b"head".to_vec(),
            file,
            data.len() as u64,
        )
        .collect()
        .await;
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| verify_chunk(c).is_ok()));
        assert_eq!(chunks[0].header, b"head");
        assert!(chunks[1].header.is_empty());
        assert!(chunks[2].done && !chunks[1].done);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, data);
        let mut bad = chunks[1].clone();
        bad.data[7] ^= 1;
        assert!(verify_chunk(&bad).is_err());
    }

    #[tokio::test]
    async fn an_empty_snapshot_is_one_done_chunk() {
        let file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        let chunks: Vec<SnapshotChunk> =
            chunk_stream(ShardId(1), ReplicaId(2), b"h".to_vec(), file, 0)
                .collect()
                .await;
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].done && chunks[0].data.is_empty());
    }
}
