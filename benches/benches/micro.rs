//! Micro benchmarks of the hot paths one request crosses: hashing a key and
//! routing it to its shard, encoding a stored record with its crc32, encoding
//! a log entry, applying a group of entries to a state machine, and placing
//! a large cluster's replicas.
//!
//! `cargo bench -p atoll-bench --bench micro` (add `-- <filter>` for one).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use atoll_placement::{place, split_hash_space, Assignment, NodeSpec};
use atoll_proto::keyhash::key_hash;
use atoll_proto::v1::{ClusterMap, Shard};
use atoll_proto::{NodeId, ReplicaId, ShardId};
use atoll_raft::codec;
use atoll_raft::state_machine::StateMachine;
use atoll_raft::types::{Entry, EntryPayload, LeaderId, LogId};
use atoll_raft::{Command, Request, SessionWrite, ShardKind, WriteId};
use atoll_rocks::{RocksEngine, RocksOptions};
use atoll_storage::{Engine, MemEngine, Record};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const VALUE_BYTES: usize = 256;

fn key(i: u64) -> Vec<u8> {
    format!("user/{i:012}").into_bytes()
}

/// A cluster map whose data shards tile the hash space.
fn map_with(shards: u32) -> ClusterMap {
    let ranges = split_hash_space(shards).expect("at least one shard");
    ClusterMap {
        shards: ranges
            .iter()
            .zip(1u64..)
            .map(|(range, id)| Shard {
                id,
                range_start: range.start,
                range_last: range.last,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    let keys: Vec<Vec<u8>> = (0..1024).map(key).collect();
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("key_hash", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| key_hash(black_box(k)))
                .fold(0, u64::wrapping_add)
        })
    });
    for shards in [16u32, 4096] {
        let map = map_with(shards);
        group.bench_function(format!("hash_and_route/{shards}_shards"), |b| {
            b.iter(|| {
                keys.iter()
                    .filter_map(|k| map.shard_for_hash(key_hash(black_box(k))))
                    .map(|s| s.id)
                    .fold(0, u64::wrapping_add)
            })
        });
    }
    group.finish();
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let record = Record {
        version: 42,
        expires_at_ms: 0,
        value: vec![7; VALUE_BYTES],
    };
    let stored = record.encode();
    group.throughput(Throughput::Bytes(stored.len() as u64));
    group.bench_function("encode_crc32", |b| b.iter(|| black_box(&record).encode()));
    group.bench_function("decode_check_crc32", |b| {
        b.iter(|| Record::decode(black_box(&stored)).expect("valid record"))
    });
    group.finish();
}

fn put_entry(index: u64, value: &[u8]) -> Entry {
    Entry {
        log_id: LogId::new(
            LeaderId {
                term: 1,
                node_id: ReplicaId(1),
            },
            index,
        ),
        payload: EntryPayload::Normal(Request {
            // One client awaiting one write at a time: each write drops
            // the row of the one before.
            write_id: WriteId::Session(SessionWrite {
                client_id: 7,
                seq: index,
                lowest_awaited: index,
                session_start: 1,
            }),
            now_ms: 1_700_000_000_000,
            command: Command::Put {
                key: key(index % 100_000),
                value: value.to_vec(),
                ttl_ms: 0,
            },
        }),
    }
}

fn log_entry(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_entry");
    let entry = put_entry(1, &[7; VALUE_BYTES]);
    let stored = codec::encode(&entry).expect("encodable");
    group.throughput(Throughput::Bytes(stored.len() as u64));
    group.bench_function("encode_crc32", |b| {
        b.iter(|| codec::encode(black_box(&entry)).expect("encodable"))
    });
    group.bench_function("decode_check_crc32", |b| {
        b.iter(|| codec::decode::<Entry>(black_box(&stored), "log entry").expect("valid entry"))
    });
    group.finish();
}

fn open_sm(engine: Arc<dyn Engine>, dir: &std::path::Path) -> StateMachine {
    StateMachine::open(
        ReplicaId(1),
        ShardId(1),
        ShardKind::Data {
            first: 0,
            last: u64::MAX,
        },
        engine,
        dir,
    )
    .expect("state machine opens")
}

/// Applies groups of 64 puts (one write batch each, as a replica applies
/// the committed entries openraft hands it), to the in-memory engine and to
/// RocksDB.
fn apply(c: &mut Criterion) {
    const GROUP: u64 = 64;
    let dir = tempfile::tempdir().expect("temp dir");
    let rocks: Arc<dyn Engine> = Arc::new(
        RocksEngine::open(&dir.path().join("db"), &RocksOptions::default()).expect("rocksdb"),
    );
    let engines: [(&str, Arc<dyn Engine>); 2] =
        [("memory", Arc::new(MemEngine::new())), ("rocksdb", rocks)];
    let value = vec![7; VALUE_BYTES];
    let mut group = c.benchmark_group("state_machine_apply");
    group.throughput(Throughput::Elements(GROUP));
    for (name, engine) in engines {
        let mut sm = open_sm(engine, dir.path());
        let mut next = 1u64;
        group.bench_function(format!("64_puts/{name}"), |b| {
            b.iter_batched(
                || {
                    let entries: Vec<Entry> =
                        (next..next + GROUP).map(|i| put_entry(i, &value)).collect();
                    next += GROUP;
                    entries
                },
                |entries| sm.apply_entries(entries).expect("applied"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// 1,000 nodes on 5 islands with capacities 1 to 4, and 33,334 shards of 3
/// replicas (100,002 replicas), placed from nothing.
fn placement(c: &mut Criterion) {
    let nodes: Vec<NodeSpec> = (1..=1000u64)
        .map(|id| NodeSpec {
            id: NodeId(id),
            island: format!("island-{}", id % 5),
            capacity: 1 + id % 4,
        })
        .collect();
    let shards: Vec<ShardId> = (1..=33_334).map(ShardId).collect();
    let mut group = c.benchmark_group("placement");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("1000_nodes_100k_replicas", |b| {
        b.iter(|| place(&nodes, &shards, 3, &Assignment::new()).expect("placeable"))
    });
    group.finish();
}

criterion_group!(benches, routing, record, log_entry, apply, placement);
criterion_main!(benches);
