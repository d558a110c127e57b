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
}

impl Measured {
    /// The record of a run from its tally.
    pub fn new(info: RunInfo, tally: Tally) -> Self {
        let hist = tally.hist;
        let ops = hist.len();
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
            first_error: tally.first_error,
        };
        Self { result, hist }
    }
}

/// Appends `result` as one JSON line to `path`.
pub fn append_jsonl(path: &Path, result: &RunResult) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let line = serde_json::to_string(result)?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// One row per run.
pub fn markdown_table(runs: &[Measured]) -> String {
    let mut out = String::from(
        "| target | workload | round | clients | offered ops/s | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | cas conflicts |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs.iter().map(|m| &m.result) {
        let offered = r
            .offered_ops_s
            .map_or("closed".to_string(), |o| format!("{o:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
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
            r.errors,
            r.cas_conflicts,
        );
    }
    out
}

/// Every round of one target and workload, merged.
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

/// Per workload: every round of a target merged, then Atoll divided by
/// etcd for throughput and p99 (above 1: Atoll has more throughput, or a
/// higher p99). Empty unless both targets ran.
pub fn ratio_table(runs: &[Measured]) -> anyhow::Result<String> {
    let mut merged: BTreeMap<&str, BTreeMap<&str, Merged>> = BTreeMap::new();
    for m in runs {
        let r = &m.result;
        let entry = merged
            .entry(r.workload.as_str())
            .or_default()
            .entry(r.target.as_str())
            .or_insert(Merged {
                ops: 0,
                secs: 0.0,
                hist: crate::workload::new_histogram()?,
            });
        entry.ops += r.ops;
        entry.secs += r.duration_s;
        entry.hist.add(&m.hist)?;
    }
    let mut out = String::from(
        "| workload | atoll ops/s | etcd ops/s | throughput atoll/etcd | atoll p99 ms | etcd p99 ms | p99 atoll/etcd |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = 0;
    for (workload, targets) in &merged {
        let (Some(atoll), Some(etcd)) = (targets.get("atoll"), targets.get("etcd")) else {
            continue;
        };
        let (a_tput, e_tput) = (atoll.throughput(), etcd.throughput());
        let (a_p99, e_p99) = (
            atoll.hist.value_at_quantile(0.99),
            etcd.hist.value_at_quantile(0.99),
        );
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "n/a".to_string()
            }
        };
        let _ = writeln!(
            out,
            "| {workload} | {a_tput:.0} | {e_tput:.0} | {} | {} | {} | {} |",
            ratio(a_tput, e_tput),
            ms(a_p99),
            ms(e_p99),
            ratio(a_p99 as f64, e_p99 as f64),
        );
        rows += 1;
    }
    Ok(if rows == 0 { String::new() } else { out })
}
