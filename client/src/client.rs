//! The client API.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use atoll_proto::keyhash::key_hash;
use atoll_proto::limits::{MAX_BATCH_BYTES, MAX_BATCH_OPS};
use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::kv_client::KvClient;
use atoll_proto::v1::{
    self as wire, cas_request, ClusterMap, KeyValue, Limit, ListMovesRequest, ListMovesResponse,
    MoveReplicaRequest, NodeState, PlacementLimits, PlacementPlanRequest, PlacementPlanResponse,
    SetNodeCapacityRequest, SetNodeStateRequest, SetPlacementLimitsRequest, SetPlacementRequest,
    SplitShardRequest, SplitShardResponse, StatusRequest, StatusResponse,
};
use atoll_proto::ShardId;
use futures::future::{join_all, try_join_all};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::router::{CallKind, Router, Target};
use crate::session::Sessions;
use crate::types::{BatchOp, Consistency, Expect};

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one call, retries included.
    pub timeout: Duration,
    /// How long one attempt of a call waits for its server before trying
    /// another (a leader cut off from its peers never answers). Keep it
    /// above the cluster's election timeout, so that the next attempt finds
    /// the new leader. A write retried this way keeps its write id: it
    /// applies at most once.
    pub attempt_timeout: Duration,
    /// How long connecting to one server may take.
    pub connect_timeout: Duration,
    /// The client's island: stale reads go there first.
    pub island: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            island: None,
        }
    }
}

/// A handle on an Atoll cluster. Cheap to clone; clones share the cached
/// map, leaders and connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) router: Arc<Router>,
    sessions: Arc<Sessions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.sessions.client_id())
            .finish_non_exhaustive()
    }
}

/// Most times one write is sent, each in a new session, while its
/// session is refused (`SESSION_EXPIRED`) and no attempt may have applied.
const SESSION_ROUNDS: u32 = 3;
/// Rounds [`Client::put_many`] and [`Client::batch_get`] send keys in: a
/// group of keys that a split divided between two shards goes again,
/// grouped by the new map.
const REGROUP_ROUNDS: u32 = 3;

/// A write request, which carries its shard and a write id.
trait WriteRequest: Clone {
    fn set_target(&mut self, shard: ShardId, id: wire::WriteId);
}

macro_rules! write_request {
    ($($message:ty),*) => {$(
        impl WriteRequest for $message {
            fn set_target(&mut self, shard: ShardId, id: wire::WriteId) {
                self.shard_id = shard.get();
                self.write_id = Some(id);
            }
        }
    )*};
}

write_request!(
    wire::PutRequest,
    wire::DeleteRequest,
    wire::CasRequest,
    wire::BatchRequest
);

pub(crate) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

impl Client {
    /// Connects with default options; `endpoints` are `host:port` of any
    /// nodes (the rest are learned from the cluster map).
    pub async fn connect<I, S>(endpoints: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let seeds: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if seeds.is_empty() {
            return Err(Error::NoEndpoint("no endpoints given".into()));
        }
        let router = Router::new(
            seeds,
            options.island,
            options.timeout,
            options.attempt_timeout,
            options.connect_timeout,
        );
        router.refresh().await?;
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Ok(Client {
            router: Arc::new(router),
            sessions: Arc::new(Sessions::new(client_id)),
        })
    }

    /// This client's id in write ids.
    pub fn client_id(&self) -> u64 {
        self.sessions.client_id()
    }

