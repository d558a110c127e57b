//! `atoll-jepsen`: run a workload against a real Atoll cluster while a
//! nemesis injects faults, record the history, and check it.
//!
//! Exit codes: 0 the history is valid, 1 it is not (or could not be
//! checked, or the cluster did not recover), 2 usage error.
//!
//! This first version has the register workload and the kill and pause
//! nemeses on loopback; partitions, clock and disk faults and the set and
//! bank workloads are still to come (see jepsen/README.md).

mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_jepsen::cluster::{Cluster, ClusterSpec};
use atoll_jepsen::{check_register_history, write_jsonl, Budget, Verdict};
use clap::{Parser, ValueEnum};
use harness::nemesis::Fault;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Register,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Nemesis {
    None,
    /// kill -9 a random node, restart it a period later.
    Kill,
    /// SIGSTOP a random node, SIGCONT it a period later.
    Pause,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlantedBug {
    /// Linearizable reads answered by any replica.
    StaleReads,
    /// Log appends acknowledged before fsync.
    AckBeforeFsync,
}

#[derive(Parser)]
#[command(
    name = "atoll-jepsen",
    about = "Fault-injection runs against a real Atoll cluster"
)]
struct Args {
    #[arg(long, value_enum, default_value_t = Workload::Register)]
    workload: Workload,
    #[arg(long, value_enum, default_value_t = Nemesis::Kill)]
    nemesis: Nemesis,
    /// How long clients run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    time: Duration,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 3)]
    islands: usize,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Register keys.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Time between nemesis actions (a kill, then the restart).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_period: Duration,
    /// Plant a known bug (the run must then report a violation).
    #[arg(long, value_enum)]
    planted_bug: Option<PlantedBug>,
    /// Where the run's history, events, verdict and node logs go.
    #[arg(long, default_value = "jepsen-runs/latest")]
    out: PathBuf,
    /// The `atoll` binary (default: next to this one).
    #[arg(long)]
    atoll: Option<PathBuf>,
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let atoll = match args.atoll {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("atoll"),
    };
    if !atoll.exists() {
        bail!(
            "{} not found: build it with `cargo build -p atoll-server` or pass --atoll",
            atoll.display()
        );
    }
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("clearing {}", args.out.display()))?;
    }
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let mut spec = ClusterSpec::spread(args.nodes, args.islands, args.shards);
    spec.testing = match args.planted_bug {
        None => vec![],
        Some(PlantedBug::StaleReads) => vec!["stale_linearizable_reads = true".to_string()],
        Some(PlantedBug::AckBeforeFsync) => vec!["ack_before_fsync = true".to_string()],
    };
    let cluster = Cluster::start(&atoll, &out, &spec)
        .with_context(|| format!("starting {}", atoll.display()))?;
    let client = cluster.client(Duration::from_secs(3), None).await?;
    // Let every shard elect a leader before the clock starts.
    for _ in 0..100 {
        if client.put("jepsen-warmup", "1").await.is_ok() {
            break;
        }
    }
    let cluster = Mutex::new(cluster);
    let t0 = Instant::now();
    let until = t0 + args.time;
    let workload = harness::register::run(client.clone(), args.clients, args.keys, t0, until);
    let nemesis = async {
        match args.nemesis {
            Nemesis::None => Ok(Vec::new()),
            Nemesis::Kill => {
                harness::nemesis::run(Fault::Kill, &cluster, t0, until, args.fault_period).await
            }
            Nemesis::Pause => {
                harness::nemesis::run(Fault::Pause, &cluster, t0, until, args.fault_period).await
            }
        }
    };
    let (history, events) = tokio::join!(workload, nemesis);
    let events = events?;

    // Healed: the cluster must serve again within the recovery deadline.
    let recovered = {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ok = false;
        while Instant::now() < deadline && !ok {
            ok = client.put("jepsen-recovery", "1").await.is_ok()
                && client.get("jepsen-recovery").await.is_ok();
        }
        ok
    };
    let panics = cluster.lock().await.panics();

    write_jsonl(std::fs::File::create(out.join("history.jsonl"))?, &history)?;
    std::fs::write(
        out.join("events.json"),
        serde_json::to_string_pretty(&events)?,
    )?;
    let reports = check_register_history(&history, &Budget::default())?;
    let verdict = Verdict::combine(reports.values().map(|r| &r.verdict));
    let lines: Vec<String> = reports
        .iter()
        .map(|(key, r)| format!("{key}: {} ops, {} steps: {:?}", r.ops, r.steps, r.verdict))
        .collect();
    let counts =
        |f: fn(&atoll_jepsen::Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    let ok = counts(|o| matches!(o, atoll_jepsen::Outcome::Ok(_)));
    let fail = counts(|o| matches!(o, atoll_jepsen::Outcome::Fail));
    let ambiguous = counts(|o| matches!(o, atoll_jepsen::Outcome::Ambiguous));
    let summary = format!(
        "ops {} (ok {ok}, fail {fail}, ambiguous {ambiguous}); faults {}; recovered {recovered}; panics {:?}\nverdict: {}\n{}",
        history.len(),
        events.len(),
        panics,
        if verdict.is_valid() { "valid".to_string() } else { format!("{verdict:?}") },
        lines.join("\n")
    );
    std::fs::write(out.join("verdict.txt"), &summary)?;
    println!("{summary}");
    println!("run folder: {}", out.display());
    Ok(verdict.is_valid() && recovered && panics.is_empty())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
