//! The `atoll.v1.Kv` service: validates a request, routes it to the local
//! replica of its shard, and answers from the state machine (writes) or the
//! engine (reads, after a ReadIndex barrier unless `stale`).

use std::sync::Arc;

use atoll_proto::keyhash::key_hash;
use atoll_proto::v1::kv_server::Kv;
use atoll_proto::v1::{self as wire, batch_op, cas_request, Limit, ReadConsistency};
use atoll_raft::state_machine::ttl::read_clock;
use atoll_raft::{BatchStep, Command, Expected, Outcome, Replica};
use atoll_storage::keys::data_key_with_hash;
use atoll_storage::{Cf, Engine, EngineSnapshot, Record};
use tonic::{Request, Response, Status};

use crate::errors::ApiError;
use crate::node::Node;
use crate::{scan, validate};

/// Implements `atoll.v1.Kv` on a node.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn read_replica(
        &self,
        shard_id: u64,
        keys: &[&[u8]],
        consistency: i32,
    ) -> Result<Replica, ApiError> {
        let replica = self.node.route(shard_id, keys)?;
        let stale = consistency == ReadConsistency::Stale as i32
            || self.node.config().testing.stale_linearizable_reads;
        if !stale {
            self.node.read_barrier(&replica).await?;
        }
        // After the barrier: a split the client's map (or this node's)
        // does not show yet has applied here, and its keys are read from
        // the new shard only.
        if let Some(stray) = keys.iter().find(|k| !replica.owns(key_hash(k))) {
            return Err(ApiError::StaleMap {
                map_version: self.node.map().map_version,
                message: format!(
                    "key {:?} is no longer in shard {}: the shard split",
                    String::from_utf8_lossy(stray),
                    replica.spec.shard
                ),
            });
        }
        Ok(replica)
    }

    /// The live value of `key` in the local engine. One key needs no
    /// engine view: the clock is read first (the replica publishes it after
    /// the batch that set it has landed), then the record, which is as new
    /// or newer. A record newer than the clock was written at a later clock
    /// and is judged live as it was then; an unchanged one is judged as in
    /// the state the clock came from. Either way the answer is that of one
    /// state at or after the read barrier.
    fn local_get(&self, replica: &Replica, key: &[u8]) -> Result<Option<wire::KeyValue>, ApiError> {
        let clock = replica.log_clock();
        let stored = self.node.engine().get(Cf::Data, &data_key(key))?;
        live(key, stored, clock)
    }

    fn max_value(&self) -> u64 {
        self.node.config().limits.max_value_bytes.0
    }

    /// The bytes one read answer holds (`limits.read_page_bytes`).
    fn read_page(&self) -> usize {
        self.node.config().limits.read_page_bytes.0 as usize
    }
}

/// A consistent view of the engine and the log clock of `replica` in it,
/// by which every read judges expiry: apply writes the clock in the same
/// batch as the data it judges, so a read agrees with every replica on
/// which keys are live at the state it sees (docs/design/ttl-and-clocks.md).
pub(crate) fn read_view<'a>(
    engine: &'a dyn Engine,
    replica: &Replica,
) -> Result<(Box<dyn EngineSnapshot + 'a>, u64), ApiError> {
    let view = engine.snapshot();
    let clock = read_clock(view.as_ref(), replica.spec.replica)?;
    Ok((view, clock))
}

fn data_key(key: &[u8]) -> Vec<u8> {
    data_key_with_hash(key_hash(key), key)
}

/// The value a stored record gives `key` at log clock `clock`: none if
/// absent or expired.
fn live(
    key: &[u8],
    stored: Option<Vec<u8>>,
    clock: u64,
) -> Result<Option<wire::KeyValue>, ApiError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    let record = Record::decode(&stored)?;
    Ok((!record.is_expired(clock)).then(|| kv(key.to_vec(), record)))
}

pub(crate) fn kv(key: Vec<u8>, record: Record) -> wire::KeyValue {
    wire::KeyValue {
        key,
        value: record.value,
        version: record.version,
        expires_at_ms: record.expires_at_ms,
    }
}