    /// Sends the write `msg` for the keys with `hashes` to the shard that
    /// owns them with `send`, under a write id of this client's session
    /// there (docs/design/sessions.md). The shard is found again on every
    /// attempt, so a write follows a split. If the shard refuses it with
    /// `SESSION_EXPIRED` and no attempt may have applied, it is sent again
    /// with a new id, which opens a new session.
    async fn write<M, T, F, Fut>(&self, hashes: Vec<u64>, msg: M, send: F) -> Result<T>
    where
        M: WriteRequest,
        F: Fn(KvClient<Channel>, M, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let first = hashes.first().copied().unwrap_or_default();
        let target = Target::Owner(hashes);
        let mut rounds = 1;
        loop {
            let ticket = self.sessions.begin(self.shard_of_hash(first).await?);
            let result = self
                .router
                .call_to(&target, CallKind::Write, |client, shard, timeout| {
                    let mut msg = msg.clone();
                    msg.set_target(shard, ticket.write_id_to(shard));
                    send(client, msg, timeout)
                })
                .await;
            match result {
                Err(Error::SessionExpired(_)) if rounds < SESSION_ROUNDS => {
                    ticket.expired();
                    rounds += 1;
                }
                Err(Error::SessionExpired(message)) => {
                    ticket.expired();
                    return Err(Error::SessionExpired(message));
                }
                Ok(_) | Err(Error::CasFailed { .. }) => {
                    ticket.answered();
                    return result;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn shard_of(&self, key: &[u8]) -> Result<ShardId> {
        self.shard_of_hash(key_hash(key)).await
    }

    async fn shard_of_hash(&self, hash: u64) -> Result<ShardId> {
        let map = self.router.current_map().await?;
        map.shard_for_hash(hash)
            .map(|s| ShardId(s.id))
            .ok_or_else(|| Error::StaleMap(format!("no shard owns hash {hash:#x}")))
    }

    fn read_kind(consistency: Consistency) -> CallKind {
        match consistency {
            Consistency::Linearizable => CallKind::LeaderRead,
            Consistency::Stale => CallKind::AnyReplica,
        }
    }

    /// The current value of `key` (linearizable).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// The current value of `key` read with `consistency`.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>> {
        let key = key.as_ref();
        let target = Target::Owner(vec![key_hash(key)]);
        self.router
            .call_to(&target, Self::read_kind(consistency), |mut c, shard, t| {
                let msg = wire::GetRequest {
                    shard_id: shard.get(),
                    key: key.to_vec(),
                    consistency: consistency.wire(),
                };
                async move { c.get(request(msg, t)).await.map(|r| r.into_inner().kv) }
            })
            .await
    }

    /// Values of many keys, in order (`None` where absent). Keys are grouped
    /// per shard and the groups read in parallel. A shard's keys are read
    /// as of one point in time when their values fit in one read page of
    /// the server (4 MiB by default); larger groups are read page by page,
    /// each page a linearizable read of its own.
    pub async fn batch_get<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        consistency: Consistency,
    ) -> Result<Vec<Option<KeyValue>>> {
        let mut round = 0;
        loop {
            round += 1;
            match self.batch_get_once(keys, consistency).await {
                // A split divided a group's shard: read again by the new map.
                Err(Error::InvalidArgument {
                    limit: Limit::BatchCrossesShards,
                    ..
                }) if round < REGROUP_ROUNDS => {}
                result => return result,
            }
        }
    }

    async fn batch_get_once<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        consistency: Consistency,
    ) -> Result<Vec<Option<KeyValue>>> {
        let mut groups: std::collections::BTreeMap<ShardId, Vec<usize>> = Default::default();
        for (i, key) in keys.iter().enumerate() {
            groups
                .entry(self.shard_of(key.as_ref()).await?)
                .or_default()
                .push(i);
        }
        let calls = groups.into_values().map(|idx| {
            let shard_keys: Vec<Vec<u8>> = idx.iter().map(|&i| keys[i].as_ref().to_vec()).collect();
            async move {
                let mut results = Vec::with_capacity(shard_keys.len());
                while results.len() < shard_keys.len() {
                    let rest = &shard_keys[results.len()..];
                    let target = Target::Owner(rest.iter().map(|k| key_hash(k)).collect());
                    let page = self
                        .router
                        .call_to(&target, Self::read_kind(consistency), |mut c, shard, t| {
                            let msg = wire::BatchGetRequest {
                                shard_id: shard.get(),
                                keys: rest.to_vec(),
                                consistency: consistency.wire(),
                                allow_partial: true,
                            };
                            async move {
                                c.batch_get(request(msg, t))
                                    .await
                                    .map(|r| r.into_inner().results)
                            }
                        })
                        .await?;
                    if page.is_empty() || page.len() > rest.len() {
                        return Err(Error::Internal(format!(
                            "a BatchGet of {} keys was answered with {} results",
                            rest.len(),
                            page.len()
                        )));
                    }
                    results.extend(page);
                }
                Ok::<_, Error>((idx, results))
            }
        });
        let mut out = vec![None; keys.len()];
        for (idx, results) in try_join_all(calls).await? {
            for (i, result) in idx.into_iter().zip(results) {
                out[i] = result.kv;
            }
        }
        Ok(out)
    }

    /// Stores `value` under `key`; returns the new version.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        self.put_with_ttl(key, value, None).await
    }

