//! `atoll-bench scale-out`: three nodes on three islands grow to six, one
//! new node per island, while clients read and write (acceptance test 1 of
//! the elastic fabric, docs/design/elastic.md).
//!
//! The cluster is loaded with `--keys` keys, then `--clients` clients each
//! write and read keys of their own throughout. Three spare nodes join,
//! one per island; the controller moves their share of replicas to them.
//! Measured: the time from the first join until the layout stops changing
//! (no move for `--quiet`), the moves made against the fewest that reach
//! the final layout (every replica a new node ends with came by a move),
//! the replicas per node at the end, the bytes the nodes sent to catch the
//! new replicas up against the size of those replicas, the longest time
//! any shard was seen without a leader, and write latency before and
//! during the moves. At the end every loaded key and every acknowledged
//! write is read back, and the clients' history of reads and writes is
//! checked for linearizability (the harness's register checker).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_client::{Client, ClientOptions, StatusResponse};
use atoll_jepsen::checker::{check_register_history, Budget, Verdict};
use atoll_jepsen::cluster::{Cluster, ClusterSpec};
use atoll_jepsen::history::{Op, OpKind, Outcome, ProcessId, Reply};
use atoll_proto::v1::ReplicaRole;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::setup::{lost_writes, wait_ready, ClusterRun};
use crate::store::AtollStore;

/// Options of the scale-out scenario.
#[derive(Clone, Debug, clap::Args)]
pub struct ScaleOutArgs {
    /// Keys loaded before the nodes join.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per loaded value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Data shards of the cluster.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Clients that read and write throughout.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of the measured phase before the joins.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    before: Duration,
    /// The layout counts as settled after this long without a move.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// How long the layout may take to settle.
    #[arg(long, default_value = "15min", value_parser = humantime::parse_duration)]
    patience: Duration,
    #[command(flatten)]
    pub cluster: ClusterRun,
}

/// Keys each client cycles over.
const KEYS_PER_CLIENT: u64 = 500;
/// How often the cluster's leaders are sampled.
const SAMPLE: Duration = Duration::from_millis(250);

struct Shared {
    /// Whether the joins have begun (latency goes to the second histogram).
    moving: AtomicBool,
    stop: AtomicBool,
    /// Write latency in µs: before the joins, then from the first join.
    latency: Mutex<[Histogram<u64>; 2]>,
    /// Per client and key: the last counter acknowledged.
    acked: Mutex<Vec<Vec<u64>>>,
    errors: AtomicU64,
    reads: AtomicU64,
    /// Every client operation, for the register checker; times from
    /// `epoch`.
    history: Mutex<Vec<Op>>,
    epoch: Instant,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn record(&self, op: Op, outcome: Outcome) {
        let op = op.completed(outcome, self.now_ns());
        if let Ok(mut history) = self.history.lock() {
            history.push(op);
        }
    }
}

fn client_key(client: usize, key: u64) -> Vec<u8> {
    format!("c-{client}-{key}").into_bytes()
}

fn load_key(i: u64) -> Vec<u8> {
    format!("load-{i:08}").into_bytes()
}

pub async fn run(args: &ScaleOutArgs, atoll_bin: PathBuf) -> anyhow::Result<()> {
    if args.clients == 0 || args.keys == 0 || args.shards == 0 {
        bail!("--clients, --keys and --shards must be at least 1");
    }
    let mut spec = ClusterSpec::spread(3, 3, args.shards);
    spec.raft.extend(args.cluster.atoll_raft.iter().cloned());
    spec.spares = 3;
    let (run, mut cluster) = args.cluster.start("atoll-scale-out", &atoll_bin, &spec)?;
    let result = scenario(args, &mut cluster).await;
    run.finish(cluster, result)
}

