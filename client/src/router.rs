//! Routing and retries: the cached cluster map and shard leaders, one
//! channel per server, and the retry loop every call goes through.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atoll_proto::limits::MAX_MESSAGE_BYTES;
use atoll_proto::v1::cluster_client::ClusterClient;
use atoll_proto::v1::kv_client::KvClient;
use atoll_proto::v1::{ClusterMap, GetClusterMapRequest, Limit, Shard};
use atoll_proto::{NodeId, ShardId};
use rand::Rng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// Whether a call changes data (and so may be ambiguous when it fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A read that must go to the leader.
    LeaderRead,
    /// A read any replica may serve (nearest island first).
    AnyReplica,
    /// A write (carries a dedup id, so retrying it is safe).
    Write,
}

#[derive(Default)]
struct Cache {
    map: Option<Arc<ClusterMap>>,
    /// Shard -> node believed to lead it.
    leaders: HashMap<u64, NodeId>,
}

pub(crate) struct Router {
    seeds: Vec<String>,
    island: Option<String>,
    timeout: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    cache: RwLock<Cache>,
    channels: Mutex<HashMap<String, Channel>>,
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 10u64.saturating_mul(1 << attempt.min(6)).min(500);
    let jitter = rand::rng().random_range(base / 2..=base);
    Duration::from_millis(jitter)
}

/// The seeds, then the map's node addresses, each once, in that order.
fn known_addresses(seeds: &[String], map: Option<&ClusterMap>) -> Vec<String> {
    let nodes = map
        .into_iter()
        .flat_map(|m| m.nodes.iter().map(|n| &n.address));
    let mut seen = HashSet::new();
    seeds
        .iter()
        .chain(nodes)
        .filter(|a| seen.insert(a.as_str()))
        .cloned()
        .collect()
}

/// Where a call goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// One shard, by id.
    Shard(ShardId),
    /// The shard that owns all these key hashes, found in the current map
    /// on every attempt, so a call follows a split of its shard.
    Owner(Vec<u64>),
}

impl Target {
    /// The shard the target names in `map`.
    fn shard(&self, map: &ClusterMap) -> Result<ShardId> {
        let hashes = match self {
            Target::Shard(shard) => return Ok(*shard),
            Target::Owner(hashes) => hashes,
        };
        let mut owner = None;
        for &hash in hashes {
            let Some(shard) = map.shard_for_hash(hash) else {
                return Err(Error::StaleMap(format!(
                    "no shard owns hash {hash:#x} in map v{}",
                    map.map_version
                )));
            };
            match owner {
                Some(id) if id != shard.id => {
                    return Err(Error::InvalidArgument {
                        limit: Limit::BatchCrossesShards,
                        message: format!(
                            "the keys are in different shards (map v{}); give them a common \
                             hash tag",
                            map.map_version
                        ),
                    })
                }
                _ => owner = Some(shard.id),
            }
        }
        owner.map(ShardId).ok_or_else(|| Error::InvalidArgument {
            limit: Limit::MissingField,
            message: "no keys".into(),
        })
    }
}

/// Whether to wait before retrying after a `NotLeader` answer: not after
/// the first hint of a call, which usually names the new leader, but after
/// any later one, so hints that bounce between nodes during a leader
/// transfer do not spin; and always when the answer names no leader.
fn pause_after_hint(hinted: bool, hints_in_call: u32) -> bool {
    !hinted || hints_in_call >= 2
}