    /// Stores `value` under `key`, expiring after `ttl` if given.
    pub async fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<u64> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let msg = wire::PutRequest {
            shard_id: 0,
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            write_id: None,
        };
        self.write(vec![key_hash(key)], msg, |mut c, msg, t| async move {
            c.put(request(msg, t)).await.map(|r| r.into_inner().version)
        })
        .await
    }

    /// Deletes `key`; returns whether a live key was removed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        let msg = wire::DeleteRequest {
            shard_id: 0,
            key: key.to_vec(),
            write_id: None,
        };
        self.write(vec![key_hash(key)], msg, |mut c, msg, t| async move {
            c.delete(request(msg, t))
                .await
                .map(|r| r.into_inner().deleted)
        })
        .await
    }

    /// Sets `key` to `new_value` (or deletes it, for `None`) if it matches
    /// `expect`; returns the new version, or [`Error::CasFailed`] with the
    /// current value.
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expect: Expect,
        new_value: Option<Vec<u8>>,
    ) -> Result<u64> {
        let key = key.as_ref();
        let expected = match expect {
            Expect::Version(v) => cas_request::Expected::ExpectedVersion(v),
            Expect::Value(v) => cas_request::Expected::ExpectedValue(v),
        };
        let msg = wire::CasRequest {
            shard_id: 0,
            key: key.to_vec(),
            expected: Some(expected),
            new_value,
            ttl_ms: 0,
            write_id: None,
        };
        self.write(vec![key_hash(key)], msg, |mut c, msg, t| async move {
            c.compare_and_swap(request(msg, t))
                .await
                .map(|r| r.into_inner().version)
        })
        .await
    }

    /// Applies `ops` atomically; all keys must be in one shard (share a
    /// hash tag). Returns the batch's version.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<u64> {
        let Some(first) = ops.first() else {
            return Err(Error::InvalidArgument {
                limit: Limit::MissingField,
                message: "batch has no operations".into(),
            });
        };
        let shard = self.shard_of(first.key()).await?;
        for op in &ops {
            if self.shard_of(op.key()).await? != shard {
                return Err(Error::InvalidArgument {
                    limit: Limit::BatchCrossesShards,
                    message: "batch keys are in different shards; give them a common hash tag"
                        .into(),
                });
            }
        }
        self.send_batch(&ops).await
    }

    /// Stores every pair, for bulk loads. Unlike [`Client::batch`] the keys
    /// may lie in any shards: the pairs are grouped per shard, each group is
    /// written as atomic batches within the server's batch limits, and the
    /// batches are sent in parallel. The whole is not atomic: on an error,
    /// some batches may have been applied and others not.
    pub async fn put_many(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut pending: Vec<BatchOp> = pairs
            .into_iter()
            .map(|(key, value)| BatchOp::put(key, value))
            .collect();
        let mut round = 0;
        while !pending.is_empty() {
            round += 1;
            let batches = self.batches_by_shard(std::mem::take(&mut pending)).await?;
            let results = join_all(batches.iter().map(|ops| self.send_batch(ops))).await;
            for (ops, result) in batches.into_iter().zip(results) {
                match result {
                    Ok(_) => {}
                    // A split divided the batch's shard meanwhile: its
                    // pairs go again, grouped by the new map.
                    Err(Error::InvalidArgument {
                        limit: Limit::BatchCrossesShards,
                        ..
                    }) if round < REGROUP_ROUNDS => pending.extend(ops),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// `ops` grouped by shard into batches within the server's limits.
    async fn batches_by_shard(&self, ops: Vec<BatchOp>) -> Result<Vec<Vec<BatchOp>>> {
        // Per shard: its batches, each with its size in bytes.
        let mut groups: std::collections::BTreeMap<ShardId, Vec<(Vec<BatchOp>, usize)>> =
            Default::default();
        for op in ops {
            let batches = groups.entry(self.shard_of(op.key()).await?).or_default();
            let size = op.key().len()
                + match &op {
                    BatchOp::Put { value, .. } => value.len(),
                    _ => 0,
                };
            match batches.last_mut() {
                Some((ops, bytes))
                    if ops.len() < MAX_BATCH_OPS && *bytes + size <= MAX_BATCH_BYTES =>
                {
                    ops.push(op);
                    *bytes += size;
                }
                _ => batches.push((vec![op], size)),
            }
        }
        Ok(groups.into_values().flatten().map(|(ops, _)| ops).collect())
    }

    /// Sends `ops`, all in one shard, as one atomic batch.
    async fn send_batch(&self, ops: &[BatchOp]) -> Result<u64> {
        let msg = wire::BatchRequest {
            shard_id: 0,
            ops: ops.iter().map(BatchOp::wire).collect(),
            write_id: None,
        };
        let hashes = ops.iter().map(|op| key_hash(op.key())).collect();
        self.write(hashes, msg, |mut c, msg, t| async move {
            c.batch(request(msg, t))
                .await
                .map(|r| r.into_inner().version)
        })
        .await
    }

    /// The cluster map (refreshed from the servers).
    pub async fn cluster_map(&self) -> Result<Arc<ClusterMap>> {
        self.router.refresh().await
    }

    /// Every node's status, as gathered by one node.
    pub async fn cluster_status(&self) -> Result<StatusResponse> {
        self.on_any_node(|mut client, timeout| async move {
            client
                .status(request(StatusRequest {}, timeout))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Moves node `node` along its lifecycle (`JOINING → UP ⇄ DRAINING →
    /// REMOVED`); with `dead`, removes it from any state at once, for a
    /// node that is gone for good. A change the cluster refuses fails with
    /// [`Error::Refused`] and the reason. Returns the map version that
    /// shows the change.
    pub async fn set_node_state(&self, node: u64, state: NodeState, dead: bool) -> Result<u64> {
        let msg = SetNodeStateRequest {
            node_id: node,
            state: state as i32,
            dead,
        };
        self.on_any_node(|mut client, timeout| async move {
            client
                .set_node_state(request(msg, timeout))
                .await
                .map(|r| r.into_inner().map_version)
        })
        .await
    }

    /// Sets node `node`'s relative capacity weight, which placement weighs.
    /// Returns the map version that shows it.
    pub async fn set_node_capacity(&self, node: u64, capacity: u64) -> Result<u64> {
        let msg = SetNodeCapacityRequest {
            node_id: node,
            capacity,
        };
        self.on_any_node(|mut client, timeout| async move {
            client
                .set_node_capacity(request(msg, timeout))
                .await
                .map(|r| r.into_inner().map_version)
        })
        .await
    }

    /// Starts moving `shard`'s replica on node `from_node` to node
    /// `to_node`; the cluster carries the move out in the background
    /// ([`Client::list_moves`] shows it). Refused, with the reason, when the
    /// shard already has a move in progress, the target holds a replica of
    /// the shard or is not up, or the move would put two of the shard's
    /// replicas on one island where it had them on distinct ones.
    pub async fn move_replica(&self, shard: u64, from_node: u64, to_node: u64) -> Result<u64> {
        let msg = MoveReplicaRequest {
            shard_id: shard,
            from_node,
            to_node,
        };
        self.on_any_node(|mut client, timeout| async move {
            client
                .move_replica(request(msg, timeout))
                .await
                .map(|r| r.into_inner().map_version)
        })
        .await
    }

    /// Splits data shard `shard` at hash `at` (0: the middle of its range):
    /// the shard keeps the lower half and a new shard on the same nodes
    /// takes the upper half. Answers once the split is recorded; the new
    /// shard appears in the map when the split finishes.
    pub async fn split_shard(&self, shard: u64, at: u64) -> Result<SplitShardResponse> {
        let msg = SplitShardRequest {
            shard_id: shard,
            at,
        };
        self.on_any_node(|mut client, timeout| async move {
            client
                .split_shard(request(msg, timeout))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Pauses placement (`true`: no move starts, repairs included; moves in
    /// progress finish) or resumes it.
    pub async fn set_placement_paused(&self, paused: bool) -> Result<u64> {
        self.on_any_node(|mut client, timeout| async move {
            client
                .set_placement(request(SetPlacementRequest { paused }, timeout))
                .await
                .map(|r| r.into_inner().map_version)
        })
        .await
    }

    /// Sets the limits on moves that are not 0 in `limits` and keeps the
    /// others; with `reset`, every limit first goes back to the nodes'
    /// config. Returns the new map version.
    pub async fn set_placement_limits(&self, limits: PlacementLimits, reset: bool) -> Result<u64> {
        self.on_any_node(|mut client, timeout| async move {
            let wanted = SetPlacementLimitsRequest {
                limits: Some(limits),
                reset,
            };
            client
                .set_placement_limits(request(wanted, timeout))
                .await
                .map(|r| r.into_inner().map_version)
        })
        .await
    }

    /// The replica moves in progress, as one node's map has them.
    pub async fn list_moves(&self) -> Result<ListMovesResponse> {
        self.on_any_node(|mut client, timeout| async move {
            client
                .list_moves(request(ListMovesRequest {}, timeout))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The moves the controller would start next, with the bytes each
    /// would copy, as the meta shard's leader plans them.
    pub async fn placement_plan(&self) -> Result<PlacementPlanResponse> {
        self.on_any_node(|mut client, timeout| async move {
            client
                .placement_plan(request(PlacementPlanRequest {}, timeout))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Calls the `Cluster` service of the map's nodes in turn until one
    /// answers, within the client's deadline. A node that cannot be
    /// reached, or answers with a retryable error (the meta shard's leader
    /// moving, a new cluster's map not published yet), is skipped, and the
    /// nodes are asked again after a pause: every change these calls make
    /// is idempotent, so asking again is safe.
    async fn on_any_node<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(ClusterClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.router.timeout();
        let mut last = Error::NoEndpoint("the map lists no node".into());
        for attempt in 0.. {
            let map = self.router.current_map().await?;
            let reachable = map
                .nodes
                .iter()
                .filter(|n| n.state != NodeState::Removed as i32);
            for node in reachable {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                let client = ClusterClient::new(self.router.channel(&node.address)?);
                match call(client, left).await {
                    Ok(answer) => return Ok(answer),
                    Err(status) => match Error::from(status) {
                        e if e.is_retryable() => last = e,
                        e => return Err(e),
                    },
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(crate::router::backoff(attempt).min(left)).await;
        }
        Err(last)
    }
}
