//! `atollctl`: data commands, cluster status and node administration for
//! Atoll.
//!
//! Exit codes: 0 success, 1 the command failed (including "key not found",
//! a failed compare-and-swap, and `cluster status` of a degraded cluster:
//! a node unreachable or a shard without a leader), 2 usage error.

mod placement;
mod shards;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use atoll_client::{
    Client, ClientOptions, Consistency, Error, Expect, KeyValue, NodeState, PlacementLimits,
    DEV_ENDPOINTS,
};
use atoll_proto::size::ByteSize;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "atollctl", version, about = "Command-line client for Atoll")]
struct Cli {
    /// Comma-separated `host:port` of any cluster nodes (default: the `atoll dev` cluster).
    #[arg(long, global = true, env = "ATOLL_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Deadline of each request, retries included.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read a key.
    Get {
        key: String,
        /// Serve from the nearest replica; may miss recent writes.
        #[arg(long)]
        stale: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Expire the key after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Delete a key.
    Del { key: String },
    /// Compare-and-swap: write only if the key is at a version or value.
    Cas {
        key: String,
        /// Expected version (0 = the key must not exist).
        #[arg(
            long,
            conflicts_with = "expect_value",
            required_unless_present = "expect_value"
        )]
        expect_version: Option<u64>,
        /// Expected current value.
        #[arg(long)]
        expect_value: Option<String>,
        /// New value.
        #[arg(long, conflicts_with = "delete", required_unless_present = "delete")]
        new: Option<String>,
        /// Delete the key instead of writing a new value.
        #[arg(long)]
        delete: bool,
    },
    /// Keys of one hash tag in key order, e.g. `scan '{user42}:'`.
    Scan {
        start: String,
        /// Exclusive end (default: the tag's last key).
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Every key of the cluster (in storage order), printed page by page as
    /// it arrives, so any amount of data can be listed.
    ScanAll {
        /// Most keys to list; 0 = all.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Cluster information.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// The cluster's nodes: list them, weigh them, remove them.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// The placement controller: how replicas sit on nodes; pause or resume it.
    Placement {
        #[command(subcommand)]
        command: PlacementCmd,
    },
    /// Shards: list them, split one, move a replica.
    Shard {
        #[command(subcommand)]
        command: ShardCmd,
    },
    /// Replica moves in progress.
    Moves {
        #[command(subcommand)]
        command: MovesCmd,
    },
}

#[derive(Subcommand)]
enum PlacementCmd {
    /// Per node and island: replicas, leaders, bytes, capacity, and each
    /// node's share of its island's replicas against its share of the
    /// island's capacity (what placement aims at).
    Show,
    /// The moves the controller would start next (at most one per shard,
    /// most urgent first) and the bytes each would copy, as the meta
    /// shard's leader plans them.
    Plan,
    /// Start no move (repairs included) until `resume`; moves in progress
    /// finish.
    Pause,
    /// Let the controller start moves again.
    Resume,
    /// Set how many moves run at once and how fast they copy; a limit not
    /// given keeps its value. Unset limits follow the node config
    /// (`cluster.max_moves`, `cluster.max_moves_into_node`,
    /// `raft.snapshot_rate`). `placement show` prints them.
    Limits {
        /// Moves in progress at once in the whole cluster.
        #[arg(long)]
        max_moves: Option<u32>,
        /// Moves at once whose new replica is on one node.
        #[arg(long)]
        max_moves_into_node: Option<u32>,
        /// Bytes per second each node sends to replicas catching up
        /// (snapshot chunks and log entries to learners), e.g. 32MiB.
        #[arg(long, value_parser = parse_rate)]
        snapshot_rate: Option<u64>,
        /// First put every limit back to the node config.
        #[arg(long)]
        reset: bool,
    },
}

#[derive(Subcommand)]
enum ShardCmd {
    /// Every data shard: hash range, epoch, nodes, leader, bytes (RocksDB's
    /// estimate, largest replica), and a split or move in progress.
    List,
    /// Split shard S in two: it keeps the lower half of its hash range, a
    /// new shard with replicas on the same nodes takes the upper half. No
    /// data moves. `shard list` shows the split until it finishes.
    Split {
        shard: u64,
        /// The first hash of the new shard (decimal or 0x-hex); the middle
        /// of the range if not given.
        #[arg(long, value_parser = parse_hash)]
        at: Option<u64>,
    },
    /// Move shard S's replica on node FROM to node TO. The cluster adds the
    /// new replica as a learner, lets it catch up, then swaps it for the
    /// old one in one joint change of voters; `moves list` follows it.
    Move {
        shard: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
}

#[derive(Subcommand)]
enum MovesCmd {
    /// Every move in progress: shard, replicas, state, catch-up progress,
    /// and why it is not advancing, if it is not.
    List,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node, removed ones too: island, address, capacity, state,
    /// whether it answers, and the replicas and leaders it holds.
    List,
    /// Set a node's relative capacity weight, which placement weighs.
    SetCapacity { node: u64, capacity: u64 },
    /// Move every replica off a node (leaders first hand over); once it
    /// holds none, it is removed. Refused, with the reason, when the other
    /// nodes cannot hold its replicas (say 3 nodes with RF 3).
    Drain { node: u64 },
    /// Remove a node from the cluster for good: its id is never reused,
    /// and its peers refuse its Raft calls. Without --dead, only a node
    /// that holds no replica is removed.
    Remove {
        node: u64,
        /// The node is gone for good: remove it whatever it still holds.
        #[arg(long)]
        dead: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Nodes, islands, shards, replicas and leaders.
    Status,
    /// The cluster map.
    Map,
}

#[derive(Serialize)]
struct KvOut {
    key: String,
    value: String,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

impl KvOut {
    fn print_line(&self) {
        println!("{}\t{}\t(version {})", self.key, self.value, self.version);
    }
}

impl From<&KeyValue> for KvOut {
    fn from(kv: &KeyValue) -> Self {
        KvOut {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            version: kv.version,
            expires_at_ms: (kv.expires_at_ms != 0).then_some(kv.expires_at_ms),
        }
    }
}

/// A node as tables show it: `n4`, or `-` for none (a move that adds a
/// replica has no source; one that removes a replica has no target).
fn node_name(id: u64) -> String {
    match id {
        0 => "-".to_string(),
        n => format!("n{n}"),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_kvs(output: Output, kvs: &[KeyValue]) -> anyhow::Result<()> {
    let rows: Vec<KvOut> = kvs.iter().map(KvOut::from).collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            for r in &rows {
                r.print_line();
            }
            Ok(())
        }
    }
}

/// The answer to a change of the map.
fn print_change(out: Output, node: u64, map_version: u64) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            print_json(&serde_json::json!({ "node": node, "map_version": map_version }))
        }
        Output::Table => {
            println!("OK (map version {map_version})");
            Ok(())
        }
    }
}

/// Keys `scan-all` asks for per page (the server also stops a page at its
/// read page budget).
const PAGE_KEYS: u64 = 1000;

/// The command's result: `Ok(false)` is a clean "no" (exit 1).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let endpoints = if cli.endpoints.is_empty() {
        DEV_ENDPOINTS.iter().map(|s| s.to_string()).collect()
    } else {
        cli.endpoints.clone()
    };
    let options = ClientOptions {
        timeout: cli.timeout,
        ..Default::default()
    };
    let client = Client::connect_with(endpoints.clone(), options)
        .await
        .with_context(|| format!("connecting to {}", endpoints.join(",")))?;
    let out = cli.output;
    match cli.command {
        Cmd::Get { key, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            match client.get_with(&key, consistency).await? {
                Some(kv) => {
                    match out {
                        Output::Json => print_json(&KvOut::from(&kv))?,
                        Output::Table => println!("{}", String::from_utf8_lossy(&kv.value)),
                    }
                    Ok(true)
                }
                None => {
                    if out == Output::Json {
                        println!("null");
                    }
                    eprintln!("key {key:?} not found");
                    Ok(false)
                }
            }
        }
        Cmd::Put { key, value, ttl } => {
            let version = client.put_with_ttl(&key, &value, ttl).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({ "key": key, "version": version }))?,
                Output::Table => println!("OK (version {version})"),
            }
            Ok(true)
        }
        Cmd::Del { key } => {
            let deleted = client.delete(&key).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({ "key": key, "deleted": deleted }))?,
                Output::Table => println!("{}", if deleted { "deleted" } else { "not found" }),
            }
            Ok(true)
        }
        Cmd::Cas {
            key,
            expect_version,
            expect_value,
            new,
            delete,
        } => {
            let expect = match (expect_version, expect_value) {
                (Some(v), _) => Expect::Version(v),
                (None, Some(v)) => Expect::Value(v.into_bytes()),
                (None, None) => anyhow::bail!("give --expect-version or --expect-value"),
            };
            let new_value = if delete {
                None
            } else {
                new.map(String::into_bytes)
            };
            match client.compare_and_swap(&key, expect, new_value).await {
                Ok(version) => {
                    match out {
                        Output::Json => print_json(
                            &serde_json::json!({ "key": key, "succeeded": true, "version": version }),
                        )?,
                        Output::Table => println!("OK (version {version})"),
                    }
                    Ok(true)
                }
                Err(Error::CasFailed { current, .. }) => {
                    let current = current.as_ref().map(KvOut::from);
                    match out {
                        Output::Json => print_json(
                            &serde_json::json!({ "key": key, "succeeded": false, "current": current }),
                        )?,
                        Output::Table => match current {
                            Some(c) => eprintln!(
                                "compare failed: {key:?} is at version {} with value {:?}",
                                c.version, c.value
                            ),
                            None => eprintln!("compare failed: {key:?} does not exist"),
                        },
                    }
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Scan { start, end, limit } => {
            let page = client.scan(&start, &end, limit).await?;
            print_kvs(out, &page.kvs)?;
            if let (Some(next), Output::Table) = (&page.resume_key, out) {
                eprintln!("(more: continue from {:?})", String::from_utf8_lossy(next));
            }
            Ok(true)
        }
        Cmd::ScanAll { limit } => {
            let limit = if limit == 0 { u64::MAX } else { limit };
            let mut printed = 0u64;
            let mut cursor = None;
            if out == Output::Json {
                println!("[");
            }
            loop {
                let page_limit = (limit - printed).min(PAGE_KEYS);
                let page = client.scan_all(cursor.as_ref(), page_limit as u32).await?;
                for kv in page.kvs.iter().take((limit - printed) as usize) {
                    let row = KvOut::from(kv);
                    match out {
                        Output::Json if printed > 0 => {
                            println!(",{}", serde_json::to_string(&row)?)
                        }
                        Output::Json => println!("{}", serde_json::to_string(&row)?),
                        Output::Table => row.print_line(),
                    }
                    printed += 1;
                }
                match page.next {
                    Some(next) if printed < limit => cursor = Some(next),
                    _ => break,
                }
            }
            if out == Output::Json {
                println!("]");
            }
            Ok(true)
        }
        Cmd::Cluster {
            command: ClusterCmd::Status,
        } => {
            let status = client.cluster_status().await?;
            let report = status::Report::from_status(&status);
            match out {
                Output::Json => print_json(&report)?,
                Output::Table => report.print_table(),
            }
            let problems = report.problems();
            for problem in &problems {
                eprintln!("degraded: {problem}");
            }
            Ok(problems.is_empty())
        }
        Cmd::Node {
            command: NodeCmd::List,
        } => {
            let status = client.cluster_status().await?;
            let report = status::Report::from_status(&status);
            match out {
                Output::Json => print_json(&report.nodes)?,
                Output::Table => report.print_nodes(),
            }
            Ok(true)
        }
        Cmd::Node {
            command: NodeCmd::SetCapacity { node, capacity },
        } => {
            let version = client.set_node_capacity(node, capacity).await?;
            print_change(out, node, version)?;
            Ok(true)
        }
        Cmd::Node {
            command: NodeCmd::Drain { node },
        } => {
            let version = client
                .set_node_state(node, NodeState::Draining, false)
                .await?;
            print_change(out, node, version)?;
            Ok(true)
        }
        Cmd::Placement {
            command: PlacementCmd::Show,
        } => {
            let status = client.cluster_status().await?;
            let shares = placement::Shares::from_status(&status);
            match out {
                Output::Json => print_json(&shares)?,
                Output::Table => shares.print(),
            }
            Ok(true)
        }
        Cmd::Placement {
            command: PlacementCmd::Plan,
        } => {
            let plan = client.placement_plan().await?;
            match out {
                Output::Json => print_json(&placement::PlanOut::from(&plan))?,
                Output::Table => placement::print_plan(&plan),
            }
            Ok(plan.error.is_empty())
        }
        Cmd::Placement {
            command:
                PlacementCmd::Limits {
                    max_moves,
                    max_moves_into_node,
                    snapshot_rate,
                    reset,
                },
        } => {
            if max_moves == Some(0) || max_moves_into_node == Some(0) {
                anyhow::bail!(
                    "a limit on moves must be at least 1 (`placement pause` stops moves)"
                );
            }
            let limits = PlacementLimits {
                max_moves: max_moves.unwrap_or(0),
                max_moves_into_node: max_moves_into_node.unwrap_or(0),
                snapshot_rate: snapshot_rate.unwrap_or(0),
            };
            let version = client.set_placement_limits(limits, reset).await?;
            let set = client
                .cluster_map()
                .await?
                .placement_limits
                .unwrap_or_default();
            match out {
                Output::Json => print_json(&placement::LimitsOut::from(&set))?,
                Output::Table => println!(
                    "{} (map version {version})",
                    placement::LimitsOut::from(&set)
                ),
            }
            Ok(true)
        }
        Cmd::Placement { command } => {
            let paused = matches!(command, PlacementCmd::Pause);
            let version = client.set_placement_paused(paused).await?;
            match out {
                Output::Json => {
                    print_json(&serde_json::json!({ "paused": paused, "map_version": version }))?
                }
                Output::Table => println!(
                    "placement {} (map version {version})",
                    if paused { "paused" } else { "resumed" }
                ),
            }
            Ok(true)
        }
        Cmd::Node {
            command: NodeCmd::Remove { node, dead },
        } => {
            let version = client
                .set_node_state(node, NodeState::Removed, dead)
                .await?;
            print_change(out, node, version)?;
            Ok(true)
        }
        Cmd::Shard {
            command: ShardCmd::Move { shard, from, to },
        } => {
            let version = client.move_replica(shard, from, to).await?;
            match out {
                Output::Json => {
                    print_json(&serde_json::json!({ "shard": shard, "map_version": version }))?
                }
                Output::Table => println!(
                    "move started (map version {version}); follow it with `atollctl moves list`"
                ),
            }
            Ok(true)
        }
        Cmd::Shard {
            command: ShardCmd::List,
        } => {
            let rows = shards::rows(&client.cluster_status().await?);
            match out {
                Output::Json => print_json(&rows)?,
                Output::Table => shards::print(&rows),
            }
            Ok(true)
        }
        Cmd::Shard {
            command: ShardCmd::Split { shard, at },
        } => {
            let answer = client.split_shard(shard, at.unwrap_or(0)).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({
                    "shard": shard,
                    "at": format!("{:#018x}", answer.at),
                    "child_shard": answer.child_shard_id,
                    "map_version": answer.map_version,
                }))?,
                Output::Table => println!(
                    "split started: shard {shard} keeps hashes below {:#018x}, shard {} takes \
                     the rest (map version {}); follow it with `atollctl shard list`",
                    answer.at, answer.child_shard_id, answer.map_version
                ),
            }
            Ok(true)
        }
        Cmd::Moves {
            command: MovesCmd::List,
        } => {
            let moves = client.list_moves().await?;
            let rows: Vec<status::MoveOut> =
                moves.moves.iter().map(status::MoveOut::from).collect();
            match out {
                Output::Json => print_json(&rows)?,
                Output::Table => status::print_moves(&rows),
            }
            Ok(true)
        }
        Cmd::Cluster {
            command: ClusterCmd::Map,
        } => {
            let map = client.cluster_map().await?;
            print_json(&status::MapOut::from_map(&map))?;
            Ok(true)
        }
    }
}

/// A byte rate above 0 as operators write sizes (`32MiB`).
fn parse_rate(text: &str) -> Result<u64, String> {
    match ByteSize::parse(text)? {
        ByteSize(0) => Err("a snapshot rate must be above 0".into()),
        ByteSize(rate) => Ok(rate),
    }
}

/// A hash given as decimal or `0x` hex.
fn parse_hash(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a 64-bit hash: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