impl Router {
    pub fn new(
        seeds: Vec<String>,
        island: Option<String>,
        timeout: Duration,
        attempt_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            seeds,
            island,
            timeout,
            attempt_timeout,
            connect_timeout,
            cache: RwLock::new(Cache::default()),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| Error::NoEndpoint(format!("{address}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .clone()
    }

    /// Fetches the newest map any known server has.
    pub async fn refresh(&self) -> Result<Arc<ClusterMap>> {
        let addresses = known_addresses(&self.seeds, self.map().as_deref());
        let mut last_error = String::from("no endpoints given");
        let mut best: Option<(ClusterMap, Vec<atoll_proto::v1::ShardLeader>)> = None;
        for address in &addresses {
            let channel = self.channel(address)?;
            let mut client = ClusterClient::new(channel);
            let mut request = tonic::Request::new(GetClusterMapRequest {});
            request.set_timeout(self.connect_timeout.max(Duration::from_secs(1)));
            match client.get_cluster_map(request).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let Some(map) = resp.map else { continue };
                    // The first answer is used: a node whose map is behind
                    // is corrected later by a STALE_MAP answer.
                    best = Some((map, resp.leaders));
                    break;
                }
                Err(status) => last_error = format!("{address}: {}", status.message()),
            }
        }
        let (map, leaders) = best.ok_or(Error::NoEndpoint(last_error))?;
        let map = Arc::new(map);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache
            .map
            .as_ref()
            .is_none_or(|m| m.map_version <= map.map_version)
        {
            cache.map = Some(map.clone());
        }
        for l in leaders {
            cache.leaders.entry(l.shard_id).or_insert(NodeId(l.node_id));
        }
        Ok(cache.map.clone().unwrap_or(map))
    }

    pub async fn current_map(&self) -> Result<Arc<ClusterMap>> {
        match self.map() {
            Some(m) => Ok(m),
            None => self.refresh().await,
        }
    }

