//! The sending side of Raft traffic. Every shard's calls to a peer node
//! travel on two long-lived gRPC streams to it (see [`Lane`]): a call is
//! one message on a stream, not an HTTP/2 request of its own, and calls
//! that are ready together go out in one write. Answers are matched to
//! their callers by call id. Snapshots stream in crc32-checked chunks on
//! calls of their own.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atoll_proto::v1::raft_client::RaftClient;
use atoll_proto::v1::{RaftCall, RaftCallKind, RaftMessage, RaftReply, SnapshotChunk};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use futures::StreamExt;
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::join_guard::JoinGuard;
use crate::pacing::{install_deadline, SendProgress, SnapshotPacing};
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
/// Largest Raft message a node accepts (entries are batched by openraft,
/// and cut at [`MAX_APPEND_BYTES`]).
pub const MAX_RAFT_MESSAGE: usize = 64 << 20;
/// Calls whose message is larger than this travel on [`Lane::Bulk`].
const BULK_CALL_BYTES: usize = 64 << 10;
/// Most message bytes queued on one peer stream and not yet taken by
/// HTTP/2. A peer that stops reading (paused, overloaded) fills its flow
/// control window, then this queue; further calls fail at once as
/// unreachable, and openraft backs off, instead of queueing a copy of
/// every resent AppendEntries until keepalive gives up on the peer.
pub const MAX_STREAM_QUEUE_BYTES: usize = 8 * MAX_APPEND_BYTES;

/// The gRPC metadata keys of every Raft stream and snapshot call: the
/// sending node, the incarnation of its data directory, and the
/// incarnation its map records for the receiver (0: none yet). A receiver
/// refuses a node the cluster has removed, and either side's data
/// directory if it is not the one the cluster knows (docs/design/elastic.md,
/// "A node that lost its data").
pub const FROM_NODE_HEADER: &str = "atoll-from-node";
pub const FROM_INCARNATION_HEADER: &str = "atoll-from-incarnation";
pub const TO_INCARNATION_HEADER: &str = "atoll-to-incarnation";

/// This node, as it names itself to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node: NodeId,
    /// The incarnation of its data directory.
    pub incarnation: u64,
}

/// The sender of a Raft request, as its metadata names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub node: NodeId,
    /// The incarnation of the sender's data directory (0 from senders of
    /// earlier versions).
    pub incarnation: u64,
    /// The incarnation the sender's map records for the receiver (0: none).
    pub expects: u64,
}

/// A request carrying `body`, from `origin` to a node whose incarnation the
/// sender's map records as `expects`.
fn addressed<T>(origin: Origin, expects: u64, body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    let metadata = request.metadata_mut();
    for (key, value) in [
        (FROM_NODE_HEADER, origin.node.get()),
        (FROM_INCARNATION_HEADER, origin.incarnation),
        (TO_INCARNATION_HEADER, expects),
    ] {
        metadata.insert(key, tonic::metadata::MetadataValue::from(value));
    }
    request
}

/// The sender a Raft request names, if it names itself (senders of
/// earlier versions do not; they name no incarnations either).
pub fn sender_of<T>(request: &tonic::Request<T>) -> Option<Sender> {
    let number =
        |key: &str| -> Option<u64> { request.metadata().get(key)?.to_str().ok()?.parse().ok() };
    Some(Sender {
        node: NodeId(number(FROM_NODE_HEADER)?),
        incarnation: number(FROM_INCARNATION_HEADER).unwrap_or(0),
        expects: number(TO_INCARNATION_HEADER).unwrap_or(0),
    })
}

/// About how many bytes `entry` takes on the wire.
fn entry_bytes(entry: &crate::types::Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(req) => req.approx_bytes(),
        _ => 256,
    }
}

