//! `atoll-bench snapshot`: a large shard sent to a replica that was away,
//! under write load (the snapshot acceptance of docs/design/elastic.md).
//!
//! One data shard on three nodes. Writers put small values throughout and
//! their latency is recorded per phase. The shard is loaded with `--mib`
//! of large values while all nodes are up, then measured (`before`); one
//! follower is stopped while half the values are overwritten, so the
//! leader builds a new snapshot and purges its log past the follower
//! (`away`); then the follower is restarted (`catch-up`) until it has
//! installed the leader's snapshot of the whole shard and applied what the
//! leader had. The follower's resident memory is sampled meanwhile. At the end the leader
//! is killed, so the data is read back from a quorum that includes the
//! replica that installed the snapshot: every loaded value and every
//! acknowledged write must be there.
//!
//! With `--to-new-node`, after `before` a fourth node joins on node 1's
//! island and node 1's replica is moved to it (placement paused, so nothing
//! else moves); the writers' latency is recorded until the map shows the
//! move done, and the new node's memory is sampled. Then one old replica is
//! stopped and everything is read back from a quorum that includes the
//! new node.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_client::{Client, ClientOptions};
use atoll_jepsen::cluster::{Cluster, ClusterSpec};
use atoll_proto::v1::ReplicaRole;
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use tokio::time::Instant;

use crate::setup::{lost_writes, resident_kib, status_kib, wait_ready, ClusterRun};
use crate::store::AtollStore;

/// Options of the snapshot scenario.
#[derive(Clone, Debug, clap::Args)]
pub struct SnapshotArgs {
    /// MiB loaded into the shard while the follower is away (the size of
    /// the snapshot it then receives).
    #[arg(long, default_value_t = 2048)]
    mib: u64,
    /// Bytes per loaded value.
    #[arg(long, default_value_t = 64 << 10)]
    load_value_size: usize,
    /// Concurrent writers of small values, throughout.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Length of the `before` phase (and of the `away` phase's measured
    /// part, after the load).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// How long the follower may take to catch up.
    #[arg(long, default_value = "15min", value_parser = humantime::parse_duration)]
    patience: Duration,
    /// Run the restarted follower at this nice level (`renice`): on one
    /// host, its work shares the cores with the leader's, which a real
    /// deployment does not; a high nice level approximates a machine of
    /// its own.
    #[arg(long)]
    follower_nice: Option<i32>,
    /// Instead of a returning follower, move a follower's replica to a node
    /// that joins after the load: the large-shard move of the elastic
    /// fabric's acceptance (docs/design/elastic.md).
    #[arg(long)]
    to_new_node: bool,
    /// The nodes' snapshot byte-rate throttle (`raft.snapshot_rate`), in
    /// MiB per second; the report compares what the leader sent with it.
    #[arg(long, default_value_t = 64)]
    snapshot_rate_mib: u64,
    #[command(flatten)]
    pub cluster: ClusterRun,
}

/// The phases writers record their latency in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Warmup = 0,
    Before = 1,
    Load = 2,
    Away = 3,
    CatchUp = 4,
    Done = 5,
}

const PHASES: [(&str, Phase); 5] = [
    ("load (3 up)", Phase::Warmup),
    ("before (3 up)", Phase::Before),
    ("overwrite (1 away)", Phase::Load),
    ("away (after overwrite)", Phase::Away),
    ("catch-up (snapshot)", Phase::CatchUp),
];

const SMALL_VALUE: usize = 256;
/// Keys each writer cycles over.
const KEYS_PER_WRITER: u64 = 1_000;

struct Shared {
    phase: AtomicUsize,
    stop: AtomicBool,
    /// Per writer, per phase.
    histograms: Mutex<Vec<Vec<Histogram<u64>>>>,
    /// Per writer and key: the last counter acknowledged.
    acked: Mutex<Vec<Vec<u64>>>,
    errors: AtomicU64,
    /// Writes slower than [`SLOW`] during the catch-up: when each started
    /// (since the catch-up began) and how long it took.
    slow: Mutex<Vec<(Duration, Duration)>>,
    catch_up_start: Mutex<Option<Instant>>,
}