/// Turns an outcome that is not a success into its error.
fn check(outcome: Outcome) -> Result<Outcome, ApiError> {
    match outcome {
        Outcome::CasFailed { key, current } => Err(ApiError::CasFailed {
            current: current.map(|c| wire::KeyValue {
                key: key.clone(),
                value: c.value,
                version: c.version,
                expires_at_ms: c.expires_at_ms,
            }),
            key: String::from_utf8_lossy(&key).into_owned(),
            value_omitted: false,
        }),
        Outcome::CasFailedValueOmitted {
            key,
            version,
            expires_at_ms,
        } => Err(ApiError::CasFailed {
            current: Some(wire::KeyValue {
                key: key.clone(),
                value: Vec::new(),
                version,
                expires_at_ms,
            }),
            key: String::from_utf8_lossy(&key).into_owned(),
            value_omitted: true,
        }),
        other => Ok(other),
    }
}

fn written_version(outcome: Outcome) -> Result<u64, ApiError> {
    match check(outcome)? {
        Outcome::Written { version } => Ok(version),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, Status> {
        let req = request.into_inner();
        validate::key(&req.key)?;
        let replica = self
            .read_replica(req.shard_id, &[&req.key], req.consistency)
            .await?;
        Ok(Response::new(wire::GetResponse {
            kv: self.local_get(&replica, &req.key)?,
        }))
    }

    async fn batch_get(
        &self,
        request: Request<wire::BatchGetRequest>,
    ) -> Result<Response<wire::BatchGetResponse>, Status> {
        let req = request.into_inner();
        validate::batch(req.keys.len(), req.keys.iter().map(Vec::len).sum())?;
        for key in &req.keys {
            validate::key(key)?;
        }
        let keys: Vec<&[u8]> = req.keys.iter().map(Vec::as_slice).collect();
        let replica = self
            .read_replica(req.shard_id, &keys, req.consistency)
            .await?;
        // One view and its clock: the keys are read as of one applied
        // index, never half before and half after a batch.
        let (view, clock) = read_view(self.node.engine().as_ref(), &replica)?;
        let budget = self.read_page();
        let mut results = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for k in &keys {
            let stored = view.get(Cf::Data, &data_key(k)).map_err(ApiError::from)?;
            let kv = live(k, stored, clock)?;
            let size = kv
                .as_ref()
                .map_or(0, |kv| kv.key.len() + kv.value.len() + 16);
            if !results.is_empty() && bytes + size > budget {
                if req.allow_partial {
                    break;
                }
                return Err(ApiError::invalid(
                    Limit::ReadTooLarge,
                    format!(
                        "the values of these {} keys exceed one read page ({budget} bytes, \
                         limits.read_page_bytes): read fewer keys at a time",
                        keys.len()
                    ),
                )
                .into());
            }
            bytes += size;
            results.push(wire::GetResult { kv });
        }
        Ok(Response::new(wire::BatchGetResponse { results }))
    }

    async fn put(
        &self,
        request: Request<wire::PutRequest>,
    ) -> Result<Response<wire::PutResponse>, Status> {
        let req = request.into_inner();
        let write_id = validate::write_id(req.write_id)?;
        validate::key(&req.key)?;
        validate::value(&req.value, self.max_value())?;
        validate::ttl(req.ttl_ms)?;
        let replica = self.node.route(req.shard_id, &[&req.key])?;
        let command = Command::Put {
            key: req.key,
            value: req.value,
            ttl_ms: req.ttl_ms,
        };
        let outcome = self.node.propose(&replica, command, write_id).await?;
        Ok(Response::new(wire::PutResponse {
            version: written_version(outcome)?,
        }))
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteRequest>,
    ) -> Result<Response<wire::DeleteResponse>, Status> {
        let req = request.into_inner();
        let write_id = validate::write_id(req.write_id)?;
        validate::key(&req.key)?;
        let replica = self.node.route(req.shard_id, &[&req.key])?;
        let command = Command::Delete { key: req.key };
        match check(self.node.propose(&replica, command, write_id).await?)? {
            Outcome::Deleted { deleted, version } => {
                Ok(Response::new(wire::DeleteResponse { deleted, version }))
            }
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }

    async fn compare_and_swap(
        &self,
        request: Request<wire::CasRequest>,
    ) -> Result<Response<wire::CasResponse>, Status> {
        let req = request.into_inner();
        let write_id = validate::write_id(req.write_id)?;
        validate::key(&req.key)?;
        if let Some(v) = &req.new_value {
            validate::value(v, self.max_value())?;
        }
        validate::ttl(req.ttl_ms)?;
        let expected = match req.expected {
            Some(cas_request::Expected::ExpectedVersion(v)) => Expected::Version(v),
            Some(cas_request::Expected::ExpectedValue(v)) => Expected::Value(v),
            None => {
                return Err(ApiError::invalid(
                    Limit::MissingField,
                    "CAS needs expected_version or expected_value",
                )
                .into())
            }
        };
        let replica = self.node.route(req.shard_id, &[&req.key])?;
        let command = Command::Cas {
            key: req.key,
            expected,
            new_value: req.new_value,
            ttl_ms: req.ttl_ms,
        };
        let outcome = self.node.propose(&replica, command, write_id).await?;
        Ok(Response::new(wire::CasResponse {
            version: written_version(outcome)?,
        }))
    }

    async fn batch(
        &self,
        request: Request<wire::BatchRequest>,
    ) -> Result<Response<wire::BatchResponse>, Status> {
        let req = request.into_inner();
        let write_id = validate::write_id(req.write_id)?;
        let mut steps = Vec::with_capacity(req.ops.len());
        let mut bytes = 0usize;
        for op in req.ops {
            let step = match op.op {
                Some(batch_op::Op::Put(p)) => {
                    validate::value(&p.value, self.max_value())?;
                    validate::ttl(p.ttl_ms)?;
                    bytes += p.key.len() + p.value.len();
                    BatchStep::Put {
                        key: p.key,
                        value: p.value,
                        ttl_ms: p.ttl_ms,
                    }
                }
                Some(batch_op::Op::Delete(d)) => {
                    bytes += d.key.len();
                    BatchStep::Delete { key: d.key }
                }
                Some(batch_op::Op::Check(c)) => {
                    bytes += c.key.len();
                    BatchStep::Check {
                        key: c.key,
                        expected_version: c.expected_version,
                    }
                }
                None => {
                    return Err(
                        ApiError::invalid(Limit::MissingField, "batch op has no operation").into(),
                    )
                }
            };
            steps.push(step);
        }
        validate::batch(steps.len(), bytes)?;
        let keys: Vec<&[u8]> = steps.iter().map(BatchStep::key).collect();
        for key in &keys {
            validate::key(key)?;
        }
        let first = key_hash(keys[0]);
        if keys.iter().any(|k| key_hash(k) != first) && !same_shard(&self.node, &keys) {
            return Err(ApiError::invalid(
                Limit::BatchCrossesShards,
                "batch keys are in different shards; give them a common hash tag, e.g. {user42}:a and {user42}:b",
            )
            .into());
        }
        let replica = self.node.route(req.shard_id, &keys)?;
        let outcome = self
            .node
            .propose(&replica, Command::Batch { steps }, write_id)
            .await?;
        Ok(Response::new(wire::BatchResponse {
            version: written_version(outcome)?,
        }))
    }

    async fn scan(
        &self,
        request: Request<wire::ScanRequest>,
    ) -> Result<Response<wire::ScanResponse>, Status> {
        let req = request.into_inner();
        scan::check_tag_range(&req)?;
        let replica = self
            .read_replica(req.shard_id, &[&req.start], req.consistency)
            .await?;
        let (view, clock) = read_view(self.node.engine().as_ref(), &replica)?;
        let page = scan::tag_range(view.as_ref(), clock, self.read_page(), &req)?;
        Ok(Response::new(page))
    }

    async fn scan_all(
        &self,
        request: Request<wire::ScanAllRequest>,
    ) -> Result<Response<wire::ScanAllResponse>, Status> {
        let req = request.into_inner();
        let replica = self
            .read_replica(req.shard_id, &[], req.consistency)
            .await?;
        let page = scan::shard_page(
            &self.node,
            &replica,
            req.cursor,
            req.limit,
            self.read_page(),
        )?;
        Ok(Response::new(page))
    }
}

fn same_shard(node: &Node, keys: &[&[u8]]) -> bool {
    let map = node.map();
    let first = map.shard_for_key(keys[0]).map(|s| s.id);
    first.is_some()
        && keys
            .iter()
            .all(|k| map.shard_for_key(k).map(|s| s.id) == first)
}
