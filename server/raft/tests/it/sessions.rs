//! Client sessions (docs/design/sessions.md): a retried write applies at
//! most once however fast the shard is written, and a write whose session
//! is gone is refused, never applied a second time.

use std::collections::VecDeque;
use std::sync::Arc;

use atoll_proto::ReplicaId;
use atoll_raft::state_machine::sessions::{IDLE_EXPIRY_MS, MAX_KEPT_VALUE_BYTES};
use atoll_raft::state_machine::StateMachine;
use atoll_raft::types::{Entry, EntryPayload, LeaderId, LogId};
use atoll_raft::{Command, Current, Expected, Outcome, Proposal, Request, SessionWrite, WriteId};
use atoll_storage::{Engine, MemEngine};
use openraft::storage::RaftStateMachine;

use crate::state_machine::{open, stored};

/// Writes per second the test drives one shard at, in log time.
const WRITES_PER_SECOND: u64 = 20_000;
/// Writes applied between a write and its retry: more than the 100,000
/// rows a count-bounded table keeps.
const RETRY_AFTER: u64 = 100_001;
const CLIENTS: u64 = 64;
/// Writes per log entry.
const PER_ENTRY: usize = 64;

/// One write as its client sends it (every attempt the same).
#[derive(Clone)]
struct Write {
    client: u64,
    seq: u64,
    key: Vec<u8>,
}

fn id(write: &Write, lowest_awaited: u64) -> WriteId {
    session(write.client + 1, write.seq, lowest_awaited, 1)
}

fn session(client_id: u64, seq: u64, lowest_awaited: u64, session_start: u64) -> WriteId {
    WriteId::Session(SessionWrite {
        client_id,
        seq,
        lowest_awaited,
        session_start,
    })
}

fn entry(index: u64, now_ms: u64, write_id: WriteId, command: Command) -> Entry {
    let leader = LeaderId {
        term: 1,
        node_id: ReplicaId(1),
    };
    Entry {
        log_id: LogId::new(leader, index),
        payload: EntryPayload::Normal(Request {
            write_id,
            now_ms,
            command,
        }),
    }
}

/// 64 clients write one shard at 20,000 writes/s (by the log clock). The
/// answer of every write is lost, so each client retries it after more
/// than 100,000 other writes have applied, still awaiting it (and every
/// write it sent since). The writes of the last 100,000 are never retried.
/// Each retry is answered with the first outcome and
/// applies nothing: every key keeps the version its first attempt wrote.
#[tokio::test]
async fn a_retry_after_a_hundred_thousand_other_writes_applies_nothing() {
    const WRITES: u64 = 2 * RETRY_AFTER;
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    // Per client, the writes it awaits, oldest first.
    let mut awaited: Vec<VecDeque<u64>> = vec![VecDeque::new(); CLIENTS as usize];
    // Every write, by its position in the first-attempt order, with its
    // first outcome once applied.
    let mut writes: Vec<(Write, Option<Outcome>)> = Vec::new();
    let mut next_retry = 0usize;
    let mut applied = 0u64;
    let mut index = 1;
    let start_ms = 1_700_000_000_000;
    let mut retries_checked = 0;
    while writes.len() < WRITES as usize {
        // Each slot of the entry is a retry if one is due, else a new write.
        let mut slots: Vec<(usize, bool)> = Vec::new();
        while slots.len() < PER_ENTRY {
            let due = next_retry < writes.len()
                && applied >= next_retry as u64 + RETRY_AFTER
                && writes[next_retry].1.is_some();
            if due {
                slots.push((next_retry, true));
                next_retry += 1;
            } else {
                let n = writes.len() as u64;
                let client = n % CLIENTS;
                let seq = n / CLIENTS + 1;
                awaited[client as usize].push_back(seq);
                let key = format!("k{n}").into_bytes();
                writes.push((Write { client, seq, key }, None));
                slots.push((writes.len() - 1, false));
            }
        }
        let proposals = slots
            .iter()
            .map(|&(n, _)| {
                let write = &writes[n].0;
                let lowest = awaited[write.client as usize][0];
                Proposal {
                    write_id: id(write, lowest),
                    command: Command::Put {
                        key: write.key.clone(),
                        value: b"v".to_vec(),
                        ttl_ms: 0,
                    },
                }
            })
            .collect();
        let now_ms = start_ms + applied * 1000 / WRITES_PER_SECOND;
        let group = Command::Group { writes: proposals };
        let outcomes = sm.apply_entries(vec![entry(index, now_ms, WriteId::Untracked, group)]);
        let Ok([Outcome::Group(outcomes)]) = outcomes.as_deref() else {
            panic!("entry {index}: {outcomes:?}");
        };
        index += 1;
        for (&(n, retry), outcome) in slots.iter().zip(outcomes) {
            let (write, first) = &mut writes[n];
            if retry {
                assert_eq!(
                    Some(outcome),
                    first.as_ref(),
                    "the retry of write {n} (client {}, seq {}) was not answered with its first outcome",
                    write.client,
                    write.seq
                );
                let queue = &mut awaited[write.client as usize];
                assert_eq!(queue.pop_front(), Some(write.seq));
                retries_checked += 1;
            } else {
                assert!(matches!(outcome, Outcome::Written { .. }), "{outcome:?}");
                *first = Some(outcome.clone());
                applied += 1;
            }
        }
    }
    assert!(retries_checked as u64 >= WRITES - RETRY_AFTER - PER_ENTRY as u64);
    for (n, (write, first)) in writes.iter().enumerate() {
        let Some(Outcome::Written { version }) = first else {
            panic!("write {n} has no first outcome");
        };
        let record = stored(&engine, &write.key).expect("every key was written");
        assert_eq!(record.version, *version, "write {n} was applied twice");
    }
}

