//! The register workload: clients read, write and compare-and-swap a few
//! keys with unique values, and every operation is recorded with its
//! invocation and completion times and outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atoll_client::{Client, Error, Expect};
use atoll_jepsen::{Op, OpKind, Outcome, ProcessId, Reply};
use rand::Rng;
use tokio::time::Instant;

/// Nanoseconds since the run started.
fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Runs `processes` clients until `until`, on keys `r0..r{keys}`.
pub async fn run(
    client: Client,
    processes: u64,
    keys: usize,
    t0: Instant,
    until: Instant,
) -> Vec<Op> {
    let history = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..processes)
        .map(|p| {
            let (client, history) = (client.clone(), history.clone());
            tokio::spawn(async move {
                let mut next = 0i64;
                let mut seen: HashMap<String, Option<i64>> = HashMap::new();
                while Instant::now() < until {
                    let key = format!("r{}", rand::rng().random_range(0..keys));
                    let choice = rand::rng().random_range(0..3);
                    next += 1;
                    let unique = (p as i64 + 1) * 1_000_000_000 + next;
                    let kind = match choice {
                        0 => OpKind::Read,
                        1 => OpKind::Write { value: unique },
                        _ => OpKind::Cas {
                            expected: seen.get(&key).copied().flatten(),
                            new: unique,
                        },
                    };
                    let op = Op::invoked(ProcessId(p), key.clone(), kind.clone(), since(t0));
                    let outcome = execute(&client, &key, &kind).await;
                    match (&kind, &outcome) {
                        (OpKind::Read, Outcome::Ok(Reply::Value(v))) => {
                            seen.insert(key.clone(), *v);
                        }
                        (OpKind::Write { value }, Outcome::Ok(_)) => {
                            seen.insert(key.clone(), Some(*value));
                        }
                        (OpKind::Cas { new, .. }, Outcome::Ok(Reply::Done)) => {
                            seen.insert(key.clone(), Some(*new));
                        }
                        (OpKind::Cas { .. }, Outcome::Ok(Reply::Mismatch { current })) => {
                            seen.insert(key.clone(), *current);
                        }
                        _ => {}
                    }
                    history.lock().await.push(op.completed(outcome, since(t0)));
                    if matches!(
                        history.lock().await.last().map(|o| &o.outcome),
                        Some(Outcome::Ambiguous)
                    ) {
                        // Do not pile ambiguous operations onto one key.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(history)
        .map(|m| m.into_inner())
        .unwrap_or_default()
}

/// One operation against the cluster, classified: `Ok` happened, `Fail`
/// definitely did not, `Ambiguous` may have.
async fn execute(client: &Client, key: &str, kind: &OpKind) -> Outcome {
    match kind {
        OpKind::Read => match client.get(key).await {
            Ok(kv) => Outcome::Ok(Reply::Value(kv.and_then(|kv| parse(&kv.value)))),
            // A read changes nothing: a failed one is simply not in history.
            Err(_) => Outcome::Fail,
        },
        OpKind::Write { value } => {
            write_outcome(client.put(key, value.to_string()).await.map(|_| ()))
        }
        OpKind::Cas { expected, new } => {
            let expect = match expected {
                Some(v) => Expect::Value(v.to_string().into_bytes()),
                None => Expect::Version(0),
            };
            match client
                .compare_and_swap(key, expect, Some(new.to_string().into_bytes()))
                .await
            {
                Err(Error::CasFailed { current, .. }) => Outcome::Ok(Reply::Mismatch {
                    current: current.and_then(|kv| parse(&kv.value)),
                }),
                other => write_outcome(other.map(|_| ())),
            }
        }
        _ => Outcome::Fail,
    }
}

fn write_outcome(result: Result<(), Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok(Reply::Done),
        Err(Error::Ambiguous(_)) => Outcome::Ambiguous,
        // Definite: the write was refused or never sent.
        Err(_) => Outcome::Fail,
    }
}
