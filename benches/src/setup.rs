//! Starting the targets: an Atoll or etcd cluster of real processes on
//! loopback (through `atoll_jepsen::cluster`), waiting until it takes
//! writes, preloading the keys, and pausing the idle target while the
//! other one is measured.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atoll_client::ClientOptions;
use atoll_jepsen::cluster::{Cluster, ClusterSpec};
use tokio::time::Instant;

use crate::store::{AtollStore, EtcdStore, Store, LOAD_CHUNK};
use crate::workload::{cas_key, data_key};

/// How to start the targets.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    /// The `atoll` binary.
    pub atoll_bin: PathBuf,
    /// The `etcd` binary.
    pub etcd_bin: PathBuf,
    /// Nodes (and islands: one node per island).
    pub nodes: usize,
    /// Atoll's data shards.
    pub shards: u32,
    /// Lines of Atoll's `[raft]` config section (empty: its defaults).
    pub atoll_raft: Vec<String>,
    /// Lines of Atoll's `[storage]` config section (empty: its defaults).
    pub atoll_storage: Vec<String>,
    /// Deadline of one operation.
    pub op_timeout: Duration,
    /// How long a cluster may take to accept its first write.
    pub ready_timeout: Duration,
}

/// A running target: its processes and a store handle on it.
pub struct Target<S> {
    /// The processes; dropping them kills them.
    pub cluster: Cluster,
    /// The handle the workloads clone.
    pub store: S,
}

impl<S> Target<S> {
    /// Freezes (`false`) or resumes (`true`) every process, so that an idle
    /// target does not take CPU from the measured one.
    pub fn set_running(&self, running: bool) -> anyhow::Result<()> {
        let signal = if running { "CONT" } else { "STOP" };
        for i in 0..self.cluster.len() {
            self.cluster.signal(i, signal)?;
        }
        Ok(())
    }
}

/// Starts Atoll: `nodes` nodes on as many islands, replication factor 3.
pub async fn start_atoll(dir: &Path, options: &SetupOptions) -> anyhow::Result<Target<AtollStore>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = ClusterSpec {
        raft: options.atoll_raft.clone(),
        storage: options.atoll_storage.clone(),
        ..ClusterSpec::spread(options.nodes, options.nodes, options.shards)
    };
    let cluster = Cluster::start(&options.atoll_bin, dir, &spec)
        .with_context(|| format!("starting {}", options.atoll_bin.display()))?;
    let client_options = ClientOptions {
        timeout: options.op_timeout,
        ..Default::default()
    };
    let client = cluster
        .client_with(client_options)
        .await
        .with_context(|| format!("connecting to Atoll (logs under {})", dir.display()))?;
    let target = Target {
        cluster,
        store: AtollStore::new(client),
    };
    wait_ready(&target.store, options.ready_timeout)
        .await
        .with_context(|| format!("Atoll never took a write (logs under {})", dir.display()))?;
    wait_leaders_settled(&target.store, options.ready_timeout).await;
    Ok(target)
}

/// Waits until every shard is led by its preferred replica. A new cluster's
/// first leaders are wherever the first elections put them; a few seconds
/// later each preferred replica takes over, and each takeover stalls its
/// shard for about an election timeout. Measuring starts after that.
async fn wait_leaders_settled(store: &AtollStore, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        match store.leaders_settled().await {
            Ok(true) => return,
            Ok(false) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(false) => break,
            Err(e) => {
                eprintln!("cannot read Atoll's leaders: {e:#}");
                return;
            }
        }
    }
    eprintln!(
        "some shards are not led by their preferred replica after {}; measuring anyway",
        humantime::format_duration(patience)
    );
}

/// Starts a `nodes`-member etcd cluster in its default durable settings.
pub async fn start_etcd(dir: &Path, options: &SetupOptions) -> anyhow::Result<Target<EtcdStore>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = ClusterSpec::spread(options.nodes, options.nodes, 1);
    let cluster = Cluster::start_etcd(&options.etcd_bin, dir, &spec)
        .with_context(|| format!("starting {}", options.etcd_bin.display()))?;
    let deadline = Instant::now() + options.ready_timeout;
    let store = loop {
        match EtcdStore::connect(&cluster.addresses, options.op_timeout).await {
            Ok(store) => break store,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("logs under {}", dir.display())))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let target = Target { cluster, store };
    wait_ready(&target.store, options.ready_timeout)
        .await
        .with_context(|| format!("etcd never took a write (logs under {})", dir.display()))?;
    Ok(target)
}