    fn set_leader(&self, shard: u64, node: Option<NodeId>) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        match node {
            Some(n) => cache.leaders.insert(shard, n),
            None => cache.leaders.remove(&shard),
        };
    }

    /// The node to try for `shard` on attempt `attempt`.
    fn pick(
        &self,
        map: &ClusterMap,
        shard: &Shard,
        kind: CallKind,
        attempt: u32,
    ) -> Option<String> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let address_of = |node: NodeId| map.node(node).map(|n| n.address.clone());
        let mut candidates: Vec<NodeId> =
            shard.replicas.iter().map(|r| NodeId(r.node_id)).collect();
        if kind == CallKind::AnyReplica {
            if let Some(island) = &self.island {
                // Nearest island first.
                candidates.sort_by_key(|n| map.node(*n).is_none_or(|node| &node.island != island));
            }
            if attempt == 0 {
                return candidates.first().and_then(|n| address_of(*n));
            }
        } else if let Some(leader) = cache.leaders.get(&shard.id) {
            if attempt == 0 || !attempt.is_multiple_of(3) {
                return address_of(*leader);
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let i = attempt as usize % candidates.len();
        address_of(candidates[i])
    }

    /// Runs `call` against the right node for `shard`, retrying retryable
    /// failures until the deadline.
    pub async fn call<T, F, Fut>(&self, shard: ShardId, kind: CallKind, call: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.call_to(&Target::Shard(shard), kind, |client, _, timeout| {
            call(client, timeout)
        })
        .await
    }

    /// Runs `call` against the right node for `target`'s shard (handed to
    /// `call`), retrying retryable failures until the deadline.
    pub async fn call_to<T, F, Fut>(&self, target: &Target, kind: CallKind, call: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, ShardId, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut maybe_applied = false;
        let mut attempt = 0u32;
        // The node whose attempt last went unanswered in this call: likely
        // a leader cut off from its peers, which other nodes may still name
        // as leader until they elect another.
        let mut silent: Option<String> = None;
        let mut hints = 0u32;
        loop {
            let map = self.current_map().await?;
            let shard = target.shard(&map)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let pick = |attempt| {
                map.shard(shard)
                    .and_then(|s| self.pick(&map, s, kind, attempt))
            };
            let mut choice = pick(attempt);
            if choice.is_some() && choice == silent {
                attempt += 1;
                choice = pick(attempt);
            }
            let error = match choice.clone() {
                None => Error::StaleMap(format!(
                    "{shard} has no replicas in map v{}",
                    map.map_version
                )),
                Some(address) => {
                    let client = KvClient::new(self.channel(&address)?)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    let budget = remaining.min(self.attempt_timeout);
                    match tokio::time::timeout(budget, call(client, shard, budget)).await {
                        Ok(Ok(value)) => {
                            if kind != CallKind::AnyReplica {
                                if let Some(node) = map.nodes.iter().find(|n| n.address == address)
                                {
                                    self.set_leader(shard.get(), Some(NodeId(node.id)));
                                }
                            }
                            return Ok(value);
                        }
                        Ok(Err(status)) => Error::from(status),
                        Err(_) => Error::Timeout(format!("no answer from {address}")),
                    }
                }
            };
            if matches!(error, Error::Timeout(_) | Error::Transport(_)) {
                silent = choice;
            }
            if kind == CallKind::Write && error.may_have_applied() {
                maybe_applied = true;
            }
            let mut pause = true;
            match &error {
                Error::NotLeader { leader } => {
                    // A hint naming the node that just went silent is stale.
                    let hinted = leader
                        .as_ref()
                        .map(|l| NodeId(l.node_id))
                        .filter(|&n| map.node(n).map(|node| &node.address) != silent.as_ref());
                    self.set_leader(shard.get(), hinted);
                    hints += u32::from(hinted.is_some());
                    pause = pause_after_hint(hinted.is_some(), hints);
                }
                Error::StaleMap(_) => {
                    let _ = self.refresh().await;
                }
                Error::Transport(_) | Error::Timeout(_) | Error::ShardUnavailable(_) => {
                    self.set_leader(shard.get(), None);
                }
                // The leader is busy, not gone: try it again after a pause.
                Error::Overloaded(_) => {}
                // This attempt was refused; an earlier one may have applied.
                Error::SessionExpired(message) if maybe_applied => {
                    return Err(Error::Ambiguous(format!(
                        "an attempt may have applied, then the session expired: {message}"
                    )))
                }
                _ => return Err(error),
            }
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(if maybe_applied {
                    Error::Ambiguous(format!("last error: {error}"))
                } else {
                    error
                });
            }
            if pause {
                let wait = backoff(attempt).min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_proto::v1::{Node, Replica};

    use super::*;

    fn map() -> ClusterMap {
        let nodes = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, island)| Node {
                id: i as u64 + 1,
                island: (*island).into(),
                address: format!("node-{}:1", i + 1),
                ..Default::default()
            })
            .collect();
        let replicas = (1..=3)
            .map(|n| Replica {
                replica_id: 10 + n,
                node_id: n,
            })
            .collect();
        ClusterMap {
            nodes,
            shards: vec![Shard {
                id: 1,
                range_start: 0,
                range_last: u64::MAX,
                replicas,
                epoch: 1,
            }],
            ..Default::default()
        }
    }

    fn router(island: Option<&str>) -> Router {
        Router::new(
            vec![],
            island.map(str::to_string),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn stale_reads_go_to_the_clients_island_first() {
        let map = map();
        let shard = &map.shards[0];
        let r = router(Some("c"));
        assert_eq!(
            r.pick(&map, shard, CallKind::AnyReplica, 0).as_deref(),
            Some("node-3:1")
        );
        // Later attempts move on to other replicas.
        let tried: std::collections::HashSet<_> = (0..3)
            .filter_map(|a| r.pick(&map, shard, CallKind::AnyReplica, a))
            .collect();
        assert_eq!(tried.len(), 3);
    }

    #[test]
    fn leader_reads_and_writes_go_to_the_cached_leader() {
        let map = map();
        let shard = &map.shards[0];
        let r = router(Some("c"));
        r.set_leader(1, Some(NodeId(2)));
        assert_eq!(
            r.pick(&map, shard, CallKind::Write, 0).as_deref(),
            Some("node-2:1")
        );
        assert_eq!(
            r.pick(&map, shard, CallKind::LeaderRead, 1).as_deref(),
            Some("node-2:1")
        );
        r.set_leader(1, None);
        let tried: std::collections::HashSet<_> = (0..3)
            .filter_map(|a| r.pick(&map, shard, CallKind::Write, a))
            .collect();
        assert_eq!(
            tried.len(),
            3,
            "without a known leader every replica is tried"
        );
    }

    #[test]
    fn each_known_address_is_tried_once() {
        let seeds: Vec<String> = ["node-2:1", "node-1:1", "node-2:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let addresses = known_addresses(&seeds, Some(&map()));
        assert_eq!(addresses, ["node-2:1", "node-1:1", "node-3:1"]);
    }

    #[test]
    fn hints_that_bounce_between_two_nodes_are_followed_with_backoff() {
        assert!(
            !pause_after_hint(true, 1),
            "the first hint is followed at once"
        );
        assert!(pause_after_hint(true, 2), "the second one waits");
        assert!(pause_after_hint(true, 7));
        assert!(pause_after_hint(false, 0), "no hint: wait");
    }
}
