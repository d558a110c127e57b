//! Results: one record per measured run (appended as a JSON line), the
//! markdown table of all runs, and the Atoll/etcd ratio table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plot::{self, Point};
use crate::store::Counters;
use crate::workload::{Dist, Tally};

/// The record of one measured run, as written to `results.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// When the run ended, in seconds since the Unix epoch.
    pub unix_time_s: u64,
    /// `atoll` or `etcd`.
    pub target: String,
    /// The workload's name.
    pub workload: String,
    /// The round, from 1.
    pub round: u32,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Offered load in ops/s; `None` for a closed loop.
    pub offered_ops_s: Option<f64>,
    /// Number of keys.
    pub keys: u64,
    /// Key distribution.
    pub dist: Dist,
    /// Bytes per value.
    pub value_size: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Successful operations in the measured window.
    pub ops: u64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// Compare-and-swap mismatches (`cas` only).
    pub cas_conflicts: u64,
    /// Compare-and-swap loops cut short by the end of the run (`cas` only).
    pub cas_abandoned: u64,
    /// Successful operations per second.
    pub throughput_ops_s: f64,
    /// Mean latency, microseconds.
    pub mean_us: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// Highest latency, microseconds.
    pub max_us: u64,
    /// 99th percentile latency of reads, microseconds, if any ran.
    pub read_p99_us: Option<u64>,
    /// 99th percentile latency of writes, microseconds, if any ran.
    pub write_p99_us: Option<u64>,
    /// Writes per log entry on the shard leaders (Atoll only).
    pub writes_per_entry: Option<f64>,
    /// Log appends per WAL sync on the nodes (Atoll only).
    pub appends_per_sync: Option<f64>,
    /// Mean WAL sync time on the nodes, microseconds (Atoll only).
    pub mean_sync_us: Option<f64>,
    /// WAL syncs slower than 100 ms on the nodes (Atoll only): a stalled
    /// disk, which holds up every shard of a node.
    pub slow_syncs: Option<u64>,
    /// CPU time (user and system) of the target's server processes per
    /// successful operation in the measured window, microseconds. Unlike
    /// throughput it hardly depends on what else the machine runs.
    pub server_cpu_us_per_op: Option<f64>,
    /// Throughput and p99 second by second.
    pub series: Vec<Point>,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// A run's record and its full histogram (for merging rounds).
#[derive(Debug)]
pub struct Measured {
    /// The record.
    pub result: RunResult,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
}

/// What identifies a run apart from its tally.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// `atoll` or `etcd`.
    pub target: &'static str,
    /// The workload's name.
    pub workload: String,
    /// The round, from 1.
    pub round: u32,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Offered load, if open loop.
    pub rate: Option<f64>,
    /// Number of keys.
    pub keys: u64,
    /// Key distribution.
    pub dist: Dist,
    /// Bytes per value.
    pub value_size: usize,
    /// Measured time.
    pub duration: Duration,
    /// The target's counters over the run (warm-up included), if it has them.
    pub counters: Option<Counters>,
    /// CPU time of the target's server processes in the measured window.
    pub server_cpu: Option<Duration>,
}

impl Measured {
    /// The record of a run from its tally.
    pub fn new(info: RunInfo, tally: Tally) -> Self {
        let hist = tally.hist;
        let ops = hist.len();
        let p99 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99));
        let seconds = u32::try_from(info.duration.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        let secs = info.duration.as_secs_f64().max(1e-9);
        let unix_time_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = RunResult {
            unix_time_s,
            target: info.target.to_string(),
            workload: info.workload,
            round: info.round,
            clients: info.clients,
            offered_ops_s: info.rate,
            keys: info.keys,
            dist: info.dist,
            value_size: info.value_size,
            duration_s: secs,
            ops,
            errors: tally.errors,
            cas_conflicts: tally.conflicts,
            cas_abandoned: tally.abandoned,
            throughput_ops_s: ops as f64 / secs,
            mean_us: if ops > 0 { hist.mean() } else { 0.0 },
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            writes_per_entry: info
                .counters
                .filter(|c| c.entries > 0)
                .map(|c| c.writes as f64 / c.entries as f64),
            appends_per_sync: info
                .counters
                .filter(|c| c.syncs > 0)
                .map(|c| c.synced_appends as f64 / c.syncs as f64),
            mean_sync_us: info
                .counters
                .filter(|c| c.syncs > 0)
                .map(|c| c.sync_micros as f64 / c.syncs as f64),
            slow_syncs: info.counters.map(|c| c.slow_syncs),
            server_cpu_us_per_op: info
                .server_cpu
                .filter(|_| ops > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / ops as f64),
            read_p99_us: p99(&tally.reads),
            write_p99_us: p99(&tally.writes),
            series: plot::series(&tally.samples, seconds),
            first_error: tally.first_error,
        };
        Self { result, hist }
    }
}

/// A target's resident memory and disk use once its keys are loaded.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// `atoll` or `etcd`.
    pub target: String,
    /// Keys loaded (data and contended keys).
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Resident memory of each node, KiB (`None`: not running).
    pub rss_kib: Vec<Option<u64>>,
    /// Bytes of the whole cluster's data dirs.
    pub disk_bytes: u64,
}

impl Memory {
    /// Reads the resident memory of `cluster`'s processes and the size of
    /// its data under `dir`.
    pub fn measure(
        target: &str,
        keys: u64,
        value_size: usize,
        cluster: &atoll_jepsen::cluster::Cluster,
        dir: &Path,
    ) -> Self {
        Self {
            target: target.to_string(),
            keys,
            value_size,
            rss_kib: crate::setup::resident_kib(cluster),
            disk_bytes: crate::setup::disk_bytes(dir),
        }
    }
}

