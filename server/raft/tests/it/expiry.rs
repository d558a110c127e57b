//! TTL expiry judged by the log clock (docs/design/ttl-and-clocks.md).

use std::sync::Arc;

use atoll_raft::types::Entry;
use atoll_raft::{Command, Expected, Outcome};
use atoll_storage::keys::data_range;
use atoll_storage::{Cf, Engine, MemEngine};

use crate::state_machine::{entry, open, stored, v, ApplyAll};

fn put_ttl(key: &str, value: &str, ttl_ms: u64) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms,
    }
}

/// Key k expires at T = 1100. An entry stamped 1200 moves the log clock
/// past T (a read there sees k absent); a CAS stamped 1050, proposed
/// before T but applied after that entry, must see k absent too.
#[tokio::test]
async fn expiry_is_judged_by_the_log_clock_which_never_goes_back() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine);
    sm.apply(vec![entry(1, None, 1_000, put_ttl("k", "a", 100))])
        .await
        .unwrap();
    sm.apply(vec![entry(2, None, 1_200, put_ttl("other", "x", 0))])
        .await
        .unwrap();
    let late_cas = Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(v(1, 0)),
        new_value: Some(b"b".to_vec()),
        ttl_ms: 0,
    };
    let out = sm
        .apply(vec![entry(3, None, 1_050, late_cas)])
        .await
        .unwrap();
    assert!(
        matches!(&out[0], Outcome::CasFailed { current: None, .. }),
        "a write stamped before the expiry, applied after the clock passed it, sees the key gone: {out:?}"
    );
    // A write's TTL counts from the log clock, not from its own stamp.
    sm.apply(vec![entry(4, None, 1_100, put_ttl("t", "v", 50))])
        .await
        .unwrap();
    assert_eq!(stored(&engine, b"t").unwrap().expires_at_ms, 1_250);
    // The clock survives a restart.
    let mut reopened = open(&engine);
    let create = Command::Cas {
        key: b"k".to_vec(),
        expected: Expected::Version(0),
        new_value: Some(b"c".to_vec()),
        ttl_ms: 0,
    };
    let out = reopened
        .apply(vec![entry(5, None, 900, create)])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Written { version: v(5, 0) }]);
}

/// The entries of a sweep scenario: writes with TTLs, a rewrite that leaves
/// a stale index row, a delete, and sweeps with small limits.
fn sweep_scenario() -> Vec<Entry> {
    let due = |index, now| entry(index, None, now, Command::ExpireDue { limit: 2 });
    vec![
        entry(1, None, 1_000, put_ttl("a", "1", 100)),
        entry(2, None, 1_000, put_ttl("b", "1", 300)),
        entry(3, None, 1_000, put_ttl("c", "1", 150)),
        entry(4, None, 1_000, put_ttl("d", "1", 120)),
        // a's row at 1100 is now stale: a lives until 1550.
        entry(5, None, 1_050, put_ttl("a", "2", 500)),
        entry(6, None, 1_060, Command::Delete { key: b"d".to_vec() }),
        // Clock 1200: rows a@1100 (stale), d@1120 (deleted), c@1150 due.
        due(7, 1_200),
        due(8, 1_200),
        due(9, 1_400),
        entry(10, None, 1_400, put_ttl("e", "1", 10)),
        due(11, 1_600),
        due(12, 1_600),
    ]
}

fn data_rows(engine: &Arc<dyn Engine>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (start, end) = data_range(0, u64::MAX);
    engine.scan(Cf::Data, &start, &end, 1000).unwrap()
}

#[tokio::test]
async fn expire_due_removes_what_ran_out_however_the_entries_are_batched() {
    let one: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut whole = open(&one);
    let together = whole.apply(sweep_scenario()).await.unwrap();
    let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut single = open(&other);
    let mut apart = Vec::new();
    for e in sweep_scenario() {
        apart.extend(single.apply(vec![e]).await.unwrap());
    }
    assert_eq!(together, apart, "same outcomes in one batch and one by one");
    assert_eq!(data_rows(&one), data_rows(&other), "same data");

    let removed: Vec<u64> = together[6..]
        .iter()
        .filter_map(|o| match o {
            Outcome::Expired { removed } => Some(*removed),
            _ => None,
        })
        .collect();
    // 7 takes a's stale row and d's row (nothing removed); 8 removes c;
    // 9 removes b; 11 removes e and a; 12 finds nothing.
    assert_eq!(removed, vec![0, 1, 1, 2, 0]);
    assert!(data_rows(&one).is_empty(), "every key expired and went");
}

/// A replica written before the expiry index existed: its records with a
/// TTL are indexed when it opens, so sweeps find them.
#[tokio::test]
async fn records_written_before_the_index_are_indexed_on_open() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let old = atoll_storage::Record {
        version: 1,
        expires_at_ms: 1_100,
        value: b"v".to_vec(),
    };
    let mut batch = atoll_storage::WriteBatch::new();
    batch.put(
        Cf::Data,
        atoll_storage::keys::data_key(b"old"),
        old.encode(),
    );
    engine.write(batch, true).unwrap();

    let mut sm = open(&engine);
    let out = sm
        .apply(vec![entry(
            1,
            None,
            2_000,
            Command::ExpireDue { limit: 10 },
        )])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Expired { removed: 1 }]);
    assert_eq!(stored(&engine, b"old"), None);
}