/// Applies one write as its own entry.
fn apply_one(
    sm: &mut StateMachine,
    index: u64,
    now_ms: u64,
    write_id: WriteId,
    command: Command,
) -> Outcome {
    let entry = entry(index, now_ms, write_id, command);
    let mut outcomes = sm.apply_entries(vec![entry]).unwrap();
    outcomes.pop().unwrap()
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms: 0,
    }
}

const T0: u64 = 1_700_000_000_000;

/// A session without writes for 10 minutes (log clock) is gone: a retry
/// of its write is refused and changes nothing; a new session opened from
/// a new seq applies, and the old seq can never apply again.
#[tokio::test]
async fn a_write_of_an_expired_session_is_refused_and_changes_nothing() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let first = apply_one(&mut sm, 1, T0, session(1, 1, 1, 1), put("k", "a"));
    let Outcome::Written { version } = first else {
        panic!("{first:?}");
    };
    // Another client's write moves the log clock past the idle limit.
    let later = T0 + IDLE_EXPIRY_MS + 1;
    apply_one(&mut sm, 2, later, session(2, 1, 1, 1), put("other", "x"));

    let retry = apply_one(&mut sm, 3, later, session(1, 1, 1, 0), put("k", "a"));
    assert!(matches!(retry, Outcome::SessionExpired { .. }), "{retry:?}");
    let record = stored(&engine, b"k").unwrap();
    assert_eq!(
        (record.version, record.value.as_slice()),
        (version, &b"a"[..])
    );
    let write = apply_one(&mut sm, 4, later, session(1, 1, 1, 0), put("k", "b"));
    assert!(matches!(write, Outcome::SessionExpired { .. }), "{write:?}");
    assert_eq!(
        stored(&engine, b"k").unwrap().value,
        b"a",
        "nothing applied"
    );

    // The client opens a new session from a new seq.
    let reopened = apply_one(&mut sm, 5, later, session(1, 2, 2, 2), put("k", "c"));
    assert!(matches!(reopened, Outcome::Written { .. }), "{reopened:?}");
    let old = apply_one(&mut sm, 6, later, session(1, 1, 1, 1), put("k", "d"));
    assert!(matches!(old, Outcome::SessionExpired { .. }), "{old:?}");
    assert_eq!(stored(&engine, b"k").unwrap().value, b"c");

    // The same answers after a restart.
    drop(sm);
    let mut sm = open(&engine);
    let old = apply_one(&mut sm, 7, later, session(1, 1, 1, 1), put("k", "d"));
    assert!(matches!(old, Outcome::SessionExpired { .. }), "{old:?}");
    let again = apply_one(&mut sm, 8, later, session(1, 2, 2, 2), put("k", "c"));
    assert_eq!(again, reopened);
}

/// A write carrying no session start, from a client the shard has no
/// session for, is refused: the shard cannot tell whether it applied.
#[tokio::test]
async fn a_write_without_a_session_is_refused_unless_it_opens_one() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let refused = apply_one(&mut sm, 1, T0, session(9, 5, 5, 0), put("k", "a"));
    assert!(
        matches!(refused, Outcome::SessionExpired { .. }),
        "{refused:?}"
    );
    assert_eq!(stored(&engine, b"k"), None);
    let opened = apply_one(&mut sm, 2, T0, session(9, 6, 5, 6), put("k", "a"));
    assert!(matches!(opened, Outcome::Written { .. }), "{opened:?}");
}

