//! The state machine applied directly, entry by entry.

use std::sync::Arc;

use atoll_proto::{ReplicaId, ShardId};
use atoll_raft::command::write_version;
use atoll_raft::state_machine::StateMachine;
use atoll_raft::types::{Entry, EntryPayload, LeaderId, LogId};
use atoll_raft::{
    BatchStep, Command, Expected, Outcome, Proposal, Request, SessionWrite, ShardKind, WriteId,
};
use atoll_storage::keys::data_key;
use atoll_storage::{Cf, Engine, EngineError, MemEngine, Record};

/// The state machine's apply, with the outcomes returned rather than sent
/// to openraft's responders.
pub(crate) trait ApplyAll {
    async fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<Outcome>, EngineError>;
}

impl ApplyAll for StateMachine {
    async fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<Outcome>, EngineError> {
        self.apply_entries(entries)
    }
}

pub(crate) fn entry(
    index: u64,
    write_id: Option<(u64, u64)>,
    now_ms: u64,
    command: Command,
) -> Entry {
    Entry {
        log_id: LogId::new(
            LeaderId {
                term: 1,
                node_id: ReplicaId(1),
            },
            index,
        ),
        payload: EntryPayload::Normal(Request {
            write_id: session_write(write_id),
            now_ms,
            command,
        }),
    }
}

/// A snapshot dir of its own (a state machine keeps its last snapshot
/// there, so one dir shared by unrelated state machines would mix them up).
pub(crate) fn snapshot_dir() -> std::path::PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// A write of session `client_id` that keeps every outcome (its client
/// still awaits its first write).
pub(crate) fn session_write(id: Option<(u64, u64)>) -> WriteId {
    id.map_or(WriteId::Untracked, |(client_id, seq)| {
        WriteId::Session(SessionWrite {
            client_id,
            seq,
            lowest_awaited: 1,
            session_start: 1,
        })
    })
}

/// The version of the write at `position` in the entry at `index`.
pub(crate) fn v(index: u64, position: usize) -> u64 {
    write_version(index, position)
}

/// The record stored for `key`, if any.
pub(crate) fn stored(engine: &Arc<dyn Engine>, key: &[u8]) -> Option<Record> {
    engine
        .get(Cf::Data, &data_key(key))
        .unwrap()
        .map(|bytes| Record::decode(&bytes).unwrap())
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms: 0,
    }
}

pub(crate) fn open(engine: &Arc<dyn Engine>) -> StateMachine {
    StateMachine::open(
        ReplicaId(1),
        ShardId(1),
        ShardKind::Data {
            first: 0,
            last: u64::MAX,
        },
        engine.clone(),
        &crate::state_machine::snapshot_dir(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_repeated_write_id_returns_the_first_outcome_without_applying_again() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let create = Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(0),
        new_value: Some(b"a".to_vec()),
        ttl_ms: 0,
    };
    let out = sm
        .apply(vec![entry(1, Some((9, 1)), 0, create.clone())])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Written { version: v(1, 0) }]);
    // The same write, proposed again (a client retry), in a later entry.
    let out = sm
        .apply(vec![entry(2, Some((9, 1)), 0, create.clone())])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Outcome::Written { version: v(1, 0) }],
        "the first outcome, not a CAS failure"
    );
    // A new write id with the same command really runs, and fails.
    let out = sm
        .apply(vec![entry(3, Some((9, 2)), 0, create)])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::CasFailed { .. }));
    // The dedup table survives a reopen.
    let mut reopened = open(&engine);
    let out = reopened
        .apply(vec![entry(4, Some((9, 1)), 0, put("k", "zzz"))])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Written { version: v(1, 0) }]);
}

#[tokio::test]
async fn later_entries_of_one_apply_see_earlier_ones() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let out = sm
        .apply(vec![
            entry(1, None, 0, put("k", "a")),
            entry(
                2,
                None,
                0,
                Command::Cas {
                    key: b"k".to_vec(),
                    expected: Expected::Version(v(1, 0)),
                    new_value: Some(b"b".to_vec()),
                    ttl_ms: 0,
                },
            ),
            entry(3, None, 0, Command::Delete { key: b"k".to_vec() }),
            entry(4, None, 0, Command::Delete { key: b"k".to_vec() }),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Written { version: v(1, 0) },
            Outcome::Written { version: v(2, 0) },
            Outcome::Deleted {
                deleted: true,
                version: v(3, 0)
            },
            Outcome::Deleted {
                deleted: false,
                version: v(4, 0)
            },
        ]
    );
}

#[tokio::test]
async fn expiry_is_judged_by_the_entry_time() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let ttl = Command::Put {
        key: b"s".to_vec(),
        value: b"v".to_vec(),
        ttl_ms: 100,
    };
    sm.apply(vec![entry(1, None, 1_000, ttl)]).await.unwrap();
    let create = |i| {
        entry(
            i,
            None,
            1_050,
            Command::Cas {
                key: b"s".to_vec(),
                expected: Expected::Version(0),
                new_value: Some(b"w".to_vec()),
                ttl_ms: 0,
            },
        )
    };
    let out = sm.apply(vec![create(2)]).await.unwrap();
    assert!(
        matches!(out[0], Outcome::CasFailed { .. }),
        "not expired at 1050"
    );
    let mut late = create(3);
    if let EntryPayload::Normal(req) = &mut late.payload {
        req.now_ms = 1_100;
    }
    let out = sm.apply(vec![late]).await.unwrap();
    assert_eq!(
        out,
        vec![Outcome::Written { version: v(3, 0) }],
        "expired at 1100: treated as absent"
    );
}

