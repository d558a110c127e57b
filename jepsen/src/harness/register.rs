//! The register workload: clients read, write and compare-and-swap a few
//! keys with unique values, against Atoll or (to prove the harness) etcd.

use std::collections::HashMap;
use std::future::Future;

use atoll_client::{Client, ClusterMap, Error, Expect};
use atoll_jepsen::{Op, OpKind, Outcome, Reply};
use rand::Rng;
use tokio::time::Instant;

use super::{over, processes, write_outcome, Recorder};

pub fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A store that holds registers. Each call returns its classified
/// outcome: `Ok` happened, `Fail` definitely did not, `Ambiguous` may have.
pub trait Registers: Clone + Send + Sync + 'static {
    fn read(&self, key: &str) -> impl Future<Output = Outcome> + Send;
    fn write(&self, key: &str, value: i64) -> impl Future<Output = Outcome> + Send;
    /// Sets `key` to `new` if it holds `expected` (`None`: is absent);
    /// replies `Mismatch` with what it holds otherwise.
    fn cas(
        &self,
        key: &str,
        expected: Option<i64>,
        new: i64,
    ) -> impl Future<Output = Outcome> + Send;
}

/// `count` register keys `r<i>`, spread evenly over the shards of `map`
/// (when there is one), so that every shard's leader matters to the run.
pub fn keys(map: Option<&ClusterMap>, count: usize) -> Vec<String> {
    let Some(map) = map.filter(|m| !m.shards.is_empty()) else {
        return (0..count).map(|i| format!("r{i}")).collect();
    };
    let per_shard = count.div_ceil(map.shards.len());
    let mut taken: HashMap<u64, usize> = HashMap::new();
    let mut keys = Vec::new();
    for i in 0.. {
        if keys.len() == count {
            break;
        }
        let key = format!("r{i}");
        let shard = map.shard_for_key(key.as_bytes()).map_or(0, |s| s.id);
        let n = taken.entry(shard).or_default();
        if *n < per_shard {
            *n += 1;
            keys.push(key);
        }
    }
    keys
}

/// Runs `count` clients until `until` on `keys`; process `p`
/// uses `stores[p % stores.len()]`. Each process reads, writes and
/// compare-and-swaps at random, except every fourth, which only reads.
pub async fn run<S: Registers>(
    stores: Vec<S>,
    count: u64,
    keys: Vec<String>,
    recorder: Recorder,
    until: Instant,
) -> Vec<Op> {
    let r = recorder.clone();
    processes(count, move |mut process| {
        let (client, recorder) = (
            stores[process.id as usize % stores.len()].clone(),
            r.clone(),
        );
        let keys = keys.clone();
        async move {
            let mut next = 0i64;
            // What this process last learned each key holds: its CAS guess.
            let mut seen: HashMap<String, Option<i64>> = HashMap::new();
            while !over(until) {
                let key = keys[rand::rng().random_range(0..keys.len())].clone();
                next += 1;
                let unique = (process.id as i64 % count as i64 + 1) * 1_000_000_000 + next;
                // Every fourth process only reads, like a read-mostly
                // application instance: it keeps the leader it knows for as
                // long as that leader answers.
                let reader = process.id % count % 4 == 3;
                let kind = match if reader {
                    0
                } else {
                    rand::rng().random_range(0..3)
                } {
                    0 => OpKind::Read,
                    1 => OpKind::write(unique),
                    _ => OpKind::cas(seen.get(&key).copied().flatten(), unique),
                };
                let outcome = recorder
                    .record(
                        &mut process,
                        &key,
                        kind.clone(),
                        execute(&client, &key, &kind),
                    )
                    .await;
                match (&kind, &outcome) {
                    (OpKind::Read, Outcome::Ok(Reply::Value(v))) => {
                        seen.insert(key, *v);
                    }
                    (OpKind::Write { value: v, .. }, Outcome::Ok(_))
                    | (OpKind::Cas { new: v, .. }, Outcome::Ok(Reply::Done)) => {
                        seen.insert(key, Some(*v));
                    }
                    (OpKind::Cas { .. }, Outcome::Ok(Reply::Mismatch { current })) => {
                        seen.insert(key, *current);
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    recorder.history()
}

async fn execute<S: Registers>(store: &S, key: &str, kind: &OpKind) -> Outcome {
    match *kind {
        OpKind::Read => store.read(key).await,
        OpKind::Write { value, .. } => store.write(key, value).await,
        OpKind::Cas { expected, new, .. } => store.cas(key, expected, new).await,
        _ => Outcome::Fail,
    }
}

impl Registers for Client {
    async fn read(&self, key: &str) -> Outcome {
        match self.get(key).await {
            Ok(kv) => Outcome::Ok(Reply::Value(kv.and_then(|kv| parse(&kv.value)))),
            // A read changes nothing: a failed one is simply not in history.
            Err(_) => Outcome::Fail,
        }
    }

    async fn write(&self, key: &str, value: i64) -> Outcome {
        write_outcome(self.put(key, value.to_string()).await.map(|_| ()))
    }

    async fn cas(&self, key: &str, expected: Option<i64>, new: i64) -> Outcome {
        let expect = match expected {
            Some(v) => Expect::Value(v.to_string().into_bytes()),
            None => Expect::Version(0),
        };
        match self
            .compare_and_swap(key, expect, Some(new.to_string().into_bytes()))
            .await
        {
            Err(Error::CasFailed { current, .. }) => Outcome::Ok(Reply::Mismatch {
                current: current.and_then(|kv| parse(&kv.value)),
            }),
            other => write_outcome(other.map(|_| ())),
        }
    }
}
