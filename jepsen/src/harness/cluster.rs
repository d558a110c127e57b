//! A cluster of `atoll server` processes on 127.0.0.1, which the nemesis
//! kills (SIGKILL) and restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use atoll_client::{Client, ClientOptions};

struct Proc {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The processes of one run.
pub struct Cluster {
    atoll: PathBuf,
    pub addresses: Vec<String>,
    procs: Vec<Proc>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Writes one config per node under `dir` and starts every node.
    /// `testing` lines go into each config's `[testing]` section.
    pub fn start(
        atoll: &Path,
        dir: &Path,
        nodes: usize,
        islands: usize,
        shards: u32,
        testing: &[String],
    ) -> anyhow::Result<Cluster> {
        let addresses: Vec<String> = (0..nodes)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<_, _>>()?;
        let island = |i: usize| format!("island-{}", (b'a' + (i % islands) as u8) as char);
        let initial: String = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "[[cluster.initial_nodes]]\nid = {}\nisland = \"{}\"\naddress = \"{a}\"\n\n",
                    i + 1,
                    island(i)
                )
            })
            .collect();
        let mut procs = Vec::new();
        for (i, address) in addresses.iter().enumerate() {
            let config = dir.join(format!("node-{}.toml", i + 1));
            let text = format!(
                "node_id = {}\nisland = \"{}\"\nlisten = \"{address}\"\ndata_dir = \"{}\"\n\n\
                 [raft]\nheartbeat = \"100ms\"\nelection_timeout_min = \"800ms\"\nelection_timeout_max = \"1600ms\"\n\n\
                 [testing]\n{}\n\n[cluster]\ninitial_shards = {shards}\nreplication_factor = 3\n\n{initial}",
                i + 1,
                island(i),
                dir.join(format!("node-{}", i + 1)).display(),
                testing.join("\n"),
            );
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            procs.push(Proc {
                config,
                log: dir.join(format!("node-{}.log", i + 1)),
                child: None,
            });
        }
        let mut cluster = Cluster {
            atoll: atoll.to_owned(),
            addresses,
            procs,
        };
        for i in 0..nodes {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].child.is_some()
    }

    /// Starts node `i` (again), keeping its data dir.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let proc = &mut self.procs[i];
        if proc.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&proc.log)?;
        let child = Command::new(&self.atoll)
            .args(["server", "--config"])
            .arg(&proc.config)
            .env("ATOLL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.atoll.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.procs[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to node `i`, if it runs.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        if let Some(child) = &self.procs[i].child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()?;
            if !status.success() {
                bail!("kill -{signal} node {} failed", i + 1);
            }
        }
        Ok(())
    }

    /// A client that knows every node.
    pub async fn client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let options = ClientOptions {
            timeout,
            ..Default::default()
        };
        for _ in 0..150 {
            if let Ok(client) = Client::connect_with(self.addresses.clone(), options.clone()).await
            {
                return Ok(client);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no node answered within 30s")
    }

    /// Node logs that report a panic.
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
