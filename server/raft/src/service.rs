//! The receiving side of Raft traffic: the internal `atoll.v1.Raft` gRPC
//! service, which hands each call to the named local replica.

use std::pin::Pin;
use std::sync::Arc;

use atoll_proto::v1::raft_server::Raft as RaftRpc;
use atoll_proto::v1::{RaftCall, RaftCallKind, RaftMessage, RaftReply, SnapshotChunk};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use futures::stream::FuturesUnordered;
use futures::Stream;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::network::{message, sender_of, unpack, verify_chunk, Sender};
use crate::quiesce::{answer_quiesce, QuiesceRequest};
use crate::state_machine::SnapshotFile;
use crate::types::{
    AppendEntriesRequest, Raft, Snapshot, SnapshotMeta, TransferLeaderRequest, Vote, VoteRequest,
};
use crate::Replica;

/// Finds the local replica a message is for.
pub trait ReplicaDirectory: Send + Sync + 'static {
    fn lookup(&self, shard: ShardId, replica: ReplicaId) -> Option<Replica>;
    /// A new, unlinked file to receive a snapshot into.
    /// A new file for a snapshot being received (see
    /// [`received_snapshot_file`](crate::state_machine::received_snapshot_file)).
    fn snapshot_file(&self) -> Result<tempfile::NamedTempFile, atoll_storage::EngineError>;
    /// Whether this node takes Raft traffic from `sender` (`None` for a
    /// sender of an earlier version, which does not name itself). A node
    /// the cluster has removed, or a data directory the cluster does not
    /// know on either side, is refused, with the reason.
    fn admit(&self, sender: Option<&Sender>) -> Result<(), String> {
        let _ = sender;
        Ok(())
    }
}

/// Implements `atoll.v1.Raft` over a [`ReplicaDirectory`].
pub struct RaftService {
    replicas: Arc<dyn ReplicaDirectory>,
    closing: watch::Receiver<bool>,
}

impl RaftService {
    /// A service whose Raft streams end once `closing` turns true: a
    /// server shutting down waits for its open streams, and a peer's
    /// stream never ends on its own.
    pub fn new(replicas: Arc<dyn ReplicaDirectory>, closing: watch::Receiver<bool>) -> Self {
        Self { replicas, closing }
    }

    fn target(&self, shard: u64, replica: u64) -> Result<Raft, Status> {
        let replica = target(&*self.replicas, shard, replica).map_err(Status::not_found)?;
        replica.wake();
        Ok(replica.raft)
    }
}

/// The local replica a call names. Every call but a quiesce wakes it: a
/// quiet replica that is sent something has a sender that is awake.
fn target(replicas: &dyn ReplicaDirectory, shard: u64, replica: u64) -> Result<Replica, String> {
    replicas
        .lookup(ShardId(shard), ReplicaId(replica))
        .ok_or_else(|| format!("no replica r{replica} of shard s{shard} on this node"))
}

