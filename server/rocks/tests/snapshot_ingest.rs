//! Snapshots installed into RocksDB by SST ingestion: the replica's range
//! is replaced exactly, everything else stays, and nothing staged is left.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::state_machine::{SnapshotFile, StateMachine};
use atoll_raft::types::{Entry, EntryPayload, LeaderId, LogId};
use atoll_raft::{Command, Request, ShardKind, WriteId};
use atoll_rocks::{RocksEngine, RocksOptions};
use atoll_storage::keys::data_key;
use atoll_storage::{Cf, Engine, Record};
use openraft::storage::RaftStateMachine;

const LOWER: ShardKind = ShardKind::Data {
    first: 0,
    last: u64::MAX / 2,
};

fn rocks(dir: &Path) -> Arc<dyn Engine> {
    Arc::new(RocksEngine::open(&dir.join("db"), &RocksOptions::default()).unwrap())
}

fn open(engine: &Arc<dyn Engine>, replica: u64, kind: ShardKind, dir: &Path) -> StateMachine {
    let snapshots = dir.join("snapshots");
    StateMachine::open(
        ReplicaId(replica),
        ShardId(1),
        kind,
        engine.clone(),
        &snapshots,
    )
    .unwrap()
}

fn lower(key: &str) -> bool {
    atoll_proto::keyhash::key_hash(key.as_bytes()) <= u64::MAX / 2
}

/// `n` keys of the lower half of the hash space, starting at `from`.
fn lower_keys(prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| lower(k))
        .take(n)
        .collect()
}

fn puts(first_index: u64, keys: &[String], ttl_ms: u64) -> Vec<Entry> {
    let leader = LeaderId {
        term: 1,
        node_id: ReplicaId(1),
    };
    (keys.iter().enumerate())
        .map(|(i, key)| Entry {
            log_id: LogId::new(leader, first_index + i as u64),
            payload: EntryPayload::Normal(Request {
                write_id: WriteId::Untracked,
                now_ms: 1_000,
                command: Command::Put {
                    key: key.as_bytes().to_vec(),
                    value: format!("value of {key}").into_bytes(),
                    ttl_ms,
                },
            }),
        })
        .collect()
}

fn value(engine: &Arc<dyn Engine>, key: &str) -> Option<Vec<u8>> {
    let stored = engine.get(Cf::Data, &data_key(key.as_bytes())).unwrap();
    stored.map(|bytes| Record::decode(&bytes).unwrap().value)
}

fn staged_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ingest-"))
        .collect()
}

#[tokio::test]
async fn a_snapshot_replaces_exactly_its_range_by_ingestion() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = rocks(source_dir.path());
    let mut leader = open(&source, 1, LOWER, source_dir.path());
    let keys = lower_keys("key", 20_000);
    let (forever, expiring) = keys.split_at(15_000);
    leader.apply_entries(puts(1, forever, 0)).unwrap();
    leader
        .apply_entries(puts(15_001, expiring, 60_000))
        .unwrap();
    let snap = leader.get_current_snapshot().await.unwrap().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let engine = rocks(dir.path());
    let mut follower = open(&engine, 2, LOWER, dir.path());
    let stale = lower_keys("stale", 100);
    follower.apply_entries(puts(1, &stale, 0)).unwrap();
    // Another replica of this node owns the upper half.
    let upper = ShardKind::Data {
        first: u64::MAX / 2 + 1,
        last: u64::MAX,
    };
    let mut neighbour = open(&engine, 3, upper, dir.path());
    let theirs: Vec<String> = (0..)
        .map(|i| format!("theirs{i}"))
        .filter(|k| !lower(k))
        .take(100)
        .collect();
    neighbour.apply_entries(puts(1, &theirs, 0)).unwrap();

    let file = snap.snapshot.file.into_std().await;
    follower
        .install_snapshot(&snap.meta, SnapshotFile::of(file))
        .await
        .unwrap();

    for key in &keys {
        let want = format!("value of {key}").into_bytes();
        assert_eq!(value(&engine, key), Some(want), "{key}");
    }
    for key in &stale {
        assert_eq!(value(&engine, key), None, "{key} was replaced");
    }
    for key in &theirs {
        assert!(value(&engine, key).is_some(), "{key} is another replica's");
    }
    assert!(
        staged_files(dir.path()).is_empty(),
        "nothing staged is left"
    );
    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
    let due = atoll_raft::state_machine::ttl::has_due(engine.as_ref(), ReplicaId(2), 61_000);
    assert!(due.unwrap(), "the expiry index covers the ingested records");

    // Ingested files are part of the database: they survive a reopen.
    drop((follower, neighbour, engine));
    let engine = rocks(dir.path());
    let mut reopened = open(&engine, 2, LOWER, dir.path());
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, snap.meta.last_log_id);
    assert_eq!(
        value(&engine, &keys[19_999]),
        Some(format!("value of {}", keys[19_999]).into_bytes())
    );
}

/// A snapshot for `LOWER` whose last record lies outside it: found only
/// after every other record is staged.
fn snapshot_with_a_stray_last_record(dir: &Path) -> std::fs::File {
    use atoll_raft::state_machine::snapshot::{write_item, Item};
    use atoll_raft::state_machine::AppliedState;
    use std::io::{Seek, SeekFrom, Write};

    let mut file = atoll_raft::state_machine::snapshot_file(dir).unwrap();
    let record = Record {
        version: 1,
        expires_at_ms: 0,
        value: vec![7; 100],
    };
    let mut data_keys: Vec<Vec<u8>> = lower_keys("key", 50_000)
        .iter()
        .map(|k| data_key(k.as_bytes()))
        .collect();
    data_keys.sort();
    let stray = (0..)
        .map(|i| format!("stray{i}"))
        .find(|k| !lower(k))
        .unwrap();
    data_keys.push(data_key(stray.as_bytes()));
    let header = Item::Header {
        shard: ShardId(1),
        range: Some((0, u64::MAX / 2)),
        applied: AppliedState::default(),
    };
    write_item(&mut file, &header).unwrap();
    for data_key in &data_keys {
        let item = Item::Record {
            data_key: data_key.clone(),
            stored: record.encode(),
        };
        write_item(&mut file, &item).unwrap();
    }
    let trailer = Item::Trailer {
        records: data_keys.len() as u64,
    };
    write_item(&mut file, &trailer).unwrap();
    file.flush().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file
}

#[tokio::test]
async fn a_refused_snapshot_changes_nothing_and_leaves_no_staged_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = rocks(dir.path());
    let mut follower = open(&engine, 2, LOWER, dir.path());
    let mine = lower_keys("mine", 10);
    follower.apply_entries(puts(1, &mine, 0)).unwrap();
    let (before, _) = follower.applied_state().await.unwrap();

    let file = snapshot_with_a_stray_last_record(dir.path());
    let meta = atoll_raft::types::SnapshotMeta::default();
    let refused = follower
        .install_snapshot(&meta, SnapshotFile::of(file))
        .await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("outside hash range"), "refused: {error}");
    for key in &mine {
        assert!(value(&engine, key).is_some(), "{key} is unchanged");
    }
    let first = &lower_keys("key", 1)[0];
    assert!(value(&engine, first).is_none(), "nothing staged is visible");
    assert_eq!(follower.applied_state().await.unwrap().0, before);
    assert!(
        staged_files(dir.path()).is_empty(),
        "nothing staged is left"
    );
}
