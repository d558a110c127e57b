//! `atoll-bench`: measures Atoll against etcd with the same workloads.
//!
//! It starts the target clusters itself (real server processes on
//! loopback), preloads the keys, runs each workload for a warm-up and a
//! measured window, and reports latency percentiles and throughput as a
//! markdown table, JSON lines and, when both targets ran, an Atoll/etcd
//! ratio table. With `--target both` the targets alternate round by round;
//! the idle one stays up (or is frozen, with `--freeze-idle`).

mod idle;
mod plot;
mod scale_out;
mod setup;
mod snapshot;
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
use crate::stats::{Measured, Memory, RunInfo};
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
    /// With `--target both` and a closed loop: after each workload's closed
    /// rounds, run as many open-loop rounds on both targets at this
    /// fraction of the lower of their two throughputs, and compare p99 at
    /// that equal offered load.
    #[arg(long)]
    equal_load: Option<f64>,
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
    /// A setting of Atoll's `[raft]` config section, as TOML (e.g.
    /// `max_proposals_in_flight=1`); repeatable. Default: Atoll's defaults.
    #[arg(long)]
    atoll_raft: Vec<String>,
    /// A setting of Atoll's `[storage]` config section, as TOML (e.g.
    /// `write_buffer="8MiB"`); repeatable. Default: Atoll's defaults.
    #[arg(long)]
    atoll_storage: Vec<String>,
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
    /// With `--target both`, freeze (SIGSTOP) the idle cluster while the
    /// other is measured. Off by default: a frozen Raft cluster re-elects
    /// every leader when it wakes, which disturbs the next run more than
    /// its idle heartbeats would.
    #[arg(long)]
    freeze_idle: bool,
    /// The Atoll server binary. Default: `atoll` next to this binary, so a
    /// release build of the bench measures a release build of the server.
    #[arg(long)]
    atoll_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// A scenario other than the workloads.
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

/// Scenarios other than the workload comparison.
#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// A large shard sent as a snapshot to a follower that was away, under
    /// write load: latency per phase, the follower's memory, data intact.
    Snapshot(snapshot::SnapshotArgs),
    /// Three nodes on three islands grow to six under read and write load:
    /// time to settle, moves made against the fewest needed, replicas per
    /// node, leaderless time, latency, data intact.
    ScaleOut(scale_out::ScaleOutArgs),
    /// Many idle shards: each node's memory and CPU with no load.
    Idle(idle::IdleArgs),
}