/// Answers the calls of one Exchange stream as they arrive, each as soon as
/// its replica has: a slow call (a follower waiting for its fsync) holds up
/// no other. Ends when the caller's stream has ended and every call is
/// answered, when nobody reads the replies any more, or when the server
/// is closing.
async fn answer_calls(
    replicas: Arc<dyn ReplicaDirectory>,
    peer: Option<Sender>,
    mut calls: Streaming<RaftCall>,
    replies: mpsc::UnboundedSender<RaftReply>,
    mut closing: watch::Receiver<bool>,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    let closed = closing.wait_for(|closing| *closing);
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => return,
            call = calls.message(), if open => match call {
                Ok(Some(call)) => running.push(answer(replicas.clone(), peer, call)),
                Ok(None) => open = false,
                Err(status) => {
                    tracing::debug!(%status, "raft stream from a peer failed");
                    open = false;
                }
            },
            Some(reply) = running.next(), if !running.is_empty() => {
                if replies.send(reply).is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

async fn answer(
    replicas: Arc<dyn ReplicaDirectory>,
    peer: Option<Sender>,
    call: RaftCall,
) -> RaftReply {
    let call_id = call.call_id;
    // Checked for every call, not once per stream: a stream outlives the
    // map that let its sender in.
    let answered = match replicas.admit(peer.as_ref()) {
        Ok(()) => dispatch(&*replicas, peer.map(|p| p.node), call).await,
        Err(refused) => Err(refused),
    };
    match answered {
        Ok(message) => RaftReply {
            call_id,
            message: Some(message),
            error: String::new(),
        },
        Err(error) => RaftReply {
            call_id,
            message: None,
            error,
        },
    }
}

/// Hands one call to its replica and encodes what it answered.
async fn dispatch(
    replicas: &dyn ReplicaDirectory,
    peer: Option<NodeId>,
    call: RaftCall,
) -> Result<RaftMessage, String> {
    let kind = RaftCallKind::try_from(call.kind)
        .map_err(|_| format!("unknown raft call kind {}", call.kind))?;
    if kind == RaftCallKind::Ping {
        return Ok(RaftMessage::default());
    }
    let msg = call.message.ok_or("raft call without a message")?;
    let replica = target(replicas, msg.shard_id, msg.target_replica)?;
    let (shard, to) = (ShardId(msg.shard_id), ReplicaId(msg.target_replica));
    if kind == RaftCallKind::Quiesce {
        let request: QuiesceRequest = unpack(&msg)?;
        return message(
            shard,
            to,
            &answer_quiesce(replica.quiescence(), peer, &request),
        );
    }
    replica.wake();
    let raft = replica.raft;
    match kind {
        RaftCallKind::AppendEntries => {
            handle(raft, &msg, |raft, rpc: AppendEntriesRequest| async move {
                raft.append_entries(rpc).await.map_err(|e| e.unwrap_fatal())
            })
            .await
        }
        RaftCallKind::Vote => {
            handle(raft, &msg, |raft, rpc: VoteRequest| async move {
                raft.vote(rpc).await.map_err(|e| e.unwrap_fatal())
            })
            .await
        }
        RaftCallKind::PreVote => {
            handle(raft, &msg, |raft, rpc: VoteRequest| async move {
                raft.pre_vote(rpc).await.map_err(|e| e.unwrap_fatal())
            })
            .await
        }
        RaftCallKind::TransferLeader => {
            handle(raft, &msg, |raft, req: TransferLeaderRequest| async move {
                raft.handle_transfer_leader(req).await
            })
            .await
        }
        // A wake is done above; pings and quiesces are answered before it.
        RaftCallKind::Wake | RaftCallKind::Ping | RaftCallKind::Quiesce => message(shard, to, &()),
        RaftCallKind::Unspecified => Err("raft call of no kind".into()),
    }
}

/// Decodes `msg`, hands it to `raft` with `call`, and encodes the answer.
async fn handle<Req, Resp, F, Fut>(
    raft: Raft,
    msg: &RaftMessage,
    call: F,
) -> Result<RaftMessage, String>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: FnOnce(Raft, Req) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let req: Req = unpack(msg)?;
    let result = call(raft, req).await;
    message(
        ShardId(msg.shard_id),
        ReplicaId(msg.target_replica),
        &result,
    )
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

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type ExchangeStream = ReplyStream;

    async fn exchange(
        &self,
        request: Request<Streaming<RaftCall>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let peer = sender_of(&request);
        self.replicas
            .admit(peer.as_ref())
            .map_err(Status::permission_denied)?;
        let (replies, out) = mpsc::unbounded_channel();
        tokio::spawn(answer_calls(
            self.replicas.clone(),
            peer,
            request.into_inner(),
            replies,
            self.closing.clone(),
        ));
        let out = UnboundedReceiverStream::new(out).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.replicas
            .admit(sender_of(&request).as_ref())
            .map_err(Status::permission_denied)?;
        let mut stream = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut target: Option<(u64, u64, Raft, tokio::fs::File, tempfile::TempPath)> = None;
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
                let (file, temp) = self
                    .replicas
                    .snapshot_file()
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .into_parts();
                let file = tokio::fs::File::from_std(file);
                target = Some((chunk.shard_id, chunk.target_replica, raft, file, temp));
            }
            if let Some((_, _, _, file, _)) = target.as_mut() {
                file.write_all(&chunk.data).await.map_err(file_error)?;
            }
            received += chunk.data.len() as u64;
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some((vote, meta)), Some((shard, replica, raft, mut file, temp)), true) =
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
        file.sync_all().await.map_err(file_error)?;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile {
                file,
                temp: Some(temp),
            },
        };
        let result = raft.install_full_snapshot(vote, snapshot).await;
        reply(shard, replica, &result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with no replicas.
    struct Empty;

    impl ReplicaDirectory for Empty {
        fn lookup(&self, _shard: ShardId, _replica: ReplicaId) -> Option<Replica> {
            None
        }

        fn snapshot_file(&self) -> Result<tempfile::NamedTempFile, atoll_storage::EngineError> {
            tempfile::NamedTempFile::new()
                .map_err(|e| atoll_storage::EngineError::Io(e.to_string()))
        }
    }

    fn call(call_id: u64, kind: i32, message: Option<RaftMessage>) -> RaftCall {
        RaftCall {
            call_id,
            kind,
            message,
        }
    }

    #[tokio::test]
    async fn calls_that_reach_no_replica_are_answered_with_an_error() {
        let replicas: Arc<dyn ReplicaDirectory> = Arc::new(Empty);
        let vote = RaftCallKind::Vote as i32;
        let msg = RaftMessage {
            shard_id: 3,
            target_replica: 9,
            ..Default::default()
        };
        let reply = answer(replicas.clone(), None, call(5, vote, Some(msg))).await;
        assert_eq!(reply.call_id, 5);
        assert!(reply.message.is_none());
        assert!(
            reply.error.contains("no replica r9 of shard s3"),
            "{}",
            reply.error
        );

        let reply = answer(replicas, None, call(6, vote, None)).await;
        assert_eq!(reply.call_id, 6);
        assert!(reply.error.contains("without a message"), "{}", reply.error);
    }

    #[tokio::test]
    async fn a_ping_is_answered_by_the_node_without_naming_a_replica() {
        let replicas: Arc<dyn ReplicaDirectory> = Arc::new(Empty);
        let reply = answer(replicas, None, call(7, RaftCallKind::Ping as i32, None)).await;
        assert_eq!(reply.call_id, 7);
        assert_eq!(reply.error, "");
        assert_eq!(reply.message, Some(RaftMessage::default()));
    }

    /// A node whose map says node 3 is removed.
    struct RemovedThree;

    impl ReplicaDirectory for RemovedThree {
        fn lookup(&self, shard: ShardId, replica: ReplicaId) -> Option<Replica> {
            Empty.lookup(shard, replica)
        }

        fn snapshot_file(&self) -> Result<tempfile::NamedTempFile, atoll_storage::EngineError> {
            Empty.snapshot_file()
        }

        fn admit(&self, sender: Option<&Sender>) -> Result<(), String> {
            match sender.map(|s| s.node) {
                Some(NodeId(3)) => Err("node 3 is removed".into()),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn every_call_of_a_removed_sender_is_refused_before_it_reaches_a_replica() {
        let replicas: Arc<dyn ReplicaDirectory> = Arc::new(RemovedThree);
        let vote = RaftCallKind::Vote as i32;
        let msg = RaftMessage {
            shard_id: 3,
            target_replica: 9,
            ..Default::default()
        };
        let from = |node| {
            Some(Sender {
                node: NodeId(node),
                incarnation: 1,
                expects: 1,
            })
        };
        let refused = answer(replicas.clone(), from(3), call(1, vote, Some(msg.clone()))).await;
        assert_eq!(refused.error, "node 3 is removed");
        let reached = answer(replicas, from(2), call(2, vote, Some(msg))).await;
        assert!(reached.error.contains("no replica r9"), "{}", reached.error);
    }
}
