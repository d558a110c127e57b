//! `atoll-jepsen`: run a workload against a real Atoll cluster while a
//! nemesis injects faults, record the history, and check it.
//!
//! Exit codes: 0 the history is valid, 1 it is not (or could not be
//! checked, or the cluster did not recover, or an intended fault never
//! happened), 2 usage error. See jepsen/README.md.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_client::{Client, ClientOptions};
use atoll_jepsen::cluster::{Cluster, ClusterSpec, Network};
use atoll_jepsen::timeline::{self, FaultWindow};
use atoll_jepsen::{
    check_bank_history, check_register_history, check_set_history, write_jsonl, Budget, Op,
    Outcome, Verdict,
};
use clap::{Parser, ValueEnum};
use harness::etcd::Etcd;
use harness::nemesis::{Fault, Probe};
use harness::register::Registers;
use harness::Recorder;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Read, write, CAS on a few keys; checked for linearizability.
    Register,
    /// The register with short TTLs on every write and CAS (Atoll only);
    /// checked for linearizability with expiry.
    RegisterTtl,
    /// Unique adds to a few sets; checked for lost and phantom elements.
    Set,
    /// Transfers between accounts; checked for a constant total.
    Bank,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A cluster of `atoll server` processes.
    Atoll,
    /// A cluster of etcd members (register workload only), to prove the
    /// harness against a system we did not write.
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EtcdReads {
    /// Through the leader, after a quorum round (etcd's default).
    Linearizable,
    /// From the member the client talks to, without a quorum round.
    Serializable,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlantedBug {
    /// Linearizable reads answered by any replica.
    StaleReads,
    /// Log appends acknowledged before fsync.
    AckBeforeFsync,
}

/// `none`, or a fault.
fn parse_fault(s: &str) -> Result<Option<Fault>, String> {
    if s == "none" {
        return Ok(None);
    }
    Fault::from_str(s, true).map(Some)
}

#[derive(Parser)]
#[command(
    name = "atoll-jepsen",
    about = "Fault-injection runs against a real Atoll cluster"
)]
struct Args {
    #[arg(long, value_enum, default_value_t = Target::Atoll)]
    target: Target,
    #[arg(long, value_enum, default_value_t = Workload::Register)]
    workload: Workload,
    /// With `--target etcd`: how the register's reads go.
    #[arg(long, value_enum, default_value_t = EtcdReads::Linearizable)]
    etcd_reads: EtcdReads,
    /// With `--target etcd`: the etcd binary (Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Faults to apply in turn, comma-separated: kill, pause, partition,
    /// island-loss, packet-loss, lose-unsynced, disk-fault, clock, move,
    /// move-crash, split, drain, join, silent; or none.
    #[arg(long, value_delimiter = ',', default_value = "kill", value_parser = parse_fault)]
    nemesis: Vec<Option<Fault>>,
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
    /// Register keys, sets, or bank accounts.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Time between nemesis actions (a fault, then its undoing).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_period: Duration,
    /// How long a client attempt waits for one node before trying another
    /// (keep it above the nodes' 0.8-1.6 s election timeout; 5s, the call
    /// deadline, means never).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    attempt_timeout: Duration,
    /// Run the nodes in network namespaces even when no fault needs it.
    #[arg(long)]
    netns: bool,
    /// Plant a known bug (the run must then report a violation).
    #[arg(long, value_enum)]
    planted_bug: Option<PlantedBug>,
    /// A setting of Atoll's `[raft]` config section, as TOML (e.g.
    /// `snapshot_after_entries = 200`, so faults meet snapshot installs);
    /// repeatable, added after the harness's own.
    #[arg(long)]
    raft: Vec<String>,
    /// Where the run's history, events, verdict and node logs go.
    #[arg(long, default_value = "jepsen-runs/latest")]
    out: PathBuf,
    /// The `atoll` binary (default: next to this one).
    #[arg(long)]
    atoll: Option<PathBuf>,
    /// The `atoll-lazyfs` binary, for `lose-unsynced` (build it with
    /// `scripts/lazyfs.sh`).
    #[arg(
        long,
        env = "ATOLL_LAZYFS",
        default_value = "/var/tmp/atoll-target/lazyfs/debug/atoll-lazyfs"
    )]
    lazyfs: PathBuf,
    /// libfaketime, for `clock` (Debian's `faketime`).
    #[arg(
        long,
        default_value = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
    )]
    faketime: PathBuf,
}

