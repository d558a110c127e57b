//! A cluster of `atoll server` processes (or, to prove the harness against
//! a system we did not write, etcd members): one config, data dir and log
//! per node under a run directory. The harness's nemeses and the node's
//! end-to-end tests kill (SIGKILL), pause and restart them. The nodes share
//! 127.0.0.1, or each gets a network namespace of its own ([`Network`]) so
//! that their traffic can be cut ([`crate::netns`]).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atoll_client::{Client, ClientOptions};

use crate::lazyfs::Mount;
use crate::netns::Net;

/// Where the nodes listen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Every node on 127.0.0.1, each on a port of its own.
    #[default]
    Loopback,
    /// Every node in a network namespace of its own (needs root).
    Namespaces,
}

/// The shape of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The island of each node; node ids are 1, 2, ...
    pub islands: Vec<String>,
    /// Data shards of the new cluster.
    pub shards: u32,
    /// Lines for each node's `[testing]` config section (planted bugs).
    pub testing: Vec<String>,
    /// Lines for each node's `[raft]` config section; empty for Atoll's
    /// defaults. [`ClusterSpec::spread`] sets [`FAST_RAFT`].
    pub raft: Vec<String>,
    /// Lines for each node's `[storage]` config section; empty for Atoll's
    /// defaults.
    pub storage: Vec<String>,
    /// Where the nodes listen.
    pub network: Network,
    /// The `atoll-lazyfs` binary: when set, each node's data dir is a
    /// lazyfs mount of its own, so that [`Cluster::crash`] can lose what the
    /// node did not fsync.
    pub lazyfs: Option<PathBuf>,
    /// libfaketime (Debian's `faketime`): when set, each Atoll node's wall
    /// clock is offset by what its `node-<id>.clock` file says, re-read every
    /// second ([`Cluster::set_clock`]); the monotonic clock is left alone.
    pub faketime: Option<PathBuf>,
    /// Nodes configured to join the running cluster (`cluster.join`), not
    /// started until [`Cluster::join_spare`]: spare `k` is on the `k`-th of
    /// the islands, in order of first appearance.
    pub spares: usize,
    /// `cluster.replication_factor` of the initial nodes (at most their
    /// number).
    pub replication_factor: u32,
    /// More lines for each initial node's `[cluster]` section.
    pub cluster: Vec<String>,
}

/// Raft timings a little faster than Atoll's defaults, so that fault runs
/// see more elections per minute.
pub const FAST_RAFT: [&str; 3] = [
    "heartbeat = \"100ms\"",
    "election_timeout_min = \"800ms\"",
    "election_timeout_max = \"1600ms\"",
];

impl ClusterSpec {
    /// `nodes` nodes spread round-robin over `islands` islands named
    /// `island-a`, `island-b`, ...
    pub fn spread(nodes: usize, islands: usize, shards: u32) -> ClusterSpec {
        let islands = islands.clamp(1, 26);
        let islands = (0..nodes)
            .map(|i| format!("island-{}", (b'a' + (i % islands) as u8) as char))
            .collect();
        ClusterSpec {
            islands,
            shards,
            testing: Vec::new(),
            raft: FAST_RAFT.map(String::from).to_vec(),
            storage: Vec::new(),
            network: Network::Loopback,
            lazyfs: None,
            faketime: None,
            spares: 0,
            replication_factor: 3,
            cluster: Vec::new(),
        }
    }

    /// The island of spare `k`.
    fn spare_island(&self, k: usize) -> String {
        let mut distinct: Vec<&String> = Vec::new();
        for island in &self.islands {
            if !distinct.contains(&island) {
                distinct.push(island);
            }
        }
        distinct
            .get(k % distinct.len().max(1))
            .map_or_else(|| "island-a".into(), |i| (*i).clone())
    }
}

