//! Installing snapshots: refused unless they cover exactly this replica's
//! shard and hash range; the log clock and the expiry index come along.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::state_machine::snapshot::{write_item, Item};
use atoll_raft::state_machine::{snapshot_file, AppliedState, SnapshotFile, StateMachine};
use atoll_raft::types::{Snapshot, SnapshotMeta};
use atoll_raft::{Command, Expected, Outcome, ShardKind};
use atoll_storage::keys::data_key;
use atoll_storage::{Engine, MemEngine, Record};
use openraft::storage::RaftStateMachine;

use crate::state_machine::{entry, open, stored};

const HALF: u64 = u64::MAX / 2;

/// A replica of shard 1 owning `[first, last]`.
fn open_range(engine: &Arc<dyn Engine>, first: u64, last: u64) -> StateMachine {
    let kind = ShardKind::Data { first, last };
    StateMachine::open(
        ReplicaId(1),
        ShardId(1),
        kind,
        engine.clone(),
        &crate::state_machine::snapshot_dir(),
    )
    .unwrap()
}

/// A key whose hash lies in the lower (`true`) or upper half.
fn key_in(lower: bool) -> String {
    (0..)
        .map(|i| format!("key{i}"))
        .find(|k| (atoll_proto::keyhash::key_hash(k.as_bytes()) <= HALF) == lower)
        .unwrap()
}

fn put(key: &str, ttl_ms: u64) -> Command {
    Command::Put {
        key: key.into(),
        value: b"v".to_vec(),
        ttl_ms,
    }
}

async fn snapshot_of(sm: &mut StateMachine) -> Snapshot {
    sm.get_current_snapshot().await.unwrap().unwrap()
}

#[tokio::test]
async fn a_snapshot_of_another_hash_range_is_refused() {
    let source: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut whole = open(&source);
    whole
        .apply_entries(vec![entry(1, None, 1_000, put(&key_in(false), 0))])
        .unwrap();
    let snap = snapshot_of(&mut whole).await;

    let target: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut lower = open_range(&target, 0, HALF);
    let mine = key_in(true);
    lower
        .apply_entries(vec![entry(1, None, 1_000, put(&mine, 0))])
        .unwrap();
    let refused = lower.install_snapshot(&snap.meta, snap.snapshot).await;
    assert!(refused.is_err(), "a snapshot of another range is refused");
    assert!(
        stored(&target, mine.as_bytes()).is_some(),
        "nothing changed"
    );
}

#[tokio::test]
async fn a_snapshot_record_outside_the_range_is_refused() {
    let stray = key_in(false);
    let mut file = snapshot_file(&std::env::temp_dir()).unwrap();
    let record = Record {
        version: 1,
        expires_at_ms: 0,
        value: b"x".to_vec(),
    };
    for item in [
        Item::Header {
            shard: ShardId(1),
            range: Some((0, HALF)),
            applied: AppliedState::default(),
        },
        Item::Record {
            data_key: data_key(stray.as_bytes()),
            stored: record.encode(),
        },
        Item::Trailer { records: 1 },
    ] {
        write_item(&mut file, &item).unwrap();
    }
    file.flush().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();

    let target: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut lower = open_range(&target, 0, HALF);
    let meta = SnapshotMeta::default();
    let refused = lower.install_snapshot(&meta, SnapshotFile::of(file)).await;
    assert!(refused.is_err(), "a record outside the range is refused");
    assert_eq!(stored(&target, stray.as_bytes()), None, "nothing written");
}

#[tokio::test]
async fn an_installed_snapshot_brings_the_log_clock_and_expiry_index() {
    let source: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut leader = open(&source);
    leader
        .apply_entries(vec![
            entry(1, None, 1_000, put("k", 100)),
            entry(2, None, 1_000, put("j", 100)),
            entry(3, None, 1_200, put("other", 0)),
        ])
        .unwrap();
    let snap = snapshot_of(&mut leader).await;

    let target: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut follower = open(&target);
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    // The clock is 1200: a CAS stamped earlier still sees k expired.
    let cas = Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(0),
        new_value: None,
        ttl_ms: 0,
    };
    let out = follower
        .apply_entries(vec![
            entry(4, None, 1_050, cas),
            entry(5, None, 1_050, Command::ExpireDue { limit: 10 }),
        ])
        .unwrap();
    assert!(matches!(out[0], Outcome::Written { .. }), "{out:?}");
    // The index was rebuilt from the records: the sweep finds j (k the
    // CAS already deleted).
    assert_eq!(out[1], Outcome::Expired { removed: 1 });
    assert_eq!(stored(&target, b"k"), None);
    assert_eq!(stored(&target, b"j"), None);
}

/// A send gets the snapshot last built, not a new one (building would stop
/// the replica applying), and it is still there after a restart; a
/// received snapshot, once installed, is the one kept.
#[tokio::test]
async fn the_kept_snapshot_is_sent_again_survives_a_restart_and_follows_an_install() {
    use openraft::storage::RaftSnapshotBuilder;

    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let dir = tempfile::tempdir().unwrap();
    let open_in = |engine: &Arc<dyn Engine>, dir: &std::path::Path| {
        let kind = ShardKind::Data {
            first: 0,
            last: u64::MAX,
        };
        StateMachine::open(ReplicaId(1), ShardId(1), kind, engine.clone(), dir).unwrap()
    };
    let mut leader = open_in(&engine, dir.path());
    leader
        .apply_entries(vec![entry(1, None, 1_000, put("a", 0))])
        .unwrap();
    let mut builder = leader.try_create_snapshot_builder(true).await.unwrap();
    let built = builder.build_snapshot().await.unwrap();
    leader
        .apply_entries(vec![entry(2, None, 1_000, put("b", 0))])
        .unwrap();
    let sent = snapshot_of(&mut leader).await;
    assert_eq!(
        sent.meta, built.meta,
        "the kept snapshot, not one at index 2"
    );
    drop(leader);
    let mut leader = open_in(&engine, dir.path());
    assert_eq!(snapshot_of(&mut leader).await.meta, built.meta);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A follower receives it into a file of its own and keeps it.
    let follower_dir = tempfile::tempdir().unwrap();
    let mut received = tempfile::NamedTempFile::new_in(follower_dir.path()).unwrap();
    let mut sent_file = snapshot_of(&mut leader)
        .await
        .snapshot
        .file
        .into_std()
        .await;
    std::io::copy(&mut sent_file, &mut received).unwrap();
    received.flush().unwrap();
    let (file, temp) = received.into_parts();
    let follower_engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut follower = open_in(&follower_engine, follower_dir.path());
    let snapshot = SnapshotFile {
        file: tokio::fs::File::from_std(file),
        temp: Some(temp),
    };
    follower
        .install_snapshot(&built.meta, snapshot)
        .await
        .unwrap();
    assert_eq!(snapshot_of(&mut follower).await.meta, built.meta);
    assert!(stored(&follower_engine, b"a").is_some());
    let files: Vec<_> = std::fs::read_dir(follower_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["r1-1.snap"]);
}
