//! `atoll`: run a node (`atoll server`) or a local three-island cluster
//! (`atoll dev`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_server::dev::{dev_configs, start_rocks_node, DEV_BASE_PORT};
use atoll_server::{server, NodeConfig};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "Atoll: a sharded, Raft-replicated key-value store across islands"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node.
    Server(ServerArgs),
    /// Run a local cluster: three nodes on three islands, on 127.0.0.1.
    Dev(DevArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// TOML config file (see deploy/atoll.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    config_check: bool,
    #[arg(long)]
    node_id: Option<u64>,
    #[arg(long)]
    island: Option<String>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join a running cluster through any of these nodes (comma-separated
    /// `host:port`), instead of being one of `cluster.initial_nodes`. Only
    /// the first start of a data dir joins; later starts reuse its identity.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// This node's relative capacity weight, registered when it joins.
    #[arg(long)]
    capacity: Option<u64>,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "atoll-dev-data")]
    data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = DEV_BASE_PORT)]
    base_port: u16,
    /// Data shards of a new dev cluster.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Delete the data dir first.
    #[arg(long)]
    fresh: bool,
}

fn load_config(args: &ServerArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::default(),
    };
    config.apply_env(std::env::vars())?;
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = &args.island {
        config.island = v.clone();
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.advertise {
        config.advertise = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if !args.join.is_empty() {
        config.cluster.join = args.join.clone();
    }
    if let Some(v) = args.capacity {
        config.capacity = v;
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    if args.config_check {
        if config.joins() {
            println!(
                "config ok: a node on island {} joining through {}",
                config.island,
                config.cluster.join.join(",")
            );
        } else {
            println!(
                "config ok: node {} on island {}",
                config.node_id, config.island
            );
        }
        return Ok(());
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let node = start_rocks_node(config).await?;
    tracing::info!(node = %node.id, "serving on {}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(node.clone(), listener, async {
        let _ = rx.await;
    }));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(());
    serving.await??;
    close(node).await;
    Ok(())
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing {}", args.data_dir.display()))?;
    }
    let configs = dev_configs(&args.data_dir, args.base_port, args.shards);
    let mut listeners = Vec::new();
    for cfg in &configs {
        listeners.push(TcpListener::bind(cfg.listen).await.with_context(|| {
            format!(
                "binding {} (is another `atoll dev` running? use --base-port)",
                cfg.listen
            )
        })?);
    }
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut nodes = Vec::new();
    let mut serving = Vec::new();
    for (cfg, listener) in configs.into_iter().zip(listeners) {
        let node = start_rocks_node(cfg).await?;
        let mut rx = tx.subscribe();
        serving.push(tokio::spawn(server::serve(
            node.clone(),
            listener,
            async move {
                let _ = rx.recv().await;
            },
        )));
        nodes.push(node);
    }
    let ready = futures_ready(&nodes).await;
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| n.config().advertise_address())
        .collect();
    println!(
        "Atoll dev cluster is up: 3 nodes on islands {}",
        atoll_server::dev::DEV_ISLANDS.join(", ")
    );
    println!("  client endpoints: {}", endpoints.join(","));
    println!("  data dir:         {}", args.data_dir.display());
    if !ready {
        println!("  (some shards have no leader yet; they will elect one shortly)");
    }
    println!("Try: atollctl put hello world && atollctl get hello && atollctl cluster status");
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    // stdout may be gone by now (a closed pipe); stopping must not fail on it.
    let _ = writeln!(std::io::stdout(), "stopping");
    let _ = tx.send(());
    for s in serving {
        s.await??;
    }
    for node in nodes {
        close(node).await;
    }
    Ok(())
}

/// Stops a node and waits for its RocksDB to close: a database still open
/// when the process exits can abort in RocksDB's static destructors.
async fn close(node: std::sync::Arc<atoll_server::Node>) {
    let id = node.id;
    if !atoll_server::Node::close(node, Duration::from_secs(10)).await {
        tracing::warn!(node = %id, "storage still in use after 10s; exiting anyway");
    }
}

async fn futures_ready(nodes: &[std::sync::Arc<atoll_server::Node>]) -> bool {
    for node in nodes {
        if !node.wait_for_leaders(Duration::from_secs(15)).await {
            return false;
        }
    }
    true
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,openraft=error,openraft::replication=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Server(args) => runtime.block_on(run_server(args)),
        Cmd::Dev(args) => {
            if args.shards == 0 {
                bail!("--shards must be at least 1");
            }
            runtime.block_on(run_dev(args))
        }
    }
}