#[tokio::test]
async fn a_batch_with_a_failing_check_writes_nothing() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    sm.apply(vec![entry(1, None, 0, put("{a}:x", "1"))])
        .await
        .unwrap();
    let batch = Command::Batch {
        steps: vec![
            BatchStep::Put {
                key: b"{a}:y".to_vec(),
                value: b"2".to_vec(),
                ttl_ms: 0,
            },
            BatchStep::Check {
                key: b"{a}:x".to_vec(),
                expected_version: 7,
            },
        ],
    };
    let out = sm.apply(vec![entry(2, None, 0, batch)]).await.unwrap();
    assert!(matches!(&out[0], Outcome::CasFailed { key, .. } if key == b"{a}:x"));
    assert_eq!(stored(&engine, b"{a}:y"), None);
}

#[tokio::test]
async fn keys_outside_the_shard_are_rejected() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let hash = atoll_proto::keyhash::key_hash(b"k");
    let range = if hash > 0 {
        (0, hash - 1)
    } else {
        (1, u64::MAX)
    };
    let mut sm = StateMachine::open(
        ReplicaId(1),
        ShardId(1),
        ShardKind::Data {
            first: range.0,
            last: range.1,
        },
        engine.clone(),
        &crate::state_machine::snapshot_dir(),
    )
    .unwrap();
    let out = sm
        .apply(vec![entry(1, None, 0, put("k", "v"))])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::Rejected { .. }));
    assert_eq!(stored(&engine, b"k"), None);
}

fn group(writes: Vec<(Option<(u64, u64)>, Command)>) -> Command {
    Command::Group {
        writes: writes
            .into_iter()
            .map(|(id, command)| Proposal {
                write_id: session_write(id),
                command,
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_group_applies_each_write_with_its_own_outcome_and_dedup() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    sm.apply(vec![entry(1, Some((5, 1)), 0, put("a", "1"))])
        .await
        .unwrap();
    let cas_b = Command::Cas {
        key: b"b".to_vec(),
        expected: Expected::Version(7),
        new_value: Some(b"x".to_vec()),
        ttl_ms: 0,
    };
    let out = sm
        .apply(vec![entry(
            2,
            None,
            0,
            group(vec![
                // A retry of the write applied at index 1: not applied again.
                (Some((5, 1)), put("a", "retried")),
                (Some((5, 2)), put("c", "3")),
                (Some((6, 1)), cas_b),
                (None, Command::Delete { key: b"d".to_vec() }),
            ]),
        )])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Outcome::Group(vec![
            Outcome::Written { version: v(1, 0) },
            Outcome::Written { version: v(2, 1) },
            Outcome::CasFailed {
                key: b"b".to_vec(),
                current: None
            },
            Outcome::Deleted {
                deleted: false,
                version: v(2, 3)
            },
        ])]
    );
    assert_eq!(
        stored(&engine, b"a").unwrap().value,
        b"1",
        "the retry changed nothing"
    );
    assert_eq!(stored(&engine, b"c").unwrap().version, v(2, 1));
    // Each write of the group is remembered on its own: retried alone in a
    // later entry, it answers with its outcome from the group.
    let out = sm
        .apply(vec![entry(3, Some((5, 2)), 0, put("c", "again"))])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Written { version: v(2, 1) }]);
}

#[tokio::test]
async fn a_group_inside_a_group_is_rejected_alone() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let inner = group(vec![(None, put("x", "1"))]);
    let out = sm
        .apply(vec![entry(
            1,
            None,
            0,
            group(vec![(None, inner), (None, put("y", "2"))]),
        )])
        .await
        .unwrap();
    let Outcome::Group(outcomes) = &out[0] else {
        panic!("a group's outcome: {out:?}");
    };
    assert!(matches!(outcomes[0], Outcome::Rejected { .. }));
    assert_eq!(outcomes[1], Outcome::Written { version: v(1, 1) });
}

#[tokio::test]
async fn writes_to_one_key_in_one_group_get_their_own_versions_in_order() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    sm.apply(vec![entry(1, None, 0, put("k", "a"))])
        .await
        .unwrap();
    // Three compare-and-swaps that all read version v(1, 0), as racing
    // clients do, and a put: the first CAS wins, the other two fail against
    // what it wrote, and the put lands on top.
    let cas = |new: &str| Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(v(1, 0)),
        new_value: Some(new.as_bytes().to_vec()),
        ttl_ms: 0,
    };
    let out = sm
        .apply(vec![entry(
            2,
            None,
            0,
            group(vec![
                (Some((1, 1)), cas("b")),
                (Some((2, 1)), cas("c")),
                (Some((3, 1)), cas("d")),
                (Some((4, 1)), put("k", "e")),
            ]),
        )])
        .await
        .unwrap();
    let won = atoll_raft::Current {
        value: b"b".to_vec(),
        version: v(2, 0),
        expires_at_ms: 0,
    };
    assert_eq!(
        out,
        vec![Outcome::Group(vec![
            Outcome::Written { version: v(2, 0) },
            Outcome::CasFailed {
                key: b"k".to_vec(),
                current: Some(won.clone())
            },
            Outcome::CasFailed {
                key: b"k".to_vec(),
                current: Some(won)
            },
            Outcome::Written { version: v(2, 3) },
        ])]
    );
    assert!(v(1, 0) < v(2, 0) && v(2, 3) < v(3, 0), "versions only grow");
    let record = stored(&engine, b"k").unwrap();
    assert_eq!((record.value, record.version), (b"e".to_vec(), v(2, 3)));
}