async fn scenario(args: &ScaleOutArgs, cluster: &mut Cluster) -> anyhow::Result<()> {
    let options = ClientOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let client = cluster.client_with(options).await?;
    wait_ready(&AtollStore::new(client.clone()), Duration::from_secs(60))
        .await
        .context("the cluster never took a write")?;
    let loaded = Instant::now();
    let value = vec![b'l'; args.value_size];
    let mut next = 0;
    while next < args.keys {
        let end = (next + 2_000).min(args.keys);
        let pairs = (next..end).map(|i| (load_key(i), value.clone())).collect();
        client.put_many(pairs).await.context("loading")?;
        next = end;
    }
    println!(
        "loaded {} keys of {} B in {:.1} s",
        args.keys,
        args.value_size,
        loaded.elapsed().as_secs_f64()
    );

    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let shared = Arc::new(Shared {
        moving: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        latency: Mutex::new([histogram()?, histogram()?]),
        acked: Mutex::new(vec![vec![0; KEYS_PER_CLIENT as usize]; args.clients]),
        errors: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        history: Mutex::new(Vec::new()),
        epoch: Instant::now(),
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(client_loop(c, client.clone(), shared.clone())))
        .collect();
    tokio::time::sleep(args.before).await;

    let before = client.cluster_status().await?;
    let moves_before = before.map.as_ref().map_or(0, |m| m.next_move_id);
    let sent_before = bytes_sent(&before);
    shared.moving.store(true, Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..3 {
        match cluster.join_spare()? {
            Some((i, island)) => println!("node {} joins on {island}", i + 1),
            None => bail!("no spare node to join"),
        }
    }
    let watched = watch(&client, args, started).await?;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    report(args, &shared, &watched, moves_before, sent_before)?;
    verify(args, &client, &shared).await?;
    check_history(&shared)
}

/// Bytes every node has sent to replicas catching up since it started
/// (snapshot chunks and log entries to learners).
fn bytes_sent(status: &StatusResponse) -> u64 {
    (status.nodes.iter())
        .filter_map(|n| n.status.as_ref())
        .map(|s| s.snapshot_bytes_sent)
        .sum()
}

/// What the watch saw until the layout settled.
struct Watched {
    /// From the first join until the last move finished.
    settled_after: Duration,
    /// The longest time each shard was seen without a leader.
    leaderless: BTreeMap<u64, Duration>,
    /// Samples in which some node did not answer.
    partial_samples: usize,
    samples: usize,
    last: StatusResponse,
}

/// Samples the cluster until no move has run for `--quiet`.
async fn watch(client: &Client, args: &ScaleOutArgs, started: Instant) -> anyhow::Result<Watched> {
    let mut last_move = Instant::now();
    let mut without: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut leaderless: BTreeMap<u64, Duration> = BTreeMap::new();
    let (mut samples, mut partial_samples) = (0, 0);
    loop {
        let Ok(status) = client.cluster_status().await else {
            tokio::time::sleep(SAMPLE).await;
            continue;
        };
        let now = Instant::now();
        let map = status.map.as_ref().context("a status without a map")?;
        if !map.moves.is_empty() {
            last_move = now;
        }
        let led: Vec<u64> = (status.nodes.iter())
            .filter_map(|n| n.status.as_ref())
            .flat_map(|s| &s.replicas)
            .filter(|r| r.role == ReplicaRole::Leader as i32)
            .map(|r| r.shard_id)
            .collect();
        // A node that did not answer this sample (busy past the status
        // call's deadline) may lead: a shard with a replica there is not
        // seen either way.
        let answered: Vec<u64> = (status.nodes.iter())
            .filter(|n| n.status.is_some())
            .map(|n| n.node_id)
            .collect();
        samples += 1;
        partial_samples += usize::from(answered.len() < status.nodes.len());
        for shard in map.meta.iter().chain(&map.shards) {
            if led.contains(&shard.id) {
                without.remove(&shard.id);
            } else if !(shard.replicas.iter()).all(|r| answered.contains(&r.node_id)) {
                continue;
            } else {
                let since = *without.entry(shard.id).or_insert(now);
                let longest = leaderless.entry(shard.id).or_default();
                *longest = (*longest).max(now - since);
            }
        }
        let joined = map.nodes.len() >= 6;
        if joined && map.moves.is_empty() && now - last_move >= args.quiet {
            return Ok(Watched {
                settled_after: last_move - started,
                leaderless,
                partial_samples,
                samples,
                last: status,
            });
        }
        if now - started > args.patience {
            bail!(
                "the layout did not settle within {:?}: {} moves in progress",
                args.patience,
                map.moves.len()
            );
        }
        tokio::time::sleep(SAMPLE).await;
    }
}

async fn client_loop(c: usize, client: Client, shared: Arc<Shared>) {
    let mut counter = 0u64;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    // A process issues one operation at a time; after an ambiguous one the
    // client goes on as a new process (the checker's model).
    let mut process = c as u64;
    let stride = shared.acked.lock().map_or(1, |a| a.len() as u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let key = rng.random_range(0..KEYS_PER_CLIENT);
        let name = client_key(c, key);
        let invoked = |kind| {
            Op::invoked(
                ProcessId(process),
                String::from_utf8_lossy(&name),
                kind,
                shared.now_ns(),
            )
        };
        if rng.random_bool(0.5) {
            let op = invoked(OpKind::Read);
            let outcome = match client.get(name.clone()).await {
                Ok(found) => {
                    shared.reads.fetch_add(1, Ordering::Relaxed);
                    Outcome::Ok(Reply::Value(found.map(|kv| counter_of(&kv.value))))
                }
                Err(_) => Outcome::Fail,
            };
            shared.record(op, outcome);
            continue;
        }
        counter += 1;
        let op = invoked(OpKind::write(counter as i64));
        let phase = usize::from(shared.moving.load(Ordering::Relaxed));
        let at = Instant::now();
        let outcome = match client.put(name.clone(), counter.to_be_bytes()).await {
            Ok(_) => {
                let micros = at.elapsed().as_micros() as u64;
                if let Ok(mut latency) = shared.latency.lock() {
                    let _ = latency[phase].record(micros.max(1));
                }
                if let Ok(mut acked) = shared.acked.lock() {
                    acked[c][key as usize] = counter;
                }
                Outcome::Ok(Reply::Done)
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                match e {
                    atoll_client::Error::Ambiguous(_) => Outcome::Ambiguous,
                    _ => Outcome::Fail,
                }
            }
        };
        let ambiguous = outcome == Outcome::Ambiguous;
        shared.record(op, outcome);
        if ambiguous {
            process += stride;
        }
    }
}

/// The counter a client wrote as a value (`-1` for a value no client of
/// this run wrote, which the checker then reports).
fn counter_of(value: &[u8]) -> i64 {
    <[u8; 8]>::try_from(value).map_or(-1, |b| u64::from_be_bytes(b) as i64)
}

/// Checks the clients' reads and writes for linearizability, key by key.
fn check_history(shared: &Shared) -> anyhow::Result<()> {
    let ops = shared
        .history
        .lock()
        .map_err(|_| anyhow::anyhow!("history lock poisoned"))?
        .clone();
    let reports = check_register_history(&ops, &Budget::default())?;
    let verdict = Verdict::combine(reports.values().map(|r| &r.verdict));
    println!(
        "register history: {} operations on {} keys: {verdict}",
        ops.len(),
        reports.len()
    );
    if !verdict.is_valid() {
        bail!("the clients' history is not linearizable: {verdict}");
    }
    Ok(())
}

fn report(
    args: &ScaleOutArgs,
    shared: &Shared,
    watched: &Watched,
    moves_before: u64,
    sent_before: u64,
) -> anyhow::Result<()> {
    let status = &watched.last;
    let map = status.map.as_ref().context("a status without a map")?;
    let mut replicas: BTreeMap<u64, usize> = BTreeMap::new();
    for shard in map.meta.iter().chain(&map.shards) {
        for r in &shard.replicas {
            *replicas.entry(r.node_id).or_default() += 1;
        }
    }
    let total: usize = replicas.values().sum();
    let new_nodes: Vec<u64> = map
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id > 3)
        .collect();
    let ideal: usize = new_nodes
        .iter()
        .map(|n| replicas.get(n).copied().unwrap_or(0))
        .sum();
    let moves = map.next_move_id.saturating_sub(moves_before);
    // The loaded data over the shards (keys are spread by hash); RocksDB's
    // estimate would leave out what is still in memtables.
    let loaded = args.keys * (args.value_size as u64 + 13);
    let shard_bytes = loaded / u64::from(args.shards.max(1));
    println!(
        "settled {:.1} s after the first join",
        watched.settled_after.as_secs_f64()
    );
    println!(
        "moves: {moves} made, {ideal} needed at least (every replica the new nodes hold): {:.2}x; \
         about {} MiB moved against {} MiB (a shard holds about {} MiB of the loaded data)",
        moves as f64 / ideal.max(1) as f64,
        (moves * shard_bytes) >> 20,
        (ideal as u64 * shard_bytes) >> 20,
        shard_bytes >> 20
    );
    // What the nodes sent to catch new replicas up (snapshot chunks and
    // log entries to learners, as each node's pacing let them through)
    // against the loaded data of the data shards' replicas the new nodes
    // hold. RocksDB's size estimates leave out what is still in memtables,
    // most of the data here.
    let new_data_replicas = (map.shards.iter())
        .flat_map(|shard| &shard.replicas)
        .filter(|r| new_nodes.contains(&r.node_id))
        .count() as u64;
    let held = new_data_replicas * shard_bytes;
    let sent = bytes_sent(status).saturating_sub(sent_before);
    println!(
        "bytes sent to catch new replicas up: {} MiB; the new nodes' {new_data_replicas} data \
         replicas hold {} MiB of the loaded data: {:.2}x",
        sent >> 20,
        held >> 20,
        sent as f64 / held.max(1) as f64
    );
    let share = total as f64 / map.nodes.len().max(1) as f64;
    let per_node: Vec<String> = replicas.iter().map(|(n, r)| format!("n{n}: {r}")).collect();
    println!(
        "replicas per node (meta included; equal capacities, so {share:.1} each): {}",
        per_node.join(", ")
    );
    let worst = watched.leaderless.iter().max_by_key(|(_, d)| **d);
    match worst {
        Some((shard, d)) => println!(
            "longest time a shard was seen without a leader: {:.2} s (shard {shard}; sampled every {} ms)",
            d.as_secs_f64(),
            SAMPLE.as_millis()
        ),
        None => println!("every shard had a leader at every sample"),
    }
    println!(
        "samples in which some node did not answer: {} of {}",
        watched.partial_samples, watched.samples
    );
    let latency = shared
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?;
    for (name, h) in ["before the joins", "from the first join"]
        .iter()
        .zip(latency.iter())
    {
        println!(
            "writes {name}: {} ok, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "reads: {}, failed operations: {}",
        shared.reads.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Reads every loaded key and every client key back: each loaded key must
/// hold its value, each client key at least its last acknowledged counter.
async fn verify(args: &ScaleOutArgs, client: &Client, shared: &Shared) -> anyhow::Result<()> {
    let mut missing = 0;
    let keys: Vec<u64> = (0..args.keys).collect();
    for chunk in keys.chunks(1_000) {
        let names: Vec<Vec<u8>> = chunk.iter().map(|&i| load_key(i)).collect();
        let got = client
            .batch_get(&names, atoll_client::Consistency::Linearizable)
            .await?;
        missing += got
            .iter()
            .filter(|kv| {
                kv.as_ref()
                    .is_none_or(|kv| kv.value.len() != args.value_size)
            })
            .count();
    }
    let acked = shared
        .acked
        .lock()
        .map_err(|_| anyhow::anyhow!("acked lock poisoned"))?
        .clone();
    let lost = lost_writes(&acked, |c, key| async move {
        let got = client.get(client_key(c, key)).await?;
        Ok(got.map(|kv| kv.value))
    })
    .await?;
    println!("read back: {missing} loaded keys missing, {lost} acknowledged writes lost");
    if missing > 0 || lost > 0 {
        bail!("data lost: {missing} loaded keys, {lost} acknowledged writes");
    }
    Ok(())
}