/// One node: how to start it, where it logs, and its process if it runs.
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Atoll node `i` (index), started with the config `text`, which is
    /// written to `dir`; under libfaketime when `spec` asks for it.
    fn atoll(
        atoll: &Path,
        dir: &Path,
        spec: &ClusterSpec,
        i: usize,
        text: &str,
    ) -> io::Result<Proc> {
        let config = dir.join(format!("node-{}.toml", i + 1));
        std::fs::write(&config, text)?;
        // Warnings only, unless the caller's own ATOLL_LOG asks for more.
        let log = std::env::var("ATOLL_LOG").unwrap_or_else(|_| "warn".into());
        let mut env = vec![("ATOLL_LOG".to_string(), log)];
        if let Some(lib) = &spec.faketime {
            let clock = dir.join(format!("node-{}.clock", i + 1));
            std::fs::write(&clock, "+0\n")?;
            env.extend([
                ("LD_PRELOAD".to_string(), lib.display().to_string()),
                (
                    "FAKETIME_TIMESTAMP_FILE".to_string(),
                    clock.display().to_string(),
                ),
                ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
            ]);
        }
        Ok(Proc {
            program: atoll.to_owned(),
            args: vec![
                "server".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            env,
            log: dir.join(format!("node-{}.log", i + 1)),
            child: None,
        })
    }
}

/// The running processes of one cluster. Dropping it kills them all.
pub struct Cluster {
    /// Each node's client address (`host:port`), by index (node id - 1).
    pub addresses: Vec<String>,
    /// Each node's island, by index.
    pub islands: Vec<String>,
    /// Every node's process, spares (not joined yet) last.
    procs: Vec<Proc>,
    /// The address and island of each spare not joined yet, in order.
    spares: std::collections::VecDeque<(String, String)>,
    /// Each node's lazyfs mount, when the data dirs are on lazyfs. Dropped
    /// after the nodes are killed.
    mounts: Vec<Mount>,
    net: Option<Net>,
}