/// How long the healed cluster has to serve reads and writes again.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long a run whose nemesis moved replicas may take, after the faults,
/// for its moves to finish and its map and memberships to agree.
const SETTLE: Duration = Duration::from_secs(90);
/// Spare nodes a run with the `join` nemesis starts with (each joins once).
const JOIN_SPARES: usize = 2;

/// Checks `history` with the workload's checker: one line per key, and the
/// combined verdict.
fn check(
    workload: Workload,
    history: &[Op],
    keys: usize,
) -> anyhow::Result<(Verdict, Vec<String>)> {
    let verdicts: BTreeMap<String, (Verdict, String)> = match workload {
        Workload::Register | Workload::RegisterTtl => {
            check_register_history(history, &Budget::default())?
                .into_iter()
                .map(|(key, r)| {
                    let detail = format!("{} ops, {} steps", r.ops, r.steps);
                    (key, (r.verdict, detail))
                })
                .collect()
        }
        Workload::Set => check_set_history(history)?
            .into_iter()
            .map(|(key, v)| (key, (v, String::new())))
            .collect(),
        Workload::Bank => {
            let verdict = check_bank_history(history, &harness::bank::spec(keys))?;
            BTreeMap::from([("bank".to_string(), (verdict, String::new()))])
        }
    };
    let verdict = Verdict::combine(verdicts.values().map(|(v, _)| v));
    let lines = verdicts
        .iter()
        .map(|(key, (v, detail))| format!("{key}: {detail} {v:?}"))
        .collect();
    Ok((verdict, lines))
}

/// How the harness's Atoll clients time out: a call after 5 s, an attempt
/// after `attempt` (then it tries another node).
fn client_options(attempt: Duration) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        attempt_timeout: attempt,
        ..Default::default()
    }
}

/// The system under test, as its clients see it.
enum System {
    /// One client for the checks, one per register process (each with its
    /// own leader cache, as separate application instances have).
    Atoll(Client, Vec<Client>),
    /// One client per member.
    Etcd(Vec<Etcd>),
}

/// Starts the cluster the run targets and waits until it takes writes.
async fn start(
    args: &Args,
    atoll: &Path,
    out: &Path,
    spec: &ClusterSpec,
) -> anyhow::Result<(Cluster, System)> {
    match args.target {
        Target::Atoll => {
            let cluster = Cluster::start(atoll, out, spec)
                .with_context(|| format!("starting {}", atoll.display()))?;
            let client = cluster
                .client_with(client_options(args.attempt_timeout))
                .await?;
            // Let every shard elect a leader before the clock starts.
            for _ in 0..100 {
                if client.put("jepsen-warmup", "1").await.is_ok() {
                    break;
                }
            }
            if args.workload == Workload::Bank {
                harness::bank::setup(&client, args.keys)
                    .await
                    .context("opening the bank's accounts")?;
            }
            let mut own = Vec::new();
            if matches!(args.workload, Workload::Register | Workload::RegisterTtl) {
                for _ in 0..args.clients {
                    own.push(
                        cluster
                            .client_with(client_options(args.attempt_timeout))
                            .await?,
                    );
                }
            }
            Ok((cluster, System::Atoll(client, own)))
        }
        Target::Etcd => {
            if args.workload == Workload::RegisterTtl {
                bail!(
                    "register-ttl runs against Atoll only: etcd has no per-key TTL (only leases) \
                     in this harness"
                );
            }
            if args.workload != Workload::Register {
                bail!("the etcd target runs the register workload only");
            }
            if !args.etcd.exists() {
                bail!(
                    "{} not found: install Debian's etcd-server (apt-get install etcd-server) or pass --etcd",
                    args.etcd.display()
                );
            }
            let cluster = Cluster::start_etcd(&args.etcd, out, spec)
                .with_context(|| format!("starting {}", args.etcd.display()))?;
            let serializable = args.etcd_reads == EtcdReads::Serializable;
            let stores = Etcd::connect(&cluster.addresses, serializable).await?;
            if !Etcd::wait_ready(&stores, RECOVERY).await {
                bail!("etcd did not take a write within {RECOVERY:?}");
            }
            Ok((cluster, System::Etcd(stores)))
        }
    }
}