/// The `atoll` binary: `explicit`, else the one next to this binary, so a
/// release build of the bench measures a release build of the server.
fn atoll_bin(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(bin) => Ok(bin.clone()),
        None => Ok(std::env::current_exe()
            .context("locating atoll-bench")?
            .with_file_name("atoll")),
    }
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
        if let Some(fraction) = self.equal_load {
            if !(fraction > 0.0 && fraction <= 1.0) {
                bail!("--equal-load must be a fraction in (0, 1]");
            }
            if self.target != TargetArg::Both || self.rate.is_some() {
                bail!("--equal-load needs --target both and a closed loop (no --rate)");
            }
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
    let run = async {
        // A scenario's own --atoll-bin, else the global one.
        let bin =
            |run: &setup::ClusterRun| atoll_bin(run.atoll_bin.as_ref().or(args.atoll_bin.as_ref()));
        match &args.scenario {
            Some(Scenario::Snapshot(scenario)) => {
                snapshot::run(scenario, bin(&scenario.cluster)?).await
            }
            Some(Scenario::ScaleOut(scenario)) => {
                scale_out::run(scenario, bin(&scenario.cluster)?).await
            }
            Some(Scenario::Idle(scenario)) => idle::run(scenario, bin(&scenario.cluster)?).await,
            None => bench(&args).await,
        }
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
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
    let atoll_bin = atoll_bin(args.atoll_bin.as_ref())?;
    let options = SetupOptions {
        atoll_bin,
        etcd_bin: args.etcd_bin.clone(),
        nodes: args.nodes,
        shards: args.shards,
        atoll_raft: args.atoll_raft.clone(),
        atoll_storage: args.atoll_storage.clone(),
        op_timeout: args.op_timeout,
        ready_timeout: Duration::from_secs(60),
    };
    let mut memory = Vec::new();
    let mut targets = Targets {
        atoll: None,
        etcd: None,
    };
    if matches!(args.target, TargetArg::Atoll | TargetArg::Both) {
        eprintln!(
            "starting Atoll ({} nodes, {} shards)",
            args.nodes, args.shards
        );
        let dir = data_dir.join("atoll");
        let atoll = setup::start_atoll(&dir, &options).await?;
        memory.push(prepare(args, "atoll", &atoll, &dir).await?);
        targets.atoll = Some(atoll);
    }
    if matches!(args.target, TargetArg::Etcd | TargetArg::Both) {
        eprintln!("starting etcd ({} members)", args.nodes);
        let dir = data_dir.join("etcd");
        let etcd = setup::start_etcd(&dir, &options).await?;
        memory.push(prepare(args, "etcd", &etcd, &dir).await?);
        targets.etcd = Some(etcd);
    }

    let jsonl = args.out.join("results.jsonl");
    let params = args.params();
    let mut runs = Vec::new();
    for &workload in &args.workloads {
        let closed = run_rounds(args, &params, &targets, workload, &jsonl).await?;
        let Some(fraction) = args.equal_load else {
            runs.extend(closed);
            continue;
        };
        // The lower of the two closed-loop throughputs, over all rounds.
        let throughput = |target: &str| {
            let of: Vec<f64> = closed
                .iter()
                .filter(|m| m.result.target == target)
                .map(|m| m.result.throughput_ops_s)
                .collect();
            of.iter().sum::<f64>() / of.len().max(1) as f64
        };
        let rate = fraction * throughput("atoll").min(throughput("etcd"));
        runs.extend(closed);
        if rate < 1.0 {
            eprintln!("{workload}: no throughput to derive an equal offered load from");
            continue;
        }
        eprintln!("{workload}: equal offered load of {rate:.0} ops/s on both targets");
        let open = Params {
            rate: Some(rate),
            ..params.clone()
        };
        runs.extend(run_rounds(args, &open, &targets, workload, &jsonl).await?);
    }

    let mut report = format!("## Runs\n\n{}", stats::markdown_table(&runs));
    report.push_str(&format!(
        "\n## Memory after preloading\n\n{}",
        stats::memory_table(&memory)
    ));
    for m in &memory {
        stats::append_jsonl(&args.out.join("memory.jsonl"), m)?;
    }
    for &workload in &args.workloads {
        let name = workload.to_string();
        let lines: Vec<plot::Line<'_>> = runs
            .iter()
            .filter(|m| m.result.workload == name)
            .map(|m| plot::Line {
                label: format!("{} r{}", m.result.target, m.result.round),
                target: m.result.target.as_str(),
                points: &m.result.series,
            })
            .collect();
        let title = format!("{name}: {} clients, {} keys", args.clients, args.keys);
        let path = args.out.join(format!("{name}.svg"));
        std::fs::write(&path, plot::svg(&title, &lines))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ratios = stats::ratio_table(&runs)?;
    if !ratios.is_empty() {
        report.push_str(&format!(
            "\n## Atoll / etcd\n\nThroughput from the closed-loop runs ({} clients each); p99 from the open-loop runs at equal offered load where there are any, else from the closed-loop runs.\n\n{ratios}",
            args.clients
        ));
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

/// Every round of `workload` with `params` on each running target, Atoll
/// first in each round; each run is appended to `jsonl` as it ends.
async fn run_rounds(
    args: &Args,
    params: &Params,
    targets: &Targets,
    workload: Workload,
    jsonl: &std::path::Path,
) -> anyhow::Result<Vec<Measured>> {
    let freeze = freezes_idle(args);
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        if let Some(atoll) = &targets.atoll {
            runs.push(measure(args, params, "atoll", atoll, workload, round, freeze).await?);
        }
        if let Some(etcd) = &targets.etcd {
            runs.push(measure(args, params, "etcd", etcd, workload, round, freeze).await?);
        }
    }
    for run in &runs {
        stats::append_jsonl(jsonl, &run.result)?;
    }
    Ok(runs)
}

/// Whether the idle target is frozen while the other one is measured.
fn freezes_idle(args: &Args) -> bool {
    args.target == TargetArg::Both && args.freeze_idle
}

/// Preloads a started target (data dirs under `dir`), measures its memory,
/// and freezes it if it is to wait frozen for its turn.
async fn prepare<S: Store>(
    args: &Args,
    name: &str,
    target: &Target<S>,
    dir: &std::path::Path,
) -> anyhow::Result<Memory> {
    let keys = args.keys + args.cas_keys;
    eprintln!("preloading {keys} keys into {name}");
    setup::preload(
        &target.store,
        args.keys,
        args.cas_keys,
        args.value_size,
        64,
        Duration::from_secs(120),
    )
    .await?;
    let memory = Memory::measure(name, keys, args.value_size, &target.cluster, dir);
    if freezes_idle(args) {
        target.set_running(false)?;
    }
    Ok(memory)
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
    // Start every run with no dirty page cache: otherwise the previous
    // run's or the other target's writeback lands in this run's fsyncs
    // (seen: a 2 s stall of Atoll's leaders right after etcd's preload).
    match std::process::Command::new("sync").status() {
        Ok(status) if status.success() => {}
        other => eprintln!("warning: sync failed ({other:?}); dirty pages may slow this run"),
    }
    if freeze_when_idle {
        target.set_running(true)?;
        // A frozen Raft group may elect anew when it wakes up.
        setup::wait_ready(&target.store, Duration::from_secs(30)).await?;
    }
    let progress = progress_bar(&format!("{name} {workload} r{round}"));
    let before = target.store.counters().await;
    let cpu = tokio::spawn(server_cpu_in_window(
        setup::pids(&target.cluster),
        params.warmup,
        params.duration,
    ));
    let tally = workload::run(&target.store, workload, params, &progress).await;
    let after = target.store.counters().await;
    let server_cpu = cpu.await.ok().flatten();
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
            rate: params.rate,
            keys: args.keys,
            dist: args.dist,
            value_size: args.value_size,
            duration: args.duration,
            counters: before.zip(after).map(|(b, a)| b.until(a)),
            server_cpu,
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

/// The CPU time the processes `pids` use in the measured window of a run
/// that starts now: from the end of `warmup` to `duration` later.
async fn server_cpu_in_window(
    pids: Vec<u32>,
    warmup: Duration,
    duration: Duration,
) -> Option<Duration> {
    tokio::time::sleep(warmup).await;
    let start = setup::cpu_time(&pids)?;
    tokio::time::sleep(duration).await;
    setup::cpu_time(&pids)?.checked_sub(start)
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