/// `n` distinct free ports on 127.0.0.1. The listeners are all held until
/// every port is known: one port freed and then handed out again would
/// give two nodes the same address.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl Cluster {
    /// Writes one config per node under `dir` and starts every node with
    /// the `atoll` binary at `atoll`.
    pub fn start(atoll: &Path, dir: &Path, spec: &ClusterSpec) -> io::Result<Cluster> {
        let total = spec.islands.len() + spec.spares;
        let net = Self::network_of(spec, total)?;
        let mut addresses = Self::addresses(&net, total, 7000)?;
        let spare_addresses = addresses.split_off(spec.islands.len());
        let initial: String = spec
            .islands
            .iter()
            .zip(&addresses)
            .enumerate()
            .map(|(i, (island, address))| {
                format!("[[cluster.initial_nodes]]\nid = {}\nisland = \"{island}\"\naddress = \"{address}\"\n\n", i + 1)
            })
            .collect();
        let mut procs = Vec::new();
        for (i, (island, address)) in spec.islands.iter().zip(&addresses).enumerate() {
            let text = format!(
                "node_id = {}\nisland = \"{island}\"\nlisten = \"{address}\"\ndata_dir = \"{}\"\n\n\
                 [raft]\n{}\n\n[storage]\n{}\n\n\
                 [testing]\n{}\n\n[cluster]\ninitial_shards = {}\nreplication_factor = {}\n{}\n\n{initial}",
                i + 1,
                dir.join(format!("node-{}", i + 1)).display(),
                spec.raft.join("\n"),
                spec.storage.join("\n"),
                spec.testing.join("\n"),
                spec.shards,
                spec.replication_factor,
                spec.cluster.join("\n"),
            );
            procs.push(Proc::atoll(atoll, dir, spec, i, &text)?);
        }
        // Spares: no node id, no initial nodes; they join through the
        // first nodes, and get the next ids (in the order they join).
        let join: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let mut spares = std::collections::VecDeque::new();
        for (k, address) in spare_addresses.into_iter().enumerate() {
            let i = spec.islands.len() + k;
            let island = spec.spare_island(k);
            let text = format!(
                "island = \"{island}\"\nlisten = \"{address}\"\ndata_dir = \"{}\"\n\n\
                 [raft]\n{}\n\n[storage]\n{}\n\n[testing]\n{}\n\n\
                 [cluster]\njoin = [{}]\n",
                dir.join(format!("node-{}", i + 1)).display(),
                spec.raft.join("\n"),
                spec.storage.join("\n"),
                spec.testing.join("\n"),
                join.join(", "),
            );
            procs.push(Proc::atoll(atoll, dir, spec, i, &text)?);
            spares.push_back((address, island));
        }
        let mut cluster = Self::launch(dir, addresses, spec, procs, net)?;
        cluster.spares = spares;
        Ok(cluster)
    }

    /// Starts the next spare, which joins the cluster; returns its index
    /// (its node id - 1, if spares join in order), or none when no spare
    /// is left.
    pub fn join_spare(&mut self) -> io::Result<Option<(usize, String)>> {
        let Some((address, island)) = self.spares.pop_front() else {
            return Ok(None);
        };
        let i = self.addresses.len();
        self.addresses.push(address);
        self.islands.push(island.clone());
        self.start_node(i)?;
        Ok(Some((i, island)))
    }

    /// Starts an etcd cluster of `spec.islands.len()` members with the
    /// `etcd` binary at `etcd`, in its default durable configuration (every
    /// write fsynced before it is acknowledged). Data and logs go under
    /// `dir`.
    pub fn start_etcd(etcd: &Path, dir: &Path, spec: &ClusterSpec) -> io::Result<Cluster> {
        let net = Self::network(spec)?;
        let n = spec.islands.len();
        let addresses = Self::addresses(&net, n, 2379)?;
        let peers = Self::addresses(&net, n, 2380)?;
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, peer)| format!("n{}=http://{peer}", i + 1))
            .collect();
        let procs = (0..n)
            .map(|i| {
                let (client, peer) = (
                    format!("http://{}", addresses[i]),
                    format!("http://{}", peers[i]),
                );
                let args = [
                    ("--name", format!("n{}", i + 1)),
                    (
                        "--data-dir",
                        dir.join(format!("etcd-{}", i + 1)).display().to_string(),
                    ),
                    ("--listen-client-urls", client.clone()),
                    ("--advertise-client-urls", client),
                    ("--listen-peer-urls", peer.clone()),
                    ("--initial-advertise-peer-urls", peer),
                    ("--initial-cluster", initial.join(",")),
                    ("--initial-cluster-state", "new".to_string()),
                    ("--initial-cluster-token", "atoll-jepsen".to_string()),
                ];
                Proc {
                    program: etcd.to_owned(),
                    args: args.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    env: vec![],
                    log: dir.join(format!("node-{}.log", i + 1)),
                    child: None,
                }
            })
            .collect();
        Self::launch(dir, addresses, spec, procs, net)
    }

    fn network(spec: &ClusterSpec) -> io::Result<Option<Net>> {
        Self::network_of(spec, spec.islands.len())
    }

    /// A network for `hosts` nodes.
    fn network_of(spec: &ClusterSpec, hosts: usize) -> io::Result<Option<Net>> {
        Ok(match spec.network {
            Network::Loopback => None,
            Network::Namespaces => Some(Net::create(hosts)?),
        })
    }

    /// `n` addresses: a free port each on 127.0.0.1, or `port` on each
    /// namespace's address.
    fn addresses(net: &Option<Net>, n: usize, port: u16) -> io::Result<Vec<String>> {
        match net {
            None => Ok(free_ports(n)?
                .into_iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect()),
            Some(net) => Ok(net
                .hosts()
                .iter()
                .map(|h| format!("{}:{port}", h.address))
                .collect()),
        }
    }

    fn launch(
        dir: &Path,
        addresses: Vec<String>,
        spec: &ClusterSpec,
        procs: Vec<Proc>,
        net: Option<Net>,
    ) -> io::Result<Cluster> {
        let mut mounts = Vec::new();
        if let Some(lazyfs) = &spec.lazyfs {
            for i in 0..procs.len() {
                let name = format!("node-{}", i + 1);
                mounts.push(Mount::start(
                    lazyfs,
                    &dir.join(format!("{name}.disk")),
                    &dir.join(&name),
                    &dir.join(format!("{name}.lazyfs.log")),
                )?);
            }
        }
        let mut cluster = Cluster {
            addresses,
            islands: spec.islands.clone(),
            procs,
            spares: Default::default(),
            mounts,
            net,
        };
        for i in 0..cluster.len() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// Number of nodes, spares that have not joined left out.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The nodes' namespaces, if they run in namespaces.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Whether node `i`'s process is running (it may be paused).
    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].child.is_some()
    }

    /// Starts node `i` (again), keeping its data dir; its log is appended.
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        let proc = &mut self.procs[i];
        if proc.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&proc.log)?;
        let mut command = match &self.net {
            None => Command::new(&proc.program),
            Some(net) => net.command(i, &proc.program),
        };
        let child = command
            .args(&proc.args)
            .envs(proc.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        proc.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut child) = self.procs[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// A power loss on node `i`: SIGKILL, then its lazyfs mount drops every
    /// write the node did not fsync. Returns how many bytes were lost
    /// (whole pages). Needs [`ClusterSpec::lazyfs`].
    pub fn crash(&mut self, i: usize) -> io::Result<u64> {
        self.kill(i)?;
        let mount = self.mounts.get(i).ok_or_else(|| {
            io::Error::other("crashing a node needs its data dir on lazyfs (ClusterSpec::lazyfs)")
        })?;
        let lost = mount.unsynced_bytes()?;
        mount.drop_unsynced()?;
        Ok(lost)
    }

    /// Starts or stops a disk fault on node `i`'s lazyfs mount (see
    /// [`Mount::command`]). Needs [`ClusterSpec::lazyfs`].
    pub fn disk(&self, i: usize, command: &str) -> io::Result<()> {
        self.mounts
            .get(i)
            .ok_or_else(|| io::Error::other("disk faults need the data dirs on lazyfs"))?
            .command(command)
    }

    /// Sets node `i`'s wall clock, in libfaketime's syntax: `+120s` (ahead),
    /// `-30s` (behind), `+0 x1.5` (running fast), `+0` (true). Takes effect
    /// within a second. Needs [`ClusterSpec::faketime`].
    pub fn set_clock(&self, i: usize, clock: &str) -> io::Result<()> {
        let proc = &self.procs[i];
        let file = proc
            .env
            .iter()
            .find(|(k, _)| k == "FAKETIME_TIMESTAMP_FILE")
            .map(|(_, v)| PathBuf::from(v))
            .ok_or_else(|| io::Error::other("clock faults need ClusterSpec::faketime"))?;
        std::fs::write(file, format!("{clock}\n"))
    }

    /// The process id of node `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].child.as_ref().map(|child| child.id())
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to node `i`, if it runs.
    pub fn signal(&self, i: usize, signal: &str) -> io::Result<()> {
        if let Some(pid) = self.pid(i) {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "kill -{signal} node {} failed",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// Each node's client address, by node index.
    pub fn client_addresses(&self) -> &[String] {
        &self.addresses
    }

    /// A client that knows every node, retrying until one answers (30 s).
    pub async fn client(
        &self,
        timeout: Duration,
        island: Option<String>,
    ) -> Result<Client, atoll_client::Error> {
        let options = ClientOptions {
            timeout,
            island,
            ..Default::default()
        };
        self.client_with(options).await
    }

    /// A client with `options` that knows every node, retrying until one
    /// answers (30 s).
    pub async fn client_with(&self, options: ClientOptions) -> Result<Client, atoll_client::Error> {
        let mut last = None;
        for _ in 0..150 {
            match Client::connect_with(self.addresses.clone(), options.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| atoll_client::Error::NoEndpoint("no node answered".into())))
    }

    /// Every node's log, concatenated.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }

    /// The logs that report a panic.
    pub fn panics(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter_map(|p| {
                let log = std::fs::read_to_string(&p.log).ok()?;
                log.contains("panicked")
                    .then(|| p.log.display().to_string())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            let _ = self.kill(i);
        }
    }
}