/// How many of `entries` (at least one) fit in [`MAX_APPEND_BYTES`].
fn entries_that_fit(entries: &[crate::types::Entry]) -> usize {
    let mut total = 0;
    for (i, entry) in entries.iter().enumerate() {
        total += entry_bytes(entry);
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
    /// The incarnation of `node`'s data directory as the map records it
    /// (0: not recorded).
    fn incarnation(&self, node: NodeId) -> u64 {
        let _ = node;
        0
    }
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

/// Which of a peer's two streams a call travels on. Messages on one stream
/// go out one after another, so a heartbeat or a vote queued behind
/// megabytes of a follower's catch-up would wait for all of them; small
/// calls therefore have a stream of their own (as etcd keeps log appends
/// and other messages on separate streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Heartbeats, votes, commit updates and appends of a few entries.
    Small = 0,
    /// Calls larger than [`BULK_CALL_BYTES`].
    Bulk = 1,
}

impl Lane {
    fn of(message: &RaftMessage) -> Self {
        if message.payload.len() > BULK_CALL_BYTES {
            Lane::Bulk
        } else {
            Lane::Small
        }
    }
}

/// What the node knows of one peer: its address, the channel to it, and
/// the streams open on that channel.
struct Peer {
    address: String,
    channel: Channel,
    lanes: [Option<Arc<PeerStream>>; 2],
}

/// The node's channels and streams to its peers.
pub struct PeerPool {
    /// This node, named on every stream it opens.
    local: Origin,
    directory: Arc<dyn PeerDirectory>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    faults: Arc<NetworkFaults>,
    /// Shared by every snapshot this node sends.
    pacing: Arc<SnapshotPacing>,
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
    pub fn new(
        local: Origin,
        directory: Arc<dyn PeerDirectory>,
        faults: Arc<NetworkFaults>,
        pacing: Arc<SnapshotPacing>,
    ) -> Self {
        Self {
            local,
            directory,
            peers: Mutex::new(HashMap::new()),
            faults,
            pacing,
        }
    }

    /// Runs `f` on what is known of `node`, after checking the test faults
    /// and the node's current address (a new address gets a new channel).
    fn with_peer<T>(
        &self,
        node: NodeId,
        f: impl FnOnce(&mut Peer) -> T,
    ) -> Result<T, Unreachable<TypeConfig>> {
        if self.faults.is_cut(node) {
            return Err(unreachable(format!(
                "network to {node} is cut (test fault)"
            )));
        }
        let address = self
            .directory
            .address(node)
            .ok_or_else(|| unreachable(format!("no address known for {node}")))?;
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| unreachable("pool poisoned"))?;
        if let Some(peer) = peers.get_mut(&node) {
            if peer.address == address {
                return Ok(f(peer));
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(unreachable)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let mut peer = Peer {
            address,
            channel: endpoint.connect_lazy(),
            lanes: [None, None],
        };
        let out = f(&mut peer);
        peers.insert(node, peer);
        Ok(out)
    }

    /// The pacing every snapshot this node sends shares.
    pub fn pacing(&self) -> &SnapshotPacing {
        &self.pacing
    }

    /// The cached channel to `node` (created lazily; reconnects on its own).
    fn channel(&self, node: NodeId) -> Result<Channel, Unreachable<TypeConfig>> {
        self.with_peer(node, |peer| peer.channel.clone())
    }

    /// The open stream to `node` on `lane`; opens a new one when there is
    /// none or the last one ended.
    fn stream(&self, node: NodeId, lane: Lane) -> Result<Arc<PeerStream>, Unreachable<TypeConfig>> {
        let local = self.local;
        let expects = self.directory.incarnation(node);
        self.with_peer(node, |peer| {
            let slot = &mut peer.lanes[lane as usize];
            match slot {
                Some(stream) if !stream.is_closed() => stream.clone(),
                _ => {
                    let stream =
                        Arc::new(PeerStream::open(peer.channel.clone(), local, expects, node));
                    *slot = Some(stream.clone());
                    stream
                }
            }
        })
    }
}

impl PeerPool {
    /// Sends one call of `kind` to `node` on its small-call stream and
    /// waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        node: NodeId,
        kind: RaftCallKind,
        msg: RaftMessage,
        timeout: Duration,
    ) -> Answer {
        let stream = self.stream(node, Lane::Small).map_err(|e| e.to_string())?;
        let mut pending = stream.send(kind, msg)?;
        tokio::time::timeout(timeout, pending.answer())
            .await
            .map_err(|_| format!("{node} did not answer within {timeout:?}"))?
    }

    /// Whether `node` answers a ping within `timeout`.
    pub async fn ping(&self, node: NodeId, timeout: Duration) -> bool {
        (self
            .call(node, RaftCallKind::Ping, RaftMessage::default(), timeout)
            .await)
            .is_ok()
    }
}

/// The answer to one call, or why there is none.
type Answer = Result<RaftMessage, String>;

/// One Exchange stream to a peer node. Its task sends the queued calls and
/// hands each reply to the caller waiting for it; when the stream ends,
/// every waiting caller is told at once. Dropping the last handle ends the
/// stream.
struct PeerStream {
    shared: Arc<Mutex<StreamState>>,
}

struct StreamState {
    /// Calls to send; `None` once the stream is closed.
    outgoing: Option<mpsc::UnboundedSender<RaftCall>>,
    /// Message bytes in `outgoing` (at most [`MAX_STREAM_QUEUE_BYTES`],
    /// or one call).
    queued: Arc<AtomicUsize>,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    next_id: u64,
    /// Why the stream ended.
    closed: Option<String>,
}

impl StreamState {
    /// Ends the stream: no call is sent on it any more, and every caller
    /// still waiting gets `why`.
    fn close(&mut self, why: String) {
        if self.closed.is_some() {
            return;
        }
        self.outgoing = None;
        for (_, caller) in self.waiting.drain() {
            let _ = caller.send(Err(why.clone()));
        }
        self.closed = Some(why);
    }
}

fn lock(state: &Mutex<StreamState>) -> std::sync::MutexGuard<'_, StreamState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerStream {
    /// Starts a stream on `channel`; calls sent before it is connected
    /// wait in its queue.
    fn open(channel: Channel, local: Origin, expects: u64, node: NodeId) -> Self {
        let (outgoing, calls) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let calls = UnboundedReceiverStream::new(calls).map(move |call: RaftCall| {
            taken.fetch_sub(call_bytes(&call), Ordering::Relaxed);
            call
        });
        let shared = Arc::new(Mutex::new(StreamState {
            outgoing: Some(outgoing),
            queued,
            waiting: HashMap::new(),
            next_id: 0,
            closed: None,
        }));
        let request = addressed(local, expects, calls);
        tokio::spawn(Self::run(shared.clone(), channel, request, node));
        Self { shared }
    }

    async fn run(
        shared: Arc<Mutex<StreamState>>,
        channel: Channel,
        request: tonic::Request<impl futures::Stream<Item = RaftCall> + Send + 'static>,
        node: NodeId,
    ) {
        let mut client = RaftClient::new(channel).max_decoding_message_size(MAX_RAFT_MESSAGE);
        let ended = async {
            let mut replies = client.exchange(request).await?.into_inner();
            while let Some(reply) = replies.message().await? {
                Self::deliver(&shared, reply);
            }
            Ok::<_, tonic::Status>(())
        }
        .await;
        let why = match ended {
            Ok(()) => format!("{node} ended the raft stream"),
            Err(status) => format!("raft stream to {node}: {status}"),
        };
        tracing::debug!(%why, "raft stream closed");
        lock(&shared).close(why);
    }

    fn deliver(shared: &Mutex<StreamState>, reply: RaftReply) {
        let Some(caller) = lock(shared).waiting.remove(&reply.call_id) else {
            return; // the caller gave up waiting
        };
        let answer = match reply.message {
            _ if !reply.error.is_empty() => Err(reply.error),
            Some(message) => Ok(message),
            None => Err("raft reply without a message".into()),
        };
        let _ = caller.send(answer);
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared).closed.is_some()
    }

    /// Queues a call; its answer comes through the returned [`Pending`].
    fn send(&self, kind: RaftCallKind, message: RaftMessage) -> Result<Pending, String> {
        let mut state = lock(&self.shared);
        if let Some(why) = &state.closed {
            return Err(why.clone());
        }
        let call_id = state.next_id;
        let call = RaftCall {
            call_id,
            kind: kind as i32,
            message: Some(message),
        };
        let size = call_bytes(&call);
        let queued = state.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + size > MAX_STREAM_QUEUE_BYTES {
            return Err(format!(
                "the peer is not taking messages: {queued} bytes wait on its stream"
            ));
        }
        state.queued.fetch_add(size, Ordering::Relaxed);
        state.next_id += 1;
        let sent = state
            .outgoing
            .as_ref()
            .is_some_and(|o| o.send(call).is_ok());
        if !sent {
            return Err("raft stream closed".into());
        }
        let (caller, answer) = oneshot::channel();
        state.waiting.insert(call_id, caller);
        Ok(Pending {
            call_id,
            answer,
            shared: self.shared.clone(),
            answered: false,
        })
    }
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        lock(&self.shared).close("raft stream no longer used".into());
    }
}

