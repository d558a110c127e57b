//! The register-ttl workload: the register workload, against Atoll only,
//! with every write and compare-and-swap giving its value a short TTL, so
//! that keys expire while clients read and swap them.
//!
//! Keys take turns to rest: in each [`EPOCH`], half of them get no writes
//! or swaps, only reads, so their last values expire (the TTLs are shorter
//! or not much longer than an epoch) while readers watch; when a key wakes,
//! the first swaps expect values that may have expired meanwhile.
//!
//! The client's `compare_and_swap` sends no TTL, so a swap here is an
//! atomic batch: a check that the key is at the version of the value the
//! process expects (0: absent), and a put with the TTL. Every write of a
//! key gets a new version and every value is written once, so the key is
//! at that version exactly when it holds that value; a failed check answers
//! with the key's live value, as a failed swap does.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use atoll_client::{BatchOp, Client, Error, KeyValue};
use atoll_jepsen::{Op, OpKind, Outcome, Reply};
use rand::Rng;
use tokio::time::Instant;

use super::register::parse;
use super::{over, processes, write_outcome, Recorder};

/// The TTLs given, in milliseconds.
pub const TTL_MS: Range<u64> = 200..2000;

/// How long a key rests (only reads) or works (reads, writes, swaps).
pub const EPOCH: Duration = Duration::from_secs(1);

/// A value a process saw, with the version it was written at.
type Seen = Option<(i64, u64)>;

/// Runs `count` clients until `until` on `keys`; process `p` uses
/// `clients[p % clients.len()]`. As in the register workload, every fourth
/// process only reads.
pub async fn run(
    clients: Vec<Client>,
    count: u64,
    keys: Vec<String>,
    recorder: Recorder,
    until: Instant,
) -> Vec<Op> {
    let r = recorder.clone();
    processes(count, move |mut process| {
        let (client, recorder) = (
            clients[process.id as usize % clients.len()].clone(),
            r.clone(),
        );
        let keys = keys.clone();
        async move {
            let mut next = 0i64;
            // What this process last learned each key holds: its CAS guess.
            let mut seen: HashMap<String, Seen> = HashMap::new();
            while !over(until) {
                next += 1;
                let unique = (process.id as i64 % count as i64 + 1) * 1_000_000_000 + next;
                let reader = process.id % count % 4 == 3;
                let epoch = recorder.now() / EPOCH.as_nanos() as u64;
                let working: Vec<&String> = (0..keys.len())
                    .filter(|i| (*i as u64 + epoch).is_multiple_of(2))
                    .map(|i| &keys[i])
                    .collect();
                // With nothing working (a single key, resting), only read.
                let action = if reader || working.is_empty() {
                    0
                } else {
                    rand::rng().random_range(0..3)
                };
                let key = if action == 0 {
                    keys[rand::rng().random_range(0..keys.len())].clone()
                } else {
                    working[rand::rng().random_range(0..working.len())].clone()
                };
                let ttl_ms = Some(rand::rng().random_range(TTL_MS));
                let expected = seen.get(&key).copied().flatten();
                let kind = match action {
                    0 => OpKind::Read,
                    1 => OpKind::Write {
                        value: unique,
                        ttl_ms,
                    },
                    _ => OpKind::Cas {
                        expected: expected.map(|(v, _)| v),
                        new: unique,
                        ttl_ms,
                    },
                };
                let call = execute(&client, &key, &kind, expected.map_or(0, |(_, at)| at));
                let (_, learned) = recorder
                    .record_with(&mut process, &key, kind.clone(), call)
                    .await;
                if let Some(learned) = learned {
                    seen.insert(key, learned);
                }
            }
        }
    })
    .await;
    recorder.history()
}

/// What a stored record shows: its value and version.
fn seen(kv: Option<KeyValue>) -> Seen {
    kv.and_then(|kv| Some((parse(&kv.value)?, kv.version)))
}

/// Runs `kind` on `key`; a swap checks that the key is at version `at`.
/// Returns the outcome and what it showed the key holds, if anything.
async fn execute(client: &Client, key: &str, kind: &OpKind, at: u64) -> (Outcome, Option<Seen>) {
    let ttl = |ttl_ms: Option<u64>| ttl_ms.map(Duration::from_millis);
    match *kind {
        OpKind::Read => match client.get(key).await {
            Ok(kv) => {
                let value = seen(kv);
                (
                    Outcome::Ok(Reply::Value(value.map(|(v, _)| v))),
                    Some(value),
                )
            }
            // A read changes nothing: a failed one is simply not in history.
            Err(_) => (Outcome::Fail, None),
        },
        OpKind::Write { value, ttl_ms } => {
            let result = client
                .put_with_ttl(key, value.to_string(), ttl(ttl_ms))
                .await;
            let learned = result.as_ref().ok().map(|&version| Some((value, version)));
            (write_outcome(result.map(|_| ())), learned)
        }
        OpKind::Cas { new, ttl_ms, .. } => {
            let ops = vec![
                BatchOp::check(key, at),
                BatchOp::Put {
                    key: key.as_bytes().to_vec(),
                    value: new.to_string().into_bytes(),
                    ttl_ms: ttl_ms.unwrap_or(0),
                },
            ];
            match client.batch(ops).await {
                Ok(version) => (Outcome::Ok(Reply::Done), Some(Some((new, version)))),
                Err(Error::CasFailed { current, .. }) => {
                    let current = seen(current);
                    let reply = Reply::Mismatch {
                        current: current.map(|(v, _)| v),
                    };
                    (Outcome::Ok(reply), Some(current))
                }
                Err(e) => (write_outcome(Err(e)), None),
            }
        }
        _ => (Outcome::Fail, None),
    }
}
