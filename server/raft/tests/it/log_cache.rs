//! What the log store keeps in memory, against the engine: after any
//! sequence of appends, truncations and purges, reading through the entry
//! cache gives what a reader with no cache reads from the engine; the
//! committed id is written with the next append.

use std::sync::Arc;

use atoll_proto::ReplicaId;
use atoll_raft::log_store::{LogStore, CACHED_BYTES, CACHED_ENTRIES};
use atoll_raft::types::{Entry, EntryPayload, LeaderId, LogId};
use atoll_raft::{Command, Request};
use atoll_storage::{Engine, GroupCommitter, MemEngine};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::RaftLogReader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        LeaderId {
            term,
            node_id: ReplicaId(1),
        },
        index,
    )
}

fn entry(term: u64, index: u64, value_len: usize) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            write_id: atoll_raft::WriteId::Untracked,
            now_ms: index,
            command: Command::Put {
                key: format!("k{index}").into_bytes(),
                value: vec![term as u8; value_len],
                ttl_ms: 0,
            },
        }),
    }
}

/// A log with a cache, and a second log over the same engine whose cache
/// stays empty (it never appends), so that it reads the engine.
fn logs() -> (LogStore, LogStore) {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let committer = Arc::new(GroupCommitter::start(engine.clone()).unwrap());
    let cached = LogStore::new(ReplicaId(1), engine.clone(), committer.clone());
    let uncached = LogStore::new(ReplicaId(1), engine, committer);
    (cached, uncached)
}

async fn read(log: &mut LogStore, start: u64, end: u64) -> Vec<Entry> {
    log.try_get_log_entries(start..end).await.unwrap()
}

#[tokio::test]
async fn reads_through_the_cache_match_the_engine() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut log, mut engine_only) = logs();
    let mut reader = log.get_log_reader().await;
    // The log holds first..=last (empty when first > last).
    let (mut first, mut last, mut term) = (1u64, 0u64, 1u64);
    for _ in 0..400 {
        match rng.random_range(0..10) {
            0..=5 => {
                // A few entries, now and then one too large to cache.
                let n = rng.random_range(1..=20);
                let value_len = if rng.random_ratio(1, 20) {
                    CACHED_BYTES + 1
                } else {
                    rng.random_range(0..2048)
                };
                let entries: Vec<_> = (last + 1..=last + n)
                    .map(|i| entry(term, i, value_len))
                    .collect();
                log.append(entries, IOFlushed::noop()).await.unwrap();
                last += n;
            }
            6 | 7 if last >= first => {
                // A new leader overwrites the tail.
                let keep = rng.random_range(first - 1..=last);
                let keep_id = (keep >= first).then(|| log_id(term, keep));
                log.truncate_after(keep_id).await.unwrap();
                last = keep;
                term += 1;
            }
            8 if last >= first => {
                let upto = rng.random_range(first..=last);
                log.purge(log_id(term, upto)).await.unwrap();
                first = upto + 1;
            }
            _ => {}
        }
        for _ in 0..5 {
            let start = rng.random_range(first..=last + 2);
            let end = rng.random_range(start..=last + 3);
            let want = read(&mut engine_only, start, end).await;
            assert_eq!(read(&mut log, start, end).await, want, "{start}..{end}");
            assert_eq!(read(&mut reader, start, end).await, want, "{start}..{end}");
        }
    }
    assert!(log.cached_entries() <= CACHED_ENTRIES);
    // The newest entries are in memory.
    let entries: Vec<_> = (last + 1..=last + 10)
        .map(|i| entry(term, i, 100))
        .collect();
    log.append(entries, IOFlushed::noop()).await.unwrap();
    assert!(log.cached_entries() >= 10);
}

#[tokio::test]
async fn the_committed_id_is_written_with_the_next_append() {
    let (mut log, mut restarted) = logs();
    log.append(vec![entry(1, 1, 10)], IOFlushed::noop())
        .await
        .unwrap();
    log.save_committed(Some(log_id(1, 1))).await.unwrap();
    // The same log reads it back at once; a log opened anew over the engine
    // (a restart) finds it only once an append has written it.
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1)));
    assert_eq!(restarted.read_committed().await.unwrap(), None);
    log.append(vec![entry(1, 2, 10)], IOFlushed::noop())
        .await
        .unwrap();
    assert_eq!(
        restarted.read_committed().await.unwrap(),
        Some(log_id(1, 1))
    );
}