/// Waits until a write succeeds.
pub async fn wait_ready<S: Store>(store: &S, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match store.put(b"bench-ready", b"1").await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Writes every data key and contended key once, `value_size` bytes each,
/// in chunks of [`LOAD_CHUNK`] keys with `concurrency` writers; each chunk
/// is retried until `patience` runs out.
pub async fn preload<S: Store>(
    store: &S,
    keys: u64,
    cas_keys: u64,
    value_size: usize,
    concurrency: usize,
    patience: Duration,
) -> anyhow::Result<()> {
    let all: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..keys)
            .map(data_key)
            .chain((0..cas_keys).map(cas_key))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + patience;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (store, all, next) = (store.clone(), all.clone(), next.clone());
        let value = vec![b'x'; value_size];
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(LOAD_CHUNK as u64, Ordering::Relaxed) as usize;
                let Some(chunk) = all.get(from..(from + LOAD_CHUNK).min(all.len())) else {
                    return Ok::<_, anyhow::Error>(());
                };
                if chunk.is_empty() {
                    return Ok(());
                }
                let pairs: Vec<_> = chunk.iter().map(|k| (k.clone(), value.clone())).collect();
                loop {
                    match store.load(pairs.clone()).await {
                        Ok(()) => break,
                        Err(e) if Instant::now() >= deadline => {
                            return Err(e.context("preloading keys"))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// The resident memory of each running process of `cluster`, in KiB
/// (`VmRSS` from `/proc`); `None` for a node that is not running.
pub fn resident_kib(cluster: &Cluster) -> Vec<Option<u64>> {
    (0..cluster.len())
        .map(|i| status_kib(cluster.pid(i)?, "VmRSS"))
        .collect()
}

/// A memory figure of process `pid`, in KiB, from `/proc/<pid>/status`
/// (`VmRSS`: resident now; `VmHWM`: the peak resident).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (Linux's
/// `USER_HZ`, 100 on every architecture it runs the benchmarks on).
const USER_HZ: u64 = 100;

/// The process ids of `cluster`'s running processes.
pub fn pids(cluster: &Cluster) -> Vec<u32> {
    (0..cluster.len()).filter_map(|i| cluster.pid(i)).collect()
}

/// The CPU time (user and system, of every thread, living or exited) the
/// processes `pids` have used so far; `None` if one of them is gone.
pub fn cpu_time(pids: &[u32]) -> Option<Duration> {
    let mut ticks = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name, in parentheses, may hold spaces: the fields
        // counted from 1 resume after its closing one at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        ticks += utime + stime;
    }
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// The bytes of every file under `dir` (a cluster's data on disk).
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The counter a value written by a bench writer starts with (8 bytes BE).
pub fn counter_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// Acknowledged writes lost: for each writer `w` and key `k` with a
/// non-zero last acknowledged counter `acked[w][k]`, whether `read(w, k)`
/// (the key's value) holds less (a later write may have applied without
/// its acknowledgement, so more is fine).
pub async fn lost_writes<F, Fut>(acked: &[Vec<u64>], read: F) -> anyhow::Result<u64>
where
    F: Fn(usize, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<Vec<u8>>>>,
{
    let mut lost = 0;
    for (writer, counters) in acked.iter().enumerate() {
        for (key, &counter) in counters.iter().enumerate() {
            if counter == 0 {
                continue;
            }
            let stored = read(writer, key as u64).await?;
            if stored
                .as_deref()
                .and_then(counter_of)
                .is_none_or(|c| c < counter)
            {
                lost += 1;
            }
        }
    }
    Ok(lost)
}

/// How a scenario runs its Atoll cluster: extra `[raft]` settings, where
/// the data goes, whether it stays, and the server binary.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterRun {
    /// A setting of Atoll's `[raft]` config section, as TOML; repeatable.
    #[arg(long)]
    pub atoll_raft: Vec<String>,
    /// Data dirs and logs (removed at the end unless `--keep-data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the cluster's data dirs and logs.
    #[arg(long)]
    keep_data: bool,
    /// The Atoll server binary. Default: `atoll` next to this binary.
    #[arg(long)]
    pub atoll_bin: Option<PathBuf>,
}

/// A started scenario cluster's data dir, and whether to keep it.
pub struct Started {
    dir: PathBuf,
    keep: bool,
}

impl ClusterRun {
    /// Creates the data dir (`--data-dir`, else a temporary one named
    /// `{prefix}-{pid}`) and starts `spec` with the server at `atoll_bin`.
    pub fn start(
        &self,
        prefix: &str,
        atoll_bin: &Path,
        spec: &ClusterSpec,
    ) -> anyhow::Result<(Started, Cluster)> {
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("{prefix}-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = Cluster::start(atoll_bin, &dir, spec)
            .with_context(|| format!("starting {}", atoll_bin.display()))?;
        let keep = self.keep_data;
        Ok((Started { dir, keep }, cluster))
    }
}

impl Started {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops `cluster` and removes its data, unless the run failed or
    /// `--keep-data` was given; returns `result`.
    pub fn finish<T>(self, cluster: Cluster, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() || self.keep {
            eprintln!("data and logs kept under {}", self.dir.display());
        } else {
            drop(cluster);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        result
    }
}