/// Outcomes below the lowest awaited write are forgotten, and those writes
/// refused; outcomes at or above it answer retries.
#[tokio::test]
async fn outcomes_below_the_lowest_awaited_write_are_forgotten() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let one = apply_one(&mut sm, 1, T0, session(1, 1, 1, 1), put("a", "1"));
    let two = apply_one(&mut sm, 2, T0, session(1, 2, 1, 1), put("b", "1"));
    // Write 1 returned: the client now awaits 2 and 3.
    apply_one(&mut sm, 3, T0, session(1, 3, 2, 0), put("c", "1"));
    let retry_two = apply_one(&mut sm, 4, T0, session(1, 2, 2, 0), put("b", "1"));
    assert_eq!(retry_two, two);
    let retry_one = apply_one(&mut sm, 5, T0, session(1, 1, 1, 0), put("a", "1"));
    assert!(
        matches!(retry_one, Outcome::SessionExpired { .. }),
        "{retry_one:?}"
    );
    let Outcome::Written { version } = one else {
        panic!("{one:?}");
    };
    assert_eq!(stored(&engine, b"a").unwrap().version, version);
}

/// A failed CAS keeps a large current value out of its row. A retry gets
/// the value back while the key is unchanged, and after a change the
/// version the CAS saw, marked as without its value; the CAS never runs
/// again.
#[tokio::test]
async fn a_failed_cas_row_leaves_a_large_value_out() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    let big = vec![b'x'; MAX_KEPT_VALUE_BYTES + 1];
    let written = apply_one(
        &mut sm,
        1,
        T0,
        session(1, 1, 1, 1),
        Command::Put {
            key: b"k".to_vec(),
            value: big.clone(),
            ttl_ms: 0,
        },
    );
    let Outcome::Written { version } = written else {
        panic!("{written:?}");
    };
    let cas = Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(version + 1),
        new_value: Some(b"new".to_vec()),
        ttl_ms: 0,
    };
    let failed = apply_one(&mut sm, 2, T0, session(2, 1, 1, 1), cas.clone());
    let expected = Outcome::CasFailed {
        key: b"k".to_vec(),
        current: Some(Current {
            value: big.clone(),
            version,
            expires_at_ms: 0,
        }),
    };
    assert_eq!(failed, expected);
    let retry = apply_one(&mut sm, 3, T0, session(2, 1, 1, 0), cas.clone());
    assert_eq!(retry, expected, "unchanged key: the same answer");

    let changed = apply_one(&mut sm, 4, T0, session(1, 2, 2, 0), put("k", "small"));
    let Outcome::Written { version: newer } = changed else {
        panic!("{changed:?}");
    };
    let retry = apply_one(&mut sm, 5, T0, session(2, 1, 1, 0), cas);
    assert_eq!(
        retry,
        Outcome::CasFailedValueOmitted {
            key: b"k".to_vec(),
            version,
            expires_at_ms: 0
        }
    );
    assert_eq!(stored(&engine, b"k").unwrap().version, newer, "no CAS ran");
}

/// Sessions travel in snapshots: a replica that installed one answers a
/// retry with the first outcome and refuses what the source refused.
#[tokio::test]
async fn sessions_travel_in_snapshots() {
    let source: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut leader = open(&source);
    // More rows than one snapshot item carries.
    let mut outcomes = Vec::new();
    for seq in 1..=2500 {
        let key = format!("k{seq}");
        let outcome = apply_one(
            &mut leader,
            seq,
            T0,
            session(1, seq, 100, 1),
            put(&key, "v"),
        );
        outcomes.push(outcome);
    }
    let snap = leader.get_current_snapshot().await.unwrap().unwrap();
    let target: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut follower = open(&target);
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    for (index, seq) in [(2501, 2500), (2502, 100)] {
        let key = format!("k{seq}");
        let retry = apply_one(
            &mut follower,
            index,
            T0,
            session(1, seq, 100, 0),
            put(&key, "v"),
        );
        assert_eq!(retry, outcomes[seq as usize - 1], "write {seq}");
    }
    let below = apply_one(
        &mut follower,
        2503,
        T0,
        session(1, 99, 99, 0),
        put("k99", "v"),
    );
    assert!(matches!(below, Outcome::SessionExpired { .. }), "{below:?}");
}
