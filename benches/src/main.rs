//! `atoll-bench`: measures Atoll against etcd with the same workloads.
//!
//! It starts the target clusters itself (real server processes on
//! loopback), preloads the keys, runs each workload for a warm-up and a
//! measured window, and reports latency percentiles and throughput as a
//! markdown table, JSON lines and, when both targets ran, an Atoll/etcd
//! ratio table. With `--target both` the targets alternate round by round
//! and the idle one is frozen (SIGSTOP) so that it takes no CPU.

mod setup;
mod stats;
mod store;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::setup::{SetupOptions, Target};
use crate::stats::{Measured, RunInfo};
use crate::store::{AtollStore, EtcdStore, Store};
use crate::workload::{Dist, Params, Workload};

/// Which systems to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    /// Atoll only.
    Atoll,
    /// etcd only.
    Etcd,
    /// Both, alternating round by round.
    Both,
}

/// Load generator: Atoll against etcd, YCSB-style workloads.
#[derive(Debug, Parser)]
#[command(name = "atoll-bench", version)]
struct Args {
    /// The system(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    target: TargetArg,
    /// Workloads to run, comma-separated: w (writes), a (50/50), b (95/5
    /// reads), c (reads), cas (read-modify-CAS on contended keys), batch
    /// (atomic batches).
    #[arg(long, value_delimiter = ',', default_value = "w,a,b,c")]
    workloads: Vec<Workload>,
    /// Number of keys (preloaded before measuring).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value = "uniform")]
    dist: Dist,
    /// The zipfian exponent, with `--dist zipf`.
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Offered load in ops/s over all clients (open loop, latency measured
    /// from each operation's intended start). Default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time per run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unrecorded time before each measured run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds per workload; with `--target both` each round runs Atoll,
    /// then etcd.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Keys per batch, for the `batch` workload.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Number of contended keys, for the `cas` workload.
    #[arg(long, default_value_t = 8)]
    cas_keys: u64,
    /// Atoll's data shards.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Nodes per cluster (one island each for Atoll).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Deadline of one operation, retries included.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    op_timeout: Duration,
    /// Where results go: results.jsonl (appended) and results.md.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Data dirs and logs of the clusters (removed at the end unless
    /// `--keep-data`). Default: a fresh dir under /var/tmp.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the clusters' data dirs and logs.
    #[arg(long)]
    keep_data: bool,
    /// The Atoll server binary.
    #[arg(long, default_value = "/var/tmp/atoll-target/debug/atoll")]
    atoll_bin: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.workloads.is_empty() {
            bail!("--workloads names no workload");
        }
        if self.clients == 0 || self.rounds == 0 || self.keys == 0 || self.cas_keys == 0 {
            bail!("--clients, --rounds, --keys and --cas-keys must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--rate must be a positive number of ops/s");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        Ok(())
    }

    fn params(&self) -> Params {
        Params {
            keys: self.keys,
            dist: self.dist,
            zipf_exponent: self.zipf_exponent,
            value_size: self.value_size,
            clients: self.clients,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            batch_size: self.batch_size,
            cas_keys: self.cas_keys,
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    // Run inside select! so that Ctrl-C drops the clusters (killing their
    // processes) instead of leaving them behind.
    let outcome = tokio::select! {
        outcome = bench(&args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The running targets of this invocation.
struct Targets {
    atoll: Option<Target<AtollStore>>,
    etcd: Option<Target<EtcdStore>>,
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/atoll-bench-{}", std::process::id())));
    let result = bench_in(args, &data_dir).await;
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

async fn bench_in(args: &Args, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let options = SetupOptions {
        atoll_bin: args.atoll_bin.clone(),
        etcd_bin: args.etcd_bin.clone(),
        nodes: args.nodes,
        shards: args.shards,
        op_timeout: args.op_timeout,
        ready_timeout: Duration::from_secs(60),
    };
    let both = args.target == TargetArg::Both;
    let mut targets = Targets {
        atoll: None,
        etcd: None,
    };
    if matches!(args.target, TargetArg::Atoll | TargetArg::Both) {
        eprintln!(
            "starting Atoll ({} nodes, {} shards)",
            args.nodes, args.shards
        );
        let atoll = setup::start_atoll(&data_dir.join("atoll"), &options).await?;
        preload_target(args, "Atoll", &atoll.store).await?;
        if both {
            atoll.set_running(false)?;
        }
        targets.atoll = Some(atoll);
    }
    if matches!(args.target, TargetArg::Etcd | TargetArg::Both) {
        eprintln!("starting etcd ({} members)", args.nodes);
        let etcd = setup::start_etcd(&data_dir.join("etcd"), &options).await?;
        preload_target(args, "etcd", &etcd.store).await?;
        if both {
            etcd.set_running(false)?;
        }
        targets.etcd = Some(etcd);
    }

    let jsonl = args.out.join("results.jsonl");
    let params = args.params();
    let mut runs = Vec::new();
    for &workload in &args.workloads {
        for round in 1..=args.rounds {
            if let Some(atoll) = &targets.atoll {
                let run = measure(args, &params, "atoll", atoll, workload, round, both).await?;
                stats::append_jsonl(&jsonl, &run.result)?;
                runs.push(run);
            }
            if let Some(etcd) = &targets.etcd {
                let run = measure(args, &params, "etcd", etcd, workload, round, both).await?;
                stats::append_jsonl(&jsonl, &run.result)?;
                runs.push(run);
            }
        }
    }

    let mut report = format!("## Runs\n\n{}", stats::markdown_table(&runs));
    let ratios = stats::ratio_table(&runs)?;
    if !ratios.is_empty() {
        let basis = if args.rate.is_some() {
            "equal offered load"
        } else {
            "closed loop, equal clients"
        };
        report.push_str(&format!("\n## Atoll / etcd ({basis})\n\n{ratios}"));
    }
    println!("\n{report}");
    let md = args.out.join("results.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;
    eprintln!(
        "results appended to {} and written to {}",
        jsonl.display(),
        md.display()
    );
    Ok(())
}

async fn preload_target<S: Store>(args: &Args, name: &str, store: &S) -> anyhow::Result<()> {
    eprintln!("preloading {} keys into {name}", args.keys + args.cas_keys);
    setup::preload(
        store,
        args.keys,
        args.cas_keys,
        args.value_size,
        64,
        Duration::from_secs(120),
    )
    .await
}

/// One measured run of `workload` on one target, resuming it first and
/// freezing it afterwards when the other target shares the machine.
async fn measure<S: Store>(
    args: &Args,
    params: &Params,
    name: &'static str,
    target: &Target<S>,
    workload: Workload,
    round: u32,
    freeze_when_idle: bool,
) -> anyhow::Result<Measured> {
    if freeze_when_idle {
        target.set_running(true)?;
        // A frozen Raft group may elect anew when it wakes up.
        setup::wait_ready(&target.store, Duration::from_secs(30)).await?;
    }
    let progress = progress_bar(&format!("{name} {workload} r{round}"));
    let tally = workload::run(&target.store, workload, params, &progress).await;
    progress.finish_and_clear();
    if freeze_when_idle {
        target.set_running(false)?;
    }
    let tally = tally?;
    let measured = Measured::new(
        RunInfo {
            target: name,
            workload: workload.to_string(),
            round,
            clients: args.clients,
            rate: args.rate,
            keys: args.keys,
            dist: args.dist,
            value_size: args.value_size,
            duration: args.duration,
        },
        tally,
    );
    let r = &measured.result;
    eprintln!(
        "{name} {workload} round {round}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}",
        r.throughput_ops_s,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
    );
    Ok(measured)
}

/// A progress bar on a terminal; hidden when stdout is not one.
fn progress_bar(prefix: &str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {elapsed:>4} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(0)
        .with_style(style)
        .with_prefix(prefix.to_string())
}