/// The bytes a call holds while queued.
fn call_bytes(call: &RaftCall) -> usize {
    64 + call.message.as_ref().map_or(0, |m| m.payload.len())
}

/// A call waiting for its answer; dropping it before the answer came (the
/// caller timed out) forgets the call.
struct Pending {
    call_id: u64,
    answer: oneshot::Receiver<Answer>,
    shared: Arc<Mutex<StreamState>>,
    /// The answer came, so the call is no longer in `waiting`.
    answered: bool,
}

impl Pending {
    async fn answer(&mut self) -> Answer {
        let answer = (&mut self.answer).await;
        self.answered = true;
        answer.unwrap_or_else(|_| Err("raft stream closed".into()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            lock(&self.shared).waiting.remove(&self.call_id);
        }
    }
}

/// Creates the per-target clients of one shard.
#[derive(Clone)]
pub struct NetworkFactory {
    shard: ShardId,
    /// The sending replica.
    from: ReplicaId,
    pool: Arc<PeerPool>,
    guard: Arc<JoinGuard>,
}

impl NetworkFactory {
    pub fn new(
        shard: ShardId,
        from: ReplicaId,
        pool: Arc<PeerPool>,
        guard: Arc<JoinGuard>,
    ) -> Self {
        Self {
            shard,
            from,
            pool,
            guard,
        }
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
            guard: self.guard.clone(),
            learner_holds: None,
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
    guard: Arc<JoinGuard>,
    /// The last entry the target, a learner, is known to hold as this
    /// leader has it (from its answers to this sender).
    learner_holds: Option<crate::types::LogId>,
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
    async fn call<Req, Resp>(
        &self,
        action: RPCTypes,
        kind: RaftCallKind,
        option: &RPCOption,
        req: &Req,
    ) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let msg = message(self.shard, self.target, req).map_err(network_error)?;
        let stream = self.pool.stream(self.node.node, Lane::of(&msg))?;
        let mut pending = stream.send(kind, msg).map_err(unreachable)?;
        let ttl = option.hard_ttl();
        let reply = tokio::time::timeout(ttl, pending.answer())
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
        let result: Result<Resp, Fatal> = unpack(&reply).map_err(network_error)?;
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
        if let Some(why) = self.guard.refuses(self.target, &rpc) {
            return Err(RPCError::Unreachable(unreachable(why)));
        }
        let learner = !rpc.entries.is_empty() && self.guard.is_learner(self.target);
        // openraft finds where a new learner's log matches its own by a
        // binary search from the leader's last entry down, and each probe
        // carries entries that a mismatch throws away: up to 2 MiB each,
        // paced, for a learner that holds nothing. A probe, an append not
        // right after what the learner is known to hold, goes without its
        // entries; where it matches, the learner holds its first entry's
        // predecessor, which is what the answer says.
        let probe = learner && rpc.prev_log_id != self.learner_holds;
        if probe {
            rpc.entries.clear();
        }
        let fit = entries_that_fit(&rpc.entries);
        let cut = (fit < rpc.entries.len()).then(|| {
            rpc.entries.truncate(fit);
            rpc.entries.last().map(|e| e.log_id)
        });
        let cut = if probe { Some(rpc.prev_log_id) } else { cut };
        // A learner catching up from the log copies a shard as a snapshot
        // would: its entries share the node's snapshot rate, so a move
        // never takes more than `raft.snapshot_rate` from the writes.
        //
        // Such an append is large (up to the message bound), so it gets the
        // deadline of a snapshot chunk, not openraft's one heartbeat
        // interval: timed out, it would be sent, and paced, again, and a
        // move would cost more bytes than the shard holds.
        let mut paced = 0;
        let mut option = option;
        if learner && !probe {
            paced = rpc.entries.iter().map(entry_bytes).sum::<usize>() as u64;
            self.pool.pacing.acquire(paced).await;
            option = RPCOption::new(option.hard_ttl().max(self.pool.pacing.stall_after));
        }
        let response: AppendEntriesResponse = self
            .call(
                RPCTypes::AppendEntries,
                RaftCallKind::AppendEntries,
                &option,
                &rpc,
            )
            .await?;
        // Only delivered bytes are progress: a learner that cannot be
        // reached must show none, so its move is seen to be stuck.
        self.guard.count_sent(self.target, paced);
        let last_sent = cut.unwrap_or_else(|| rpc.entries.last().map(|e| e.log_id));
        if learner && response.is_success() {
            self.learner_holds = last_sent;
        }
        Ok(match (response, cut) {
            (AppendEntriesResponse::Success, Some(last_sent)) => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            (other, _) => other,
        })
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> RpcResult<VoteResponse> {
        self.call(RPCTypes::Vote, RaftCallKind::Vote, &option, &rpc)
            .await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> RpcResult<VoteResponse> {
        self.call(RPCTypes::Vote, RaftCallKind::PreVote, &option, &rpc)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse> {
        self.call(
            RPCTypes::TransferLeader,
            RaftCallKind::TransferLeader,
            &option,
            &req,
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        // Its deadline (`hard_ttl`) is not used: the send has deadlines by
        // progress instead.
        _option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        let channel = self.pool.channel(self.node.node)?;
        let header = postcard::to_allocvec(&(vote, snapshot.meta.clone()))
            .map_err(|e| network_error(format!("encode snapshot header: {e}")))?;
        let mut file = snapshot.snapshot.file;
        let len = async {
            file.seek(SeekFrom::Start(0)).await?;
            Ok::<_, std::io::Error>(file.metadata().await?.len())
        }
        .await
        .map_err(|e| network_error(format!("snapshot file: {e}")))?;
        let pacing = self.pool.pacing.clone();
        tokio::pin!(cancel);
        // Waiting for a turn is not part of the send: its stall clock starts
        // with the turn.
        let _turn = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            turn = pacing.turn() => turn,
        };
        let progress = Arc::new(SendProgress::default());
        let (guard, target) = (self.guard.clone(), self.target);
        let chunks = paced(
            chunk_stream(self.shard, self.target, header, file, len),
            pacing.clone(),
            progress.clone(),
        )
        .inspect(move |chunk| guard.count_sent(target, chunk.data.len() as u64));
        let mut client = RaftClient::new(channel).max_decoding_message_size(MAX_RAFT_MESSAGE);
        // No deadline on the whole send: it fails only when it stops
        // moving (docs/design/elastic.md, "Snapshots that scale").
        let send = client.install_snapshot(addressed(
            self.pool.local,
            self.pool.directory.incarnation(self.node.node),
            chunks,
        ));
        tokio::pin!(send);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let reply = loop {
            tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                reply = &mut send => break reply,
                _ = check.tick() => {
                    let (limit, waiting_for) = if progress.all_sent() {
                        (install_deadline(len), "the receiver to install it")
                    } else {
                        (pacing.stall_after, "the receiver to take a chunk")
                    };
                    let idle = progress.idle();
                    if idle > limit {
                        return Err(StreamingError::Unreachable(unreachable(format!(
                            "snapshot to replica {} stalled: waited {} s for {waiting_for}, \
                             {} of {len} bytes sent",
                            self.target,
                            idle.as_secs(),
                            progress.bytes(),
                        ))));
                    }
                }
            }
        };
        let reply = reply.map_err(unreachable)?;
        let result: Result<SnapshotResponse, Fatal> =
            unpack(reply.get_ref()).map_err(network_error)?;
        result.map_err(|e| {
            StreamingError::Unreachable(unreachable(format!("replica {}: {e}", self.target)))
        })
    }
}

/// `chunks` sent at the pace of `pacing`, with their progress recorded.
fn paced(
    chunks: impl futures::Stream<Item = SnapshotChunk> + Send + 'static,
    pacing: Arc<SnapshotPacing>,
    progress: Arc<SendProgress>,
) -> impl futures::Stream<Item = SnapshotChunk> + Send + 'static {
    chunks.then(move |chunk| {
        let (pacing, progress) = (pacing.clone(), progress.clone());
        async move {
            // The transport asked for this chunk: the last one was taken.
            progress.set_throttled(true);
            pacing.acquire(chunk.data.len() as u64).await;
            progress.set_throttled(false);
            progress.sent(chunk.data.len() as u64, chunk.done);
            chunk
        }
    })
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

#[cfg(test)]
mod stream_tests {
    use std::pin::Pin;

    use atoll_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
    use futures::Stream;
    use tokio::io::AsyncWriteExt;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// A peer that collects calls in pairs and answers each pair in reverse
    /// order, echoing the payload; a call whose payload is `hang up` ends
    /// the stream without answering anything still held.
    struct ReversingPeer;

    #[tonic::async_trait]
    impl RaftRpc for ReversingPeer {
        type ExchangeStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send>>;

        async fn exchange(
            &self,
            request: Request<Streaming<RaftCall>>,
        ) -> Result<Response<Self::ExchangeStream>, Status> {
            let mut calls = request.into_inner();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok(Some(call)) = calls.message().await {
                    let message = call.message.unwrap_or_default();
                    if message.payload == b"hang up" {
                        return;
                    }
                    held.push(RaftReply {
                        call_id: call.call_id,
                        message: Some(message),
                        error: String::new(),
                    });
                    if held.len() == 2 {
                        for reply in held.drain(..).rev() {
                            let _ = tx.send(Ok(reply));
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
        }

        async fn install_snapshot(
            &self,
            _request: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// A peer that takes the stream and never reads a call: a paused node.
    struct DeafPeer;

    #[tonic::async_trait]
    impl RaftRpc for DeafPeer {
        type ExchangeStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send>>;

        async fn exchange(
            &self,
            request: Request<Streaming<RaftCall>>,
        ) -> Result<Response<Self::ExchangeStream>, Status> {
            let calls = request.into_inner();
            let silence = futures::stream::pending::<Result<RaftReply, Status>>();
            Ok(Response::new(Box::pin(silence.map(move |reply| {
                let _keep_open = &calls;
                reply
            }))))
        }

        async fn install_snapshot(
            &self,
            _request: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// A peer that takes a snapshot's chunks one per `per_chunk` and then
    /// answers, or (`None`) never reads one.
    struct SnapshotPeer {
        per_chunk: Option<Duration>,
    }

    #[tonic::async_trait]
    impl RaftRpc for SnapshotPeer {
        type ExchangeStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send>>;

        async fn exchange(
            &self,
            _request: Request<Streaming<RaftCall>>,
        ) -> Result<Response<Self::ExchangeStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            request: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftMessage>, Status> {
            let mut chunks = request.into_inner();
            let Some(per_chunk) = self.per_chunk else {
                let _unread = chunks;
                return std::future::pending().await;
            };
            while let Some(chunk) = chunks.message().await? {
                tokio::time::sleep(per_chunk).await;
                if chunk.done {
                    break;
                }
            }
            let vote = Vote::new(1, ReplicaId(1));
            let answer: Result<SnapshotResponse, Fatal> = Ok(SnapshotResponse { vote });
            message(ShardId(1), ReplicaId(2), &answer)
                .map(Response::new)
                .map_err(Status::internal)
        }
    }

    /// Sends a snapshot of `chunks` full chunks to `peer`, with sends
    /// stalled after `stall_after`; returns the result, and the bytes the
    /// guard counted as sent to the target.
    async fn send_snapshot(
        peer: SnapshotPeer,
        chunks: usize,
        stall_after: Duration,
    ) -> (Result<SnapshotResponse, StreamingError<TypeConfig>>, u64) {
        let pool = pool_with(peer).await;
        let pool = PeerPool {
            pacing: Arc::new(SnapshotPacing::new(0, 0, 1, stall_after)),
            ..pool
        };
        let owned = crate::state_machine::OwnedRange::new(crate::ShardKind::Meta, 0);
        let guard = Arc::new(JoinGuard::new(Arc::new(owned)));
        let mut factory =
            NetworkFactory::new(ShardId(1), ReplicaId(1), Arc::new(pool), guard.clone());
        let mut network = factory
            .new_client(ReplicaId(2), &ReplicaNode { node: PEER })
            .await;
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        file.write_all(&vec![7u8; chunks * SNAPSHOT_CHUNK_BYTES])
            .await
            .unwrap();
        let snapshot = Snapshot {
            meta: crate::types::SnapshotMeta::default(),
            snapshot: crate::state_machine::SnapshotFile { file, temp: None },
        };
        let vote = Vote::new(1, ReplicaId(1));
        let option = RPCOption::new(Duration::from_secs(1));
        let result = network
            .full_snapshot(vote, snapshot, std::future::pending(), option)
            .await;
        (result, guard.sent_to(ReplicaId(2)))
    }

    #[tokio::test]
    async fn a_snapshot_send_has_no_deadline_while_it_moves() {
        // Five chunks at 400 ms each: twice the stall limit in all.
        let peer = SnapshotPeer {
            per_chunk: Some(Duration::from_millis(400)),
        };
        let (sent, bytes) = send_snapshot(peer, 5, Duration::from_secs(1)).await;
        assert!(sent.is_ok(), "{sent:?}");
        assert_eq!(
            bytes,
            5 * SNAPSHOT_CHUNK_BYTES as u64,
            "the move's progress counts every byte"
        );
    }

    #[tokio::test]
    async fn a_snapshot_send_that_stops_moving_fails_with_the_reason() {
        let peer = SnapshotPeer { per_chunk: None };
        let started = std::time::Instant::now();
        let (sent, _) = send_snapshot(peer, 64, Duration::from_secs(1)).await;
        let Err(StreamingError::Unreachable(e)) = sent else {
            panic!("{sent:?}");
        };
        assert!(e.to_string().contains("stalled"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    struct OneAddress(String);

    const LOCAL: Origin = Origin {
        node: NodeId(1),
        incarnation: 1,
    };

    impl PeerDirectory for OneAddress {
        fn address(&self, _node: NodeId) -> Option<String> {
            Some(self.0.clone())
        }
    }

    async fn pool_with_peer() -> PeerPool {
        pool_with(ReversingPeer).await
    }

    async fn pool_with(peer: impl RaftRpc) -> PeerPool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(peer).max_decoding_message_size(MAX_RAFT_MESSAGE))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        PeerPool::new(
            LOCAL,
            Arc::new(OneAddress(address)),
            Arc::default(),
            Arc::new(SnapshotPacing::unlimited()),
        )
    }

    #[tokio::test]
    async fn calls_to_a_peer_that_stops_reading_fail_once_its_queue_is_full() {
        let pool = pool_with(DeafPeer).await;
        let stream = pool.stream(PEER, Lane::Bulk).unwrap();
        let payload = vec![7u8; 1 << 20];
        let mut held = Vec::new();
        let mut refused = None;
        for i in 0..256 {
            match stream.send(RaftCallKind::AppendEntries, call(&payload)) {
                Ok(pending) => held.push(pending),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
            // Let the stream's task hand what it can to HTTP/2.
            tokio::task::yield_now().await;
        }
        let (sent, why) = refused.expect("calls are refused once the queue is full");
        eprintln!("{sent} calls of 1 MiB taken before the first refusal: {why}");
        assert!(why.contains("not taking messages"), "{why}");
        let queued = lock(&stream.shared).queued.load(Ordering::Relaxed);
        assert!(queued <= MAX_STREAM_QUEUE_BYTES, "{queued} bytes queued");
        assert!(sent < 128, "{sent} MiB were taken before the first refusal");
    }

    fn call(payload: &[u8]) -> RaftMessage {
        RaftMessage {
            shard_id: 1,
            target_replica: 2,
            payload: payload.to_vec(),
            crc32: 0,
        }
    }

    const PEER: NodeId = NodeId(7);
    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn answers_find_their_callers_in_any_order() {
        let pool = pool_with_peer().await;
        let stream = pool.stream(PEER, Lane::Small).unwrap();
        let mut first = stream.send(RaftCallKind::Vote, call(b"first")).unwrap();
        let mut second = stream.send(RaftCallKind::Vote, call(b"second")).unwrap();
        let second = tokio::time::timeout(LONG, second.answer()).await.unwrap();
        let first = tokio::time::timeout(LONG, first.answer()).await.unwrap();
        assert_eq!(first.unwrap().payload, b"first");
        assert_eq!(second.unwrap().payload, b"second");
        let again = pool.stream(PEER, Lane::Small).unwrap();
        assert!(Arc::ptr_eq(&stream, &again), "an open stream is reused");
    }

    #[tokio::test]
    async fn a_stream_that_ends_fails_its_callers_at_once_and_is_replaced() {
        let pool = pool_with_peer().await;
        let stream = pool.stream(PEER, Lane::Small).unwrap();
        let mut waiting = stream.send(RaftCallKind::Vote, call(b"held")).unwrap();
        let _hang_up = stream.send(RaftCallKind::Vote, call(b"hang up")).unwrap();
        let answer = tokio::time::timeout(LONG, waiting.answer()).await;
        assert!(
            matches!(answer, Ok(Err(_))),
            "the waiting call fails when the stream ends: {answer:?}"
        );
        assert!(stream.is_closed());
        assert!(stream.send(RaftCallKind::Vote, call(b"late")).is_err());

        let fresh = pool.stream(PEER, Lane::Small).unwrap();
        assert!(!Arc::ptr_eq(&stream, &fresh));
        let mut a = fresh.send(RaftCallKind::Vote, call(b"a")).unwrap();
        let mut b = fresh.send(RaftCallKind::Vote, call(b"b")).unwrap();
        let a = tokio::time::timeout(LONG, a.answer()).await.unwrap();
        let b = tokio::time::timeout(LONG, b.answer()).await.unwrap();
        assert_eq!(
            (a.unwrap().payload, b.unwrap().payload),
            (b"a".to_vec(), b"b".to_vec())
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_is_forgotten() {
        let pool = pool_with_peer().await;
        let stream = pool.stream(PEER, Lane::Bulk).unwrap();
        let pending = stream
            .send(RaftCallKind::Vote, call(b"never answered"))
            .unwrap();
        assert_eq!(lock(&stream.shared).waiting.len(), 1);
        drop(pending);
        assert!(lock(&stream.shared).waiting.is_empty());
    }

    #[tokio::test]
    async fn a_cut_peer_is_unreachable() {
        let faults = Arc::new(NetworkFaults::default());
        let pool = PeerPool::new(
            LOCAL,
            Arc::new(OneAddress("127.0.0.1:1".into())),
            faults.clone(),
            Arc::new(SnapshotPacing::unlimited()),
        );
        faults.cut(PEER);
        assert!(pool.stream(PEER, Lane::Small).is_err());
        faults.heal(PEER);
        assert!(pool.stream(PEER, Lane::Small).is_ok());
    }

    #[test]
    fn large_calls_take_the_bulk_lane() {
        assert_eq!(Lane::of(&call(&[0; BULK_CALL_BYTES])), Lane::Small);
        assert_eq!(Lane::of(&call(&[0; BULK_CALL_BYTES + 1])), Lane::Bulk);
    }
}