/// A node's process id and the CPU time it has used, if it runs.
type NodeCpu = Option<(u32, Duration)>;

/// A write this slow during the catch-up is listed in the report.
const SLOW: Duration = Duration::from_millis(50);

fn writer_key(writer: usize, key: u64) -> Vec<u8> {
    format!("w-{writer}-{key}").into_bytes()
}

fn load_key(i: u64) -> Vec<u8> {
    format!("load-{i:08}").into_bytes()
}

/// A value of `size` bytes whose first 8 are `counter`.
fn value(counter: u64, size: usize) -> Vec<u8> {
    let mut v = vec![b'v'; size.max(8)];
    v[..8].copy_from_slice(&counter.to_be_bytes());
    v
}

/// The value of key `i` in load `generation`: incompressible, and
/// recomputable.
fn load_value(i: u64, generation: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(i * 2 + generation).fill_bytes(&mut v);
    v
}

/// The generation key `i` holds at the end: the first half is overwritten.
/// The generation loaded value `i` ends with, when the first `overwritten`
/// values were loaded twice.
fn final_generation(i: u64, overwritten: u64) -> u64 {
    u64::from(i < overwritten)
}

async fn write_loop(client: Client, shared: Arc<Shared>, writer: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(writer as u64);
    let mut counter = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        counter += 1;
        let key = rng.random_range(0..KEYS_PER_WRITER);
        let phase = shared.phase.load(Ordering::Relaxed);
        let start = Instant::now();
        let done = client
            .put(writer_key(writer, key), value(counter, SMALL_VALUE))
            .await;
        let micros = start.elapsed().as_micros() as u64;
        match done {
            Ok(_) => {
                let took = start.elapsed();
                if phase == Phase::CatchUp as usize && took >= SLOW {
                    let since = shared.catch_up_start.lock().ok().and_then(|s| *s);
                    if let (Some(since), Ok(mut slow)) = (since, shared.slow.lock()) {
                        slow.push((start.saturating_duration_since(since), took));
                    }
                }
                if let Ok(mut h) = shared.histograms.lock() {
                    let _ = h[writer][phase].record(micros.max(1));
                }
                if let Ok(mut acked) = shared.acked.lock() {
                    acked[writer][key as usize] = counter;
                }
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One node's replica of the shard.
#[derive(Clone, Copy, Debug, Default)]
struct ReplicaState {
    applied: u64,
    snapshot: u64,
    purged: u64,
}

/// The status of the shard's replicas: the leader's node index, and each
/// node's replica, from the nodes that answer.
async fn shard_status(
    client: &Client,
) -> anyhow::Result<(Option<usize>, Vec<Option<ReplicaState>>)> {
    let status = client.cluster_status().await?;
    let mut leader = None;
    let mut states = vec![None; status.nodes.len()];
    for report in &status.nodes {
        let Some(node) = &report.status else { continue };
        let index = (report.node_id as usize).saturating_sub(1);
        let data = node
            .replicas
            .iter()
            .filter(|r| r.shard_id != atoll_proto::ShardId::META.0);
        for replica in data {
            if replica.role == ReplicaRole::Leader as i32 {
                leader = Some(index);
            }
            if let Some(slot) = states.get_mut(index) {
                *slot = Some(ReplicaState {
                    applied: replica.last_applied_index,
                    snapshot: replica.snapshot_index,
                    purged: replica.purged_index,
                });
            }
        }
    }
    Ok((leader, states))
}

/// Runs the scenario and prints its report.
pub async fn run(args: &SnapshotArgs, atoll_bin: PathBuf) -> anyhow::Result<()> {
    if args.writers == 0 || args.mib == 0 || args.load_value_size < 8 {
        bail!("--writers and --mib must be at least 1, --load-value-size at least 8");
    }
    let mut spec = ClusterSpec::spread(3, 3, 1);
    spec.raft
        .push(format!("snapshot_rate = \"{}MiB\"", args.snapshot_rate_mib));
    spec.raft.extend(args.cluster.atoll_raft.iter().cloned());
    // One shard throughout: no split by size.
    spec.cluster.push("split_bytes = \"0B\"".into());
    if args.to_new_node {
        spec.spares = 1;
    }
    let (run, mut cluster) = args
        .cluster
        .start("atoll-snapshot-bench", &atoll_bin, &spec)?;
    let result = scenario(args, &mut cluster, run.dir()).await;
    run.finish(cluster, result)
}

async fn connect(cluster: &Cluster) -> anyhow::Result<Client> {
    let options = ClientOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Ok(cluster.client_with(options).await?)
}

async fn scenario(
    args: &SnapshotArgs,
    cluster: &mut Cluster,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let client = connect(cluster).await?;
    wait_ready(&AtollStore::new(client.clone()), Duration::from_secs(60))
        .await
        .context("the cluster never took a write")?;

    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3);
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(Phase::Warmup as usize),
        stop: AtomicBool::new(false),
        histograms: Mutex::new(
            (0..args.writers)
                .map(|_| {
                    (0..=Phase::Done as usize)
                        .map(|_| new_histogram())
                        .collect::<Result<_, _>>()
                })
                .collect::<Result<_, _>>()?,
        ),
        acked: Mutex::new(vec![vec![0; KEYS_PER_WRITER as usize]; args.writers]),
        errors: AtomicU64::new(0),
        slow: Mutex::new(Vec::new()),
        catch_up_start: Mutex::new(None),
    });
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        writers.spawn(write_loop(client.clone(), shared.clone(), w));
    }
    let set_phase = |p: Phase| shared.phase.store(p as usize, Ordering::Relaxed);
    // CPU of each node at each phase's start (and at the end).
    let mut marks: Vec<(Phase, Instant, Vec<NodeCpu>)> = Vec::new();
    let cpu = |cluster: &Cluster| -> Vec<NodeCpu> {
        (0..cluster.len())
            .map(|i| {
                let pid = cluster.pid(i)?;
                Some((pid, crate::setup::cpu_time(&[pid])?))
            })
            .collect()
    };
    marks.push((Phase::Warmup, Instant::now(), cpu(cluster)));

    let keys = (args.mib << 20) / args.load_value_size as u64;
    let load_start = Instant::now();
    load(&client, 0..keys, 0, args.load_value_size).await?;
    let load_time = load_start.elapsed();
    // Let the load's flushes and compactions settle a little.
    tokio::time::sleep(args.phase).await;
    set_phase(Phase::Before);
    marks.push((Phase::Before, Instant::now(), cpu(cluster)));
    tokio::time::sleep(args.phase).await;
    if args.to_new_node {
        let moved = move_to_new_node(args, cluster, &client, &shared).await;
        shared.stop.store(true, Ordering::Relaxed);
        while writers.join_next().await.is_some() {}
        return report_move(args, cluster, &shared, keys, load_time, moved?).await;
    }

    let (leader, states) = shard_status(&client).await?;
    let leader = leader.context("the shard has no leader")?;
    let away = (leader + 1) % 3;
    let stopped_at = states[away].context("the follower's state")?.applied;
    cluster.kill(away)?;
    set_phase(Phase::Load);
    marks.push((Phase::Load, Instant::now(), cpu(cluster)));
    load(&client, 0..keys / 2, 1, args.load_value_size).await?;
    set_phase(Phase::Away);
    marks.push((Phase::Away, Instant::now(), cpu(cluster)));
    tokio::time::sleep(args.phase).await;
    // The follower must need a snapshot: the leader's log no longer holds
    // the entries after the follower's last.
    let purged_past = Instant::now() + args.patience;
    let target = loop {
        let (_, states) = shard_status(&client).await?;
        let state = states[leader].context("the leader's state")?;
        if state.purged > stopped_at {
            break state;
        }
        if Instant::now() > purged_past {
            bail!("the leader never purged its log past the follower's index {stopped_at}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let pid_start = Instant::now();
    cluster.start_node(away)?;
    if let (Some(nice), Some(pid)) = (args.follower_nice, cluster.pid(away)) {
        let status = std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running renice")?;
        if !status.success() {
            bail!("renice -n {nice} -p {pid} failed");
        }
    }
    if let Ok(mut since) = shared.catch_up_start.lock() {
        *since = Some(Instant::now());
    }
    set_phase(Phase::CatchUp);
    marks.push((Phase::CatchUp, Instant::now(), cpu(cluster)));
    let mut peak_kib = 0u64;
    let caught_up = loop {
        if let Some(kib) = resident_kib(cluster).get(away).copied().flatten() {
            peak_kib = peak_kib.max(kib);
        }
        let behind = match shard_status(&client).await {
            Ok((_, states)) => states[away].is_none_or(|s| s.applied < target.applied),
            Err(_) => true,
        };
        if !behind {
            break pid_start.elapsed();
        }
        if pid_start.elapsed() > args.patience {
            bail!(
                "the restarted follower did not catch up within {:?}",
                args.patience
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    set_phase(Phase::Done);
    marks.push((Phase::Done, Instant::now(), cpu(cluster)));
    shared.stop.store(true, Ordering::Relaxed);
    while writers.join_next().await.is_some() {}
    let hwm_kib = (cluster.pid(away))
        .and_then(|pid| status_kib(pid, "VmHWM"))
        .unwrap_or(0);
    let snapshot_bytes = kept_snapshot_bytes(&dir.join(format!("node-{}", away + 1)));
    let (_, states) = shard_status(&client).await?;
    let installed_at = states[away].map_or(0, |s| s.snapshot);

    // Read everything back without the old leader: the quorum left holds
    // the replica that installed the snapshot.
    cluster.kill(leader)?;
    let reader = connect(cluster).await?;
    let (missing_loaded, lost_writes) =
        verify(&reader, &shared, keys, keys / 2, args.load_value_size).await?;

    let histograms = shared
        .histograms
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "## Snapshot to a returning follower: {} MiB, {} writers\n",
        args.mib, args.writers
    );
    println!("| phase | writes | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let mut p99 = [0.0f64; Phase::Done as usize + 1];
    for (name, phase) in PHASES {
        p99[phase as usize] = latency_row(name, &histograms, phase)?;
    }
    println!();
    println!("CPU per node (cores busy, on average over the phase):\n");
    println!("| phase | wall s | node 1 | node 2 | node 3 |");
    println!("|---|---|---|---|---|");
    for pair in marks.windows(2) {
        let ((phase, from, start), (_, to, end)) = (&pair[0], &pair[1]);
        let wall = to.duration_since(*from).as_secs_f64();
        let name = PHASES
            .iter()
            .find(|(_, p)| p == phase)
            .map_or("?", |(n, _)| n);
        let busy: Vec<String> = (start.iter().zip(end))
            .map(|(a, b)| match (a, b) {
                (Some((pa, ca)), Some((pb, cb))) if pa == pb => {
                    format!("{:.2}", (cb.saturating_sub(*ca)).as_secs_f64() / wall)
                }
                (_, Some((_, cb))) => format!("{:.2}", cb.as_secs_f64() / wall),
                _ => "-".into(),
            })
            .collect();
        println!("| {name} | {wall:.1} | {} |", busy.join(" | "));
    }
    println!();
    // Slow writes of the catch-up, by the second they started in.
    let slow = shared
        .slow
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut by_second: std::collections::BTreeMap<u64, (usize, Duration)> = Default::default();
    for (at, took) in slow.iter() {
        let slot = by_second.entry(at.as_secs()).or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(*took);
    }
    let seconds: Vec<String> = (by_second.iter())
        .map(|(s, (n, max))| format!("{s}s: {n} (max {} ms)", max.as_millis()))
        .collect();
    println!(
        "- writes over {} ms during the catch-up, by second after the restart: {}",
        SLOW.as_millis(),
        seconds.join(", ")
    );
    let catch_up = p99[Phase::CatchUp as usize];
    println!(
        "- write p99 during the catch-up: {:.2}x before, {:.2}x away",
        catch_up / p99[Phase::Before as usize],
        catch_up / p99[Phase::Away as usize]
    );
    println!(
        "- loaded {keys} values of {} B in {:.1} s",
        args.load_value_size,
        load_time.as_secs_f64()
    );
    println!(
        "- follower stopped at index {stopped_at}; leader purged to {}, applied {}; follower's snapshot after catch-up: index {installed_at}",
        target.purged, target.applied
    );
    println!(
        "- follower caught up {:.1} s after its restart; kept snapshot {:.1} MiB ({:.1} MiB/s over the catch-up)",
        caught_up.as_secs_f64(),
        snapshot_bytes as f64 / (1 << 20) as f64,
        snapshot_bytes as f64 / (1 << 20) as f64 / caught_up.as_secs_f64()
    );
    println!(
        "- follower resident memory: peak sampled {:.0} MiB, VmHWM {:.0} MiB",
        peak_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    println!(
        "- read back without the old leader: {missing_loaded} of {keys} loaded values missing or wrong, {lost_writes} acknowledged writes lost; {} writes failed (not counted as acknowledged)",
        shared.errors.load(Ordering::Relaxed)
    );
    if missing_loaded > 0 || lost_writes > 0 {
        bail!("data was lost");
    }
    Ok(())
}

/// Prints the latency table's row of `phase`, every writer's latencies
/// merged; returns its p99 in ms.
fn latency_row(
    name: &str,
    histograms: &[Vec<Histogram<u64>>],
    phase: Phase,
) -> anyhow::Result<f64> {
    let mut merged = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for per_writer in histograms {
        merged.add(&per_writer[phase as usize])?;
    }
    let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} |",
        merged.len(),
        ms(0.5),
        ms(0.99),
        merged.max() as f64 / 1000.0
    );
    Ok(ms(0.99))
}

/// What the move to a new node took.
struct Moved {
    /// The joined node's index.
    to: usize,
    took: Duration,
    /// The joined node's resident memory: the largest sample, and VmHWM.
    peak_kib: u64,
    hwm_kib: u64,
    /// Snapshot bytes sent by all nodes, sampled during the move.
    sent: Vec<(Instant, u64)>,
}

/// What the throttle let through: bytes sent while sending (from the first
/// sample that rose to the last), their mean rate, and the highest rate
/// over any span of at least a second between two samples, in bytes per
/// second.
fn send_rates(sent: &[(Instant, u64)]) -> Option<(u64, Duration, f64, f64)> {
    let first = sent.windows(2).position(|w| w[1].1 > w[0].1)?;
    let last = sent.windows(2).rposition(|w| w[1].1 > w[0].1)? + 1;
    let span = &sent[first..=last];
    let (t0, b0) = span[0];
    let (t1, b1) = span[span.len() - 1];
    let took = t1.duration_since(t0);
    let mean = (b1 - b0) as f64 / took.as_secs_f64().max(1e-3);
    let mut busiest: f64 = 0.0;
    for (i, &(ta, ba)) in span.iter().enumerate() {
        let later = span[i..]
            .iter()
            .find(|(t, _)| t.duration_since(ta) >= Duration::from_secs(1));
        if let Some(&(tb, bb)) = later {
            busiest = busiest.max((bb - ba) as f64 / tb.duration_since(ta).as_secs_f64());
        }
    }
    Some((b1 - b0, took, mean, busiest))
}

/// Joins a spare node on node 1's island, moves node 1's replica of the
/// shard to it (placement paused, so nothing else moves), and waits until
/// the map shows the move done; writers record their latency in the
/// catch-up phase meanwhile.
async fn move_to_new_node(
    args: &SnapshotArgs,
    cluster: &mut Cluster,
    client: &Client,
    shared: &Shared,
) -> anyhow::Result<Moved> {
    client.set_placement_paused(true).await?;
    let (to, island) = cluster.join_spare()?.context("no spare node to join")?;
    println!("node {} joins on {island}", to + 1);
    let new_id = (to + 1) as u64;
    let joined_by = Instant::now() + Duration::from_secs(60);
    while !(client.cluster_map().await).is_ok_and(|m| m.nodes.iter().any(|n| n.id == new_id)) {
        if Instant::now() > joined_by {
            bail!("node {new_id} did not join within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shard = client
        .cluster_map()
        .await?
        .shards
        .first()
        .map(|s| s.id)
        .context("no data shard")?;
    let started = Instant::now();
    shared
        .phase
        .store(Phase::CatchUp as usize, Ordering::Relaxed);
    if let Ok(mut since) = shared.catch_up_start.lock() {
        *since = Some(started);
    }
    client.move_replica(shard, 1, new_id).await?;
    let mut peak_kib = 0u64;
    let mut sent = Vec::new();
    loop {
        if let Some(kib) = resident_kib(cluster).get(to).copied().flatten() {
            peak_kib = peak_kib.max(kib);
        }
        if let Ok(status) = client.cluster_status().await {
            let bytes = (status.nodes.iter())
                .filter_map(|n| n.status.as_ref())
                .map(|s| s.snapshot_bytes_sent)
                .sum::<u64>();
            sent.push((Instant::now(), bytes));
        }
        let done = match (client.cluster_map().await, client.list_moves().await) {
            (Ok(map), Ok(moves)) => {
                moves.moves.is_empty()
                    && map.shards.iter().any(|s| {
                        s.id == shard
                            && s.replicas.iter().any(|r| r.node_id == new_id)
                            && s.replicas.iter().all(|r| r.node_id != 1)
                    })
            }
            _ => false,
        };
        if done {
            break;
        }
        if started.elapsed() > args.patience {
            bail!("the move did not finish within {:?}", args.patience);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    shared.phase.store(Phase::Done as usize, Ordering::Relaxed);
    let hwm_kib = (cluster.pid(to))
        .and_then(|pid| status_kib(pid, "VmHWM"))
        .unwrap_or(0);
    Ok(Moved {
        to,
        took,
        peak_kib,
        hwm_kib,
        sent,
    })
}

/// Reads everything back with one old replica stopped, so the quorum
/// left holds the new node's replica; then reports the move.
async fn report_move(
    args: &SnapshotArgs,
    cluster: &mut Cluster,
    shared: &Shared,
    keys: u64,
    load_time: Duration,
    moved: Moved,
) -> anyhow::Result<()> {
    // Stop one of the two old replicas (the leader, unless the new node
    // leads), so the quorum left must include the new node's.
    let client = connect(cluster).await?;
    let (leader, _) = shard_status(&client).await?;
    let victim = leader.filter(|l| *l != moved.to && *l != 0).unwrap_or(1);
    cluster.kill(victim)?;
    let reader = connect(cluster).await?;
    let (missing_loaded, lost_writes) =
        verify(&reader, shared, keys, 0, args.load_value_size).await?;
    println!(
        "## A {} MiB shard moved to a new node, {} writers\n",
        args.mib, args.writers
    );
    println!("| phase | writes | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let histograms = shared
        .histograms
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut p99 = Vec::new();
    for (name, phase) in [
        ("load", Phase::Warmup),
        ("before", Phase::Before),
        ("move", Phase::CatchUp),
    ] {
        p99.push(latency_row(name, &histograms, phase)?);
    }
    println!();
    println!(
        "- write p99 during the move: {:.2}x before",
        p99[2] / p99[1]
    );
    println!(
        "- loaded {keys} values of {} B in {:.1} s",
        args.load_value_size,
        load_time.as_secs_f64()
    );
    println!(
        "- the move (learner, snapshot, catch-up, joint change, map) took {:.1} s",
        moved.took.as_secs_f64()
    );
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    match send_rates(&moved.sent) {
        Some((bytes, took, mean, busiest)) => println!(
            "- sent to catch the new replica up (snapshot and learner log): {:.0} MiB in {:.1} s, \
             {:.1} MiB/s on average, {:.1} MiB/s in the busiest second, against \
             raft.snapshot_rate {} MiB/s ({:.2}x and {:.2}x)",
            mib(bytes as f64),
            took.as_secs_f64(),
            mib(mean),
            mib(busiest),
            args.snapshot_rate_mib,
            mib(mean) / args.snapshot_rate_mib as f64,
            mib(busiest) / args.snapshot_rate_mib as f64,
        ),
        None => println!("- sent to catch the new replica up: no bytes seen"),
    }
    println!(
        "- node {} resident memory: peak sampled {:.0} MiB, VmHWM {:.0} MiB",
        moved.to + 1,
        moved.peak_kib as f64 / 1024.0,
        moved.hwm_kib as f64 / 1024.0
    );
    println!(
        "- read back without the leader: {missing_loaded} of {keys} loaded values missing or wrong, {lost_writes} acknowledged writes lost; {} writes failed (not counted as acknowledged)",
        shared.errors.load(Ordering::Relaxed)
    );
    if missing_loaded > 0 || lost_writes > 0 {
        bail!("data was lost");
    }
    Ok(())
}

/// Writes the values of `keys` in `generation`, `size` bytes each, 8 to a
/// call, 4 calls at a time.
async fn load(
    client: &Client,
    keys: std::ops::Range<u64>,
    generation: u64,
    size: usize,
) -> anyhow::Result<()> {
    const PER_CALL: u64 = 8;
    let next = Arc::new(AtomicU64::new(keys.start));
    let end = keys.end;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(PER_CALL, Ordering::Relaxed);
                if from >= end {
                    return Ok::<_, anyhow::Error>(());
                }
                let pairs: Vec<_> = (from..(from + PER_CALL).min(end))
                    .map(|i| (load_key(i), load_value(i, generation, size)))
                    .collect();
                let mut tries = 0;
                while let Err(e) = client.put_many(pairs.clone()).await {
                    tries += 1;
                    if tries > 20 {
                        return Err(anyhow::Error::from(e).context("loading"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// Counts loaded values missing or wrong, and acknowledged writes whose
/// key holds an older counter.
async fn verify(
    client: &Client,
    shared: &Shared,
    keys: u64,
    overwritten: u64,
    size: usize,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let get = |key: Vec<u8>| async move {
        loop {
            match client.get(&key).await {
                Ok(found) => return Ok(found.map(|kv| kv.value)),
                Err(e) if Instant::now() > deadline => return Err(anyhow::Error::from(e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let mut missing = 0;
    for i in 0..keys {
        let want = load_value(i, final_generation(i, overwritten), size);
        if get(load_key(i)).await?.as_deref() != Some(&want[..]) {
            missing += 1;
        }
    }
    let acked = shared
        .acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let lost = lost_writes(&acked, |writer, key| get(writer_key(writer, key))).await?;
    Ok((missing, lost))
}

/// Bytes of the largest kept snapshot file of the node with `data_dir`.
fn kept_snapshot_bytes(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}