/// One row per target: resident memory per node and data on disk.
pub fn memory_table(memory: &[Memory]) -> String {
    let mut out = String::from(
        "| target | keys | value bytes | RSS per node MiB | RSS mean MiB | data on disk MiB |\n\
         |---|---:|---:|---|---:|---:|\n",
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for m in memory {
        let per_node: Vec<String> = m
            .rss_kib
            .iter()
            .map(|r| r.map_or("-".to_string(), |kib| format!("{:.0}", mib(kib))))
            .collect();
        let known: Vec<u64> = m.rss_kib.iter().flatten().copied().collect();
        let mean = if known.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}", mib(known.iter().sum::<u64>()) / known.len() as f64)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} |",
            m.target,
            m.keys,
            m.value_size,
            per_node.join(", "),
            mean,
            m.disk_bytes as f64 / (1024.0 * 1024.0),
        );
    }
    out
}

/// Appends `record` as one JSON line to `path`.
pub fn append_jsonl<T: Serialize>(path: &Path, record: &T) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let line = serde_json::to_string(record)?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// One row per run.
pub fn markdown_table(runs: &[Measured]) -> String {
    let mut out = String::from(
        "| target | workload | round | clients | offered ops/s | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | read p99 ms | write p99 ms | errors | cas conflicts | server CPU µs/op | writes/entry | appends/sync | mean sync ms | syncs > 100 ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs.iter().map(|m| &m.result) {
        let offered = r
            .offered_ops_s
            .map_or("closed".to_string(), |o| format!("{o:.0}"));
        let _ =
            writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.workload,
            r.round,
            r.clients,
            offered,
            r.throughput_ops_s,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            ms(r.max_us),
            r.read_p99_us.map_or("-".to_string(), ms),
            r.write_p99_us.map_or("-".to_string(), ms),
            r.errors,
            r.cas_conflicts,
            r.server_cpu_us_per_op.map_or("-".to_string(), |v| format!("{v:.0}")),
            r.writes_per_entry.map_or("-".to_string(), |v| format!("{v:.1}")),
            r.appends_per_sync.map_or("-".to_string(), |v| format!("{v:.1}")),
            r.mean_sync_us.map_or("-".to_string(), |v| format!("{:.2}", v / 1000.0)),
            r.slow_syncs.map_or("-".to_string(), |v| v.to_string()),
        );
    }
    out
}

/// Every round of one target and workload under one load, merged.
struct Merged {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
}

impl Merged {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
}

/// The runs of one workload: per target, closed loop and open loop merged
/// apart.
#[derive(Default)]
struct ByLoad<'a> {
    closed: BTreeMap<&'a str, Merged>,
    open: BTreeMap<&'a str, Merged>,
    offered: Option<f64>,
}

/// Per workload: every round of a target merged, then Atoll divided by
/// etcd: throughput from the closed-loop runs, p99 from the open-loop runs
/// (equal offered load) where there are any, else from the closed-loop
/// runs. Above 1: Atoll has more throughput, or a higher p99. Empty unless
/// both targets ran.
pub fn ratio_table(runs: &[Measured]) -> anyhow::Result<String> {
    let mut merged: BTreeMap<&str, ByLoad<'_>> = BTreeMap::new();
    for m in runs {
        let r = &m.result;
        let by_load = merged.entry(r.workload.as_str()).or_default();
        let side = match r.offered_ops_s {
            Some(rate) => {
                by_load.offered = Some(rate);
                &mut by_load.open
            }
            None => &mut by_load.closed,
        };
        let entry = match side.entry(r.target.as_str()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(Merged {
                ops: 0,
                secs: 0.0,
                hist: crate::workload::new_histogram()?,
            }),
        };
        entry.ops += r.ops;
        entry.secs += r.duration_s;
        entry.hist.add(&m.hist)?;
    }
    let mut out = String::from(
        "| workload | atoll ops/s | etcd ops/s | throughput atoll/etcd | p99 at ops/s | atoll p99 ms | etcd p99 ms | p99 atoll/etcd |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "n/a".to_string()
        }
    };
    let mut rows = 0;
    for (workload, by_load) in &merged {
        let pair = |side: &BTreeMap<&str, Merged>| -> Option<(f64, f64, u64, u64)> {
            let (atoll, etcd) = (side.get("atoll")?, side.get("etcd")?);
            Some((
                atoll.throughput(),
                etcd.throughput(),
                atoll.hist.value_at_quantile(0.99),
                etcd.hist.value_at_quantile(0.99),
            ))
        };
        let (closed, open) = (pair(&by_load.closed), pair(&by_load.open));
        let basis = match (open, by_load.offered) {
            (Some(_), Some(offered)) => format!("{offered:.0}"),
            _ => "closed".to_string(),
        };
        let (Some((a_tput, e_tput, _, _)), Some((_, _, a_p99, e_p99))) =
            (closed.or(open), open.or(closed))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {workload} | {a_tput:.0} | {e_tput:.0} | {} | {basis} | {} | {} | {} |",
            ratio(a_tput, e_tput),
            ms(a_p99),
            ms(e_p99),
            ratio(a_p99 as f64, e_p99 as f64),
        );
        rows += 1;
    }
    Ok(if rows == 0 { String::new() } else { out })
}
