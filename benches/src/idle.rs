//! `atoll-bench idle`: what many idle replicas cost a node (the elastic
//! fabric's "many shards per node" target, docs/design/elastic.md).
//!
//! A cluster of `--nodes` nodes starts with `--shards` data shards and no
//! load. Once every shard has a leader, and after `--settle`, each node's
//! resident memory and CPU time are read from `/proc` at the start and the
//! end of a `--window`; the report gives, per node, its replicas, how many
//! of them were quiet (see `server/raft/src/quiesce.rs`), its RSS at both
//! ends and its CPU use over the window as a share of one core.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_client::Client;
use atoll_jepsen::cluster::{Cluster, ClusterSpec};
use atoll_proto::v1::ReplicaRole;
use tokio::time::Instant;

use crate::setup::ClusterRun;

/// Options of the idle scenario.
#[derive(Clone, Debug, clap::Args)]
pub struct IdleArgs {
    /// Data shards of the cluster.
    #[arg(long, default_value_t = 1000)]
    shards: u32,
    /// Nodes, one per island up to three islands.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Replicas per shard (at most `--nodes`).
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// How long the cluster stays idle after every shard has a leader,
    /// before the window starts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The measured window.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long every shard may take to get a leader.
    #[arg(long, default_value = "10min", value_parser = humantime::parse_duration)]
    patience: Duration,
    #[command(flatten)]
    pub cluster: ClusterRun,
}

pub async fn run(args: &IdleArgs, atoll_bin: PathBuf) -> anyhow::Result<()> {
    if args.nodes == 0 || args.shards == 0 {
        bail!("--nodes and --shards must be at least 1");
    }
    if args.replication_factor == 0 || args.replication_factor as usize > args.nodes {
        bail!("--replication-factor must be between 1 and --nodes");
    }
    let mut spec = ClusterSpec::spread(args.nodes, args.nodes.min(3), args.shards);
    // Atoll's own timings: an idle cluster's cost depends on them.
    spec.raft = args.cluster.atoll_raft.clone();
    spec.replication_factor = args.replication_factor;
    let (run, cluster) = args.cluster.start("atoll-idle", &atoll_bin, &spec)?;
    let result = scenario(args, &cluster).await;
    run.finish(cluster, result)
}

/// Clock ticks per second in `/proc/<pid>/stat` (Linux's USER_HZ, 100 on
/// every architecture it exposes to user space).
const USER_HZ: f64 = 100.0;

/// One node's counters at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_bytes: u64,
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
}

/// Reads a process's resident set and CPU time from `/proc`.
fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime and stime fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/<pid>/stat")
    };
    Ok(Sample {
        rss_bytes: rss_kib * 1024,
        cpu_ticks: ticks(14)? + ticks(15)?,
    })
}

fn samples(cluster: &Cluster) -> anyhow::Result<Vec<Sample>> {
    (0..cluster.len())
        .map(|i| {
            let pid = cluster
                .pid(i)
                .with_context(|| format!("node {} is not running", i + 1))?;
            sample(pid)
        })
        .collect()
}

/// Per node: (replicas, leaders, quiet replicas).
type Census = Vec<(usize, usize, usize)>;

/// Every shard's leader known, and each node's replicas counted; `None`
/// while a shard has no leader.
async fn census(client: &Client) -> anyhow::Result<Option<Census>> {
    let status = client.cluster_status().await?;
    let map = status.map.as_ref().context("a status without a map")?;
    let shards = map.meta.iter().count() + map.shards.len();
    let mut census = Vec::new();
    let mut led = 0;
    for node in &status.nodes {
        let Some(s) = node.status.as_ref() else {
            return Ok(None);
        };
        let leaders = (s.replicas.iter())
            .filter(|r| r.role == ReplicaRole::Leader as i32)
            .count();
        let quiet = s.replicas.iter().filter(|r| r.quiet).count();
        led += leaders;
        census.push((s.replicas.len(), leaders, quiet));
    }
    Ok((led == shards).then_some(census))
}

async fn scenario(args: &IdleArgs, cluster: &Cluster) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = cluster.client(args.patience, None).await?;
    loop {
        if let Ok(Some(_)) = census(&client).await {
            break;
        }
        if started.elapsed() > args.patience {
            bail!("not every shard had a leader within {:?}", args.patience);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} shards on {} nodes (RF {}): every shard led after {:.1} s; idle for {:?}, then measured for {:?}",
        args.shards,
        args.nodes,
        args.replication_factor,
        started.elapsed().as_secs_f64(),
        args.settle,
        args.window
    );
    tokio::time::sleep(args.settle).await;
    let before = samples(cluster)?;
    let window = Instant::now();
    tokio::time::sleep(args.window).await;
    let after = samples(cluster)?;
    let seconds = window.elapsed().as_secs_f64();
    let census = census(&client).await?.unwrap_or_default();
    println!("| node | replicas | leaders | quiet | RSS start | RSS end | CPU (one core) |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (replicas, leaders, quiet) = census.get(i).copied().unwrap_or_default();
        let cpu = (a.cpu_ticks - b.cpu_ticks) as f64 / USER_HZ / seconds;
        println!(
            "| {} | {replicas} | {leaders} | {quiet} | {:.0} MiB | {:.0} MiB | {:.1}% |",
            i + 1,
            b.rss_bytes as f64 / (1 << 20) as f64,
            a.rss_bytes as f64 / (1 << 20) as f64,
            cpu * 100.0
        );
    }
    Ok(())
}