/// Whether a write and a read succeed within the recovery deadline.
async fn recovers<S: Registers>(store: &S) -> bool {
    let deadline = Instant::now() + RECOVERY;
    while Instant::now() < deadline {
        if matches!(store.write("jepsen-recovery", 1).await, Outcome::Ok(_))
            && matches!(store.read("jepsen-recovery").await, Outcome::Ok(_))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let atoll = match &args.atoll {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("atoll"),
    };
    if args.target == Target::Atoll && !atoll.exists() {
        bail!(
            "{} not found: build it with `cargo build -p atoll-server` or pass --atoll",
            atoll.display()
        );
    }
    let faults: Vec<Fault> = args.nemesis.iter().flatten().copied().collect();
    if args.workload == Workload::Bank && args.keys < 2 {
        bail!("the bank needs at least 2 accounts (--keys)");
    }
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("clearing {}", args.out.display()))?;
    }
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let mut spec = ClusterSpec::spread(args.nodes, args.islands, args.shards);
    spec.raft.extend(args.raft.iter().cloned());
    spec.testing = match args.planted_bug {
        None => vec![],
        Some(PlantedBug::StaleReads) => vec!["stale_linearizable_reads = true".to_string()],
        Some(PlantedBug::AckBeforeFsync) => vec!["ack_before_fsync = true".to_string()],
    };
    if args.netns || faults.iter().any(|f| f.needs_namespaces()) {
        spec.network = Network::Namespaces;
    }
    if faults.contains(&Fault::Silent) {
        if args.target != Target::Atoll {
            bail!("silent runs against Atoll only");
        }
        spec.cluster.push(format!(
            "dead_after = \"{}\"",
            harness::nemesis::SILENT_DEAD_AFTER
        ));
    }
    if faults.contains(&Fault::Join) {
        if args.target != Target::Atoll {
            bail!("join runs against Atoll only");
        }
        spec.spares = JOIN_SPARES;
    }
    if faults.iter().any(|f| f.needs_lazyfs()) {
        if args.target != Target::Atoll {
            bail!("lose-unsynced and disk-fault run against Atoll only");
        }
        if !args.lazyfs.exists() {
            bail!(
                "{} not found: build it with scripts/lazyfs.sh, or pass --lazyfs",
                args.lazyfs.display()
            );
        }
        spec.lazyfs = Some(args.lazyfs.clone());
    }
    if faults.iter().any(|f| f.needs_faketime()) {
        if args.target != Target::Atoll {
            bail!("clock faults run against Atoll only");
        }
        if !args.faketime.exists() {
            bail!(
                "{} not found: install Debian's faketime (apt-get install faketime) or pass --faketime",
                args.faketime.display()
            );
        }
        spec.faketime = Some(args.faketime.clone());
    }
    let (cluster, system) = start(&args, &atoll, &out, &spec).await?;
    // The keys the workload uses, and samples of them: the nemesis aims
    // at the leaders of the shards that hold the samples.
    let (register_keys, relevant) = match &system {
        System::Atoll(client, _) => {
            let map = client.cluster_map().await?;
            let keys = harness::register::keys(Some(&map), args.keys);
            let samples: Vec<String> = match args.workload {
                Workload::Register | Workload::RegisterTtl => keys.clone(),
                Workload::Set => (0..args.keys).map(harness::set::sample_key).collect(),
                Workload::Bank => vec![harness::bank::sample_key()],
            };
            (keys, samples)
        }
        System::Etcd(_) => (harness::register::keys(None, args.keys), Vec::new()),
    };
    let cluster = Mutex::new(cluster);
    let t0 = Instant::now();
    let until = t0 + args.time;
    let recorder = Recorder::new(t0);
    let workload = async {
        let r = recorder.clone();
        let (clients, keys) = (args.clients, args.keys);
        match (&system, args.workload) {
            (System::Atoll(_, own), Workload::Register) => {
                harness::register::run(own.clone(), clients, register_keys.clone(), r, until).await
            }
            (System::Atoll(_, own), Workload::RegisterTtl) => {
                let keys = register_keys.clone();
                harness::register_ttl::run(own.clone(), clients, keys, r, until).await
            }
            (System::Atoll(c, _), Workload::Set) => {
                harness::set::run(c.clone(), clients, keys, r, until).await
            }
            (System::Atoll(c, _), Workload::Bank) => {
                harness::bank::run(c.clone(), clients, keys, r, until).await
            }
            (System::Etcd(stores), _) => {
                harness::register::run(stores.clone(), clients, register_keys.clone(), r, until)
                    .await
            }
        }
    };
    let probe = match &system {
        System::Atoll(client, _) => Probe::Atoll(client),
        System::Etcd(stores) => Probe::Etcd(stores),
    };
    let nemesis = harness::nemesis::run(
        &faults,
        &cluster,
        probe,
        &relevant,
        t0,
        until,
        args.fault_period,
    );
    let (_, events) = tokio::join!(workload, nemesis);
    let events = events?;

    // Healed: the cluster must serve again within the recovery deadline.
    let recovered = match &system {
        System::Atoll(client, _) => {
            recovers(client).await
                && (args.workload != Workload::Set
                    || harness::set::final_reads(
                        client,
                        args.clients,
                        args.keys,
                        &recorder,
                        RECOVERY,
                    )
                    .await)
        }
        System::Etcd(stores) => recovers(&stores[0]).await,
    };
    // A layout that changed must settle: the map and every shard's
    // membership agree again.
    let unsettled = match &system {
        System::Atoll(client, _) if faults.iter().any(|f| f.moves_replicas()) => {
            harness::settled::check(client, SETTLE).await
        }
        _ => Vec::new(),
    };
    let history = recorder.history();
    let panics = cluster.lock().await.panics();
    let missed = harness::nemesis::missed(&faults, &events);

    write_jsonl(std::fs::File::create(out.join("history.jsonl"))?, &history)?;
    std::fs::write(
        out.join("events.json"),
        serde_json::to_string_pretty(&events)?,
    )?;
    let windows: Vec<FaultWindow> = events
        .iter()
        .map(|e| FaultWindow {
            start_ms: e.start_ms,
            end_ms: e.end_ms,
            label: e.what.clone(),
        })
        .collect();
    let title = format!(
        "{:?} on {:?}, {} nodes, nemesis: {}",
        args.workload,
        args.target,
        args.nodes,
        args.nemesis
            .iter()
            .map(|f| f.map_or("none".to_string(), |f| format!("{f:?}").to_lowercase()))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    std::fs::write(
        out.join("timeline.svg"),
        timeline::svg(&history, &windows, &title),
    )?;
    let (verdict, lines) = check(args.workload, &history, args.keys)?;
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    let fail = count(|o| matches!(o, Outcome::Fail));
    let ambiguous = count(|o| matches!(o, Outcome::Ambiguous));
    let faults_hit = events.iter().filter(|e| !e.leaders_hit.is_empty()).count();
    let summary = format!(
        "target {:?}; workload {:?}; ops {} (ok {ok}, fail {fail}, ambiguous {ambiguous}); faults {} ({faults_hit} hit a shard leader); missed {missed:?}; recovered {recovered}; unsettled {unsettled:?}; panics {panics:?}\nverdict: {}\n{}",
        args.target,
        args.workload,
        history.len(),
        events.len(),
        if verdict.is_valid() { "valid".to_string() } else { format!("{verdict:?}") },
        lines.join("\n")
    );
    let faults_text: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "  {:>6.1}s-{:.1}s {}",
                e.start_ms as f64 / 1e3,
                e.end_ms as f64 / 1e3,
                e.what
            )
        })
        .collect();
    let summary = format!("{summary}\nfaults:\n{}", faults_text.join("\n"));
    std::fs::write(out.join("verdict.txt"), &summary)?;
    println!("{summary}");
    println!("run folder: {}", out.display());
    Ok(verdict.is_valid()
        && recovered
        && panics.is_empty()
        && missed.is_empty()
        && unsettled.is_empty())
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
