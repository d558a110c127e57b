//! The receiving side of Raft traffic: the internal `atoll.v1.Raft` gRPC
//! service, which hands each message to the named local replica.

use std::sync::Arc;

use atoll_proto::v1::raft_server::Raft as RaftRpc;
use atoll_proto::v1::{RaftMessage, SnapshotChunk};
use atoll_proto::{ReplicaId, ShardId};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::network::{message, unpack, verify_chunk};
use crate::types::{
    AppendEntriesRequest, Raft, Snapshot, SnapshotMeta, TransferLeaderRequest, Vote, VoteRequest,
};

/// Finds the local replica a message is for.
pub trait ReplicaDirectory: Send + Sync + 'static {
    fn raft(&self, shard: ShardId, replica: ReplicaId) -> Option<Raft>;
    /// A new, unlinked file to receive a snapshot into.
    fn snapshot_file(&self) -> Result<std::fs::File, atoll_storage::EngineError>;
}

/// Implements `atoll.v1.Raft` over a [`ReplicaDirectory`].
pub struct RaftService {
    replicas: Arc<dyn ReplicaDirectory>,
}

impl RaftService {
    pub fn new(replicas: Arc<dyn ReplicaDirectory>) -> Self {
        Self { replicas }
    }

    /// Decodes a one-message call, hands it to the named replica with
    /// `call`, and encodes what it answered.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        request: Request<RaftMessage>,
        call: F,
    ) -> Result<Response<RaftMessage>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: serde::Serialize,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Resp>,
    {
        let msg = request.into_inner();
        let raft = self.target(msg.shard_id, msg.target_replica)?;
        let req: Req = unpack(&msg).map_err(Status::invalid_argument)?;
        let result = call(raft, req).await;
        reply(msg.shard_id, msg.target_replica, &result)
    }

    fn target(&self, shard: u64, replica: u64) -> Result<Raft, Status> {
        self.replicas
            .raft(ShardId(shard), ReplicaId(replica))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no replica r{replica} of shard s{shard} on this node"
                ))
            })
    }
}

fn reply<T: serde::Serialize>(
    shard: u64,
    replica: u64,
    value: &T,
) -> Result<Response<RaftMessage>, Status> {
    message(ShardId(shard), ReplicaId(replica), value)
        .map(Response::new)
        .map_err(Status::internal)
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.unary(request, |raft, rpc: AppendEntriesRequest| async move {
            raft.append_entries(rpc).await.map_err(|e| e.unwrap_fatal())
        })
        .await
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.unary(request, |raft, rpc: VoteRequest| async move {
            raft.vote(rpc).await.map_err(|e| e.unwrap_fatal())
        })
        .await
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.unary(request, |raft, rpc: VoteRequest| async move {
            raft.pre_vote(rpc).await.map_err(|e| e.unwrap_fatal())
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.unary(request, |raft, req: TransferLeaderRequest| async move {
            raft.handle_transfer_leader(req).await
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut target: Option<(u64, u64, Raft, tokio::fs::File)> = None;
        let mut received = 0u64;
        let mut done = false;
        let file_error = |e: std::io::Error| Status::internal(format!("snapshot file: {e}"));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            verify_chunk(&chunk).map_err(Status::data_loss)?;
            if chunk.offset != received {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {} does not follow offset {received}",
                    chunk.offset
                )));
            }
            if target.is_none() {
                header = Some(
                    postcard::from_bytes(&chunk.header)
                        .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?,
                );
                let raft = self.target(chunk.shard_id, chunk.target_replica)?;
                let file = self
                    .replicas
                    .snapshot_file()
                    .map(tokio::fs::File::from_std)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                target = Some((chunk.shard_id, chunk.target_replica, raft, file));
            }
            if let Some((_, _, _, file)) = target.as_mut() {
                file.write_all(&chunk.data).await.map_err(file_error)?;
            }
            received += chunk.data.len() as u64;
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some((vote, meta)), Some((shard, replica, raft, mut file)), true) =
            (header, target, done)
        else {
            return Err(Status::invalid_argument(
                "snapshot stream ended before its last chunk",
            ));
        };
        file.flush().await.map_err(file_error)?;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(file_error)?;
        let snapshot = Snapshot {
            meta,
            snapshot: file,
        };
        let result = raft.install_full_snapshot(vote, snapshot).await;
        reply(shard, replica, &result)
    }
}
