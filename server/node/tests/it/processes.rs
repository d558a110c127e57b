//! End-to-end tests on the real binaries: `atoll server` processes, killed
//! with SIGKILL, and `atollctl`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_client::{Client, Consistency, Error};
use atoll_jepsen::cluster::{Cluster, ClusterSpec, FAST_RAFT};

/// `atoll server` processes in a temp dir (see `atoll_jepsen::cluster`).
pub(crate) struct ProcCluster {
    pub(crate) cluster: Cluster,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn atoll_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_atoll"))
}

pub(crate) fn atollctl_bin() -> PathBuf {
    let path = atoll_bin().with_file_name("atollctl");
    assert!(
        path.exists(),
        "{} is missing: run the whole workspace's tests (`cargo test --workspace`)",
        path.display()
    );
    path
}

impl ProcCluster {
    pub(crate) fn start(islands: &[&str], shards: u32) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let spec = ClusterSpec {
            islands: islands.iter().map(|s| s.to_string()).collect(),
            shards,
            testing: vec![],
            raft: FAST_RAFT.map(String::from).to_vec(),
            storage: vec![],
            network: Default::default(),
            lazyfs: None,
            faketime: None,
            spares: 0,
            replication_factor: 3,
            cluster: vec![],
        };
        let cluster = Cluster::start(&atoll_bin(), dir.path(), &spec).unwrap();
        ProcCluster { cluster, dir }
    }

    pub(crate) async fn client(&self, island: Option<String>) -> Client {
        match self.cluster.client(Duration::from_secs(20), island).await {
            Ok(client) => client,
            Err(e) => panic!(
                "no node answered ({e}); logs in {}",
                self.dir.path().display()
            ),
        }
    }

    /// Waits until every node answers and every shard has a leader.
    pub(crate) async fn wait_healthy(&self, client: &Client) {
        for _ in 0..300 {
            if let Ok(status) = client.cluster_status().await {
                let all_up = status.nodes.iter().all(|n| n.status.is_some());
                let led = leader_counts(&status);
                let shards = status.map.as_ref().map_or(0, |m| m.shards.len() + 1);
                if all_up && led.values().sum::<usize>() == shards {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "cluster did not become healthy; logs in {}",
            self.dir.path().display()
        );
    }
}

/// Node id -> number of shards (meta included) it leads.
fn leader_counts(status: &atoll_client::StatusResponse) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for report in &status.nodes {
        if let Some(s) = &report.status {
            let led = s
                .replicas
                .iter()
                .filter(|r| r.role == atoll_proto::v1::ReplicaRole::Leader as i32)
                .count();
            counts.insert(report.node_id, led);
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_of_the_busiest_leader_loses_no_acknowledged_write() {
    let mut cluster = ProcCluster::start(&["island-a", "island-b", "island-c"], 8);
    let client = cluster.client(None).await;
    cluster.wait_healthy(&client).await;

    const WRITERS: usize = 16;
    const PER_WRITER: usize = 625;
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let ambiguous = Arc::new(Mutex::new(0usize));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, acked, ambiguous) = (client.clone(), acked.clone(), ambiguous.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let (key, value) = (format!("w{w:02}-{i:04}"), format!("value-{w}-{i}"));
                match client.put(&key, &value).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Err(Error::Ambiguous(_)) => *ambiguous.lock().unwrap() += 1,
                    Err(e) => panic!("write {key} failed: {e}"),
                }
            }
        }));
    }
    // Mid-run: kill -9 the node that leads the most shards.
    while acked.lock().unwrap().len() < 3_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = client.cluster_status().await.unwrap();
    let counts = leader_counts(&status);
    let (&victim_id, &led) = counts.iter().max_by_key(|(id, n)| (**n, **id)).unwrap();
    let victim = victim_id as usize - 1;
    cluster.cluster.kill(victim).unwrap();
    let acked_at_kill = acked.lock().unwrap().len();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total = acked.len() + *ambiguous.lock().unwrap();
    assert_eq!(total, WRITERS * PER_WRITER);
    assert!(
        acked.len() > acked_at_kill,
        "writes resumed after the election (node {victim_id} led {led} shards)"
    );

    // Every acknowledged write is readable.
    for (key, value) in &acked {
        let kv = client
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
        assert_eq!(kv.value, value.as_bytes(), "{key}");
    }

    // The killed node restarts, catches up, and its stale reads match.
    cluster.cluster.start_node(victim).unwrap();
    cluster.wait_healthy(&client).await;
    let local = cluster
        .client(Some(cluster.cluster.islands[victim].clone()))
        .await;
    let mut pending: Vec<(&String, &String)> = acked.iter().collect();
    for _ in 0..600 {
        let mut still = Vec::new();
        for (key, value) in pending {
            match local.get_with(key, Consistency::Stale).await {
                Ok(Some(kv)) if kv.value == value.as_bytes() => {}
                _ => still.push((key, value)),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pending.is_empty(),
        "{} keys differ on the restarted node",
        pending.len()
    );
    let logs = cluster.cluster.logs();
    assert!(!logs.contains("panicked"), "a node panicked:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_json_shows_three_islands_per_shard() {
    let cluster = ProcCluster::start(&["east", "east", "west", "west", "north"], 16);
    let client = cluster.client(None).await;
    cluster.wait_healthy(&client).await;
    // atollctl exits 1 while a shard is between leaders; a busy machine can
    // cause a re-election, so give it a few tries.
    let endpoints = cluster.cluster.addresses.join(",");
    let mut output = None;
    for _ in 0..50 {
        let out = Command::new(atollctl_bin())
            .args(["cluster", "status", "-o", "json", "--endpoints", &endpoints])
            .output()
            .unwrap();
        let done = out.status.success();
        output = Some(out);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "atollctl failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 16);
    for shard in shards {
        let replicas = shard["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3, "{shard}");
        assert_eq!(shard["islands"], 3, "{shard}");
        let islands: std::collections::HashSet<&str> = replicas
            .iter()
            .map(|r| r["island"].as_str().unwrap())
            .collect();
        assert_eq!(islands.len(), 3);
        assert!(shard["leader_node"].is_u64(), "{shard}");
    }
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    for node in nodes {
        // Every node has synced its log (each runs Raft groups), and says
        // how long its syncs took.
        assert!(node["wal_syncs"].as_u64().unwrap() > 0, "{node}");
        assert!(node["mean_sync_ms"].as_f64().unwrap() > 0.0, "{node}");
        assert!(node["slow_syncs"].is_u64(), "{node}");
    }
}

#[test]
fn the_example_config_passes_config_check() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/atoll.example.toml");
    let output = Command::new(atoll_bin())
        .args(["server", "--config-check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), "node_id = 0\n").unwrap();
    let output = Command::new(atoll_bin())
        .args(["server", "--config-check", "--config"])
        .arg(broken.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "node_id 0 must be rejected");
}

/// A base port whose next two ports are free too.
fn free_port_run() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base < 65000
            && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

fn atollctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(atollctl_bin())
        .args(args)
        .args(["--endpoints", endpoints])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn atoll_dev_starts_three_islands_that_atollctl_can_use() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let base = free_port_run();
    let mut dev = Command::new(atoll_bin())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("ATOLL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout to the end, as a terminal would.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("client endpoints:") {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let endpoints = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("atoll dev prints its client endpoints");
    assert_eq!(endpoints.split(',').count(), 3);

    let (ok, out) = atollctl(&endpoints, &["put", "k", "v"]);
    assert!(ok, "{out}");
    let (ok, out) = atollctl(&endpoints, &["get", "k"]);
    assert!(ok && out.trim() == "v", "{out}");
    let (ok, out) = atollctl(
        &endpoints,
        &["cas", "k", "--expect-value", "v", "--new", "w"],
    );
    assert!(ok, "{out}");
    let (ok, out) = atollctl(
        &endpoints,
        &["cas", "k", "--expect-version", "0", "--new", "x"],
    );
    assert!(!ok && out.contains("compare failed"), "{out}");
    let (ok, _) = atollctl(&endpoints, &["put", "{t}:b", "2"]);
    assert!(ok);
    let (ok, _) = atollctl(&endpoints, &["put", "{t}:a", "1"]);
    assert!(ok);
    let (ok, out) = atollctl(&endpoints, &["scan", "{t}:"]);
    assert!(ok && out.find("{t}:a") < out.find("{t}:b"), "{out}");
    let mut status = (false, String::new());
    for _ in 0..50 {
        status = atollctl(&endpoints, &["cluster", "status"]);
        if status.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(status.0, "{}", status.1);
    for island in ["island-a", "island-b", "island-c"] {
        assert!(status.1.contains(island), "{}", status.1);
    }
    let (ok, _) = atollctl(&endpoints, &["get", "missing"]);
    assert!(!ok, "a missing key exits 1");
    let (ok, out) = atollctl(&endpoints, &["placement", "show", "-o", "json"]);
    assert!(ok, "{out}");
    let shares: serde_json::Value = serde_json::from_str(&out).expect("placement show JSON");
    let nodes = shares["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{out}");
    for node in nodes {
        // One node per island: each holds every shard, all of its island's.
        assert_eq!(node["replicas"], nodes[0]["replicas"], "{out}");
        assert!(node["replicas"].as_u64() > Some(0), "{out}");
        assert_eq!(node["replica_share"].as_f64(), Some(1.0), "{out}");
        assert_eq!(node["capacity_share"].as_f64(), Some(1.0), "{out}");
    }
    assert_eq!(shares["islands"].as_array().map(Vec::len), Some(3), "{out}");

    Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    let exit = dev.wait().unwrap();
    assert!(
        exit.success(),
        "atoll dev stops cleanly on SIGTERM: {exit:?}"
    );
}

/// A child process killed when dropped, so a failing test leaves none.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The node of `atollctl node list -o json` with id `id`.
fn listed_node(endpoints: &str, id: u64) -> Option<serde_json::Value> {
    let (ok, text) = atollctl(endpoints, &["node", "list", "-o", "json"]);
    if !ok {
        return None;
    }
    let start = text.find('[')?;
    let nodes: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text[start..])
        .into_iter()
        .next()?
        .ok()?;
    nodes.into_iter().find(|n| n["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_server_join_and_atollctl_node_commands() {
    let cluster = ProcCluster::start(&["a", "b", "c"], 4);
    let client = cluster.client(None).await;
    cluster.wait_healthy(&client).await;
    let endpoints = cluster.cluster.addresses.join(",");
    let address = format!("127.0.0.1:{}", free_port());
    let data_dir = cluster.dir.path().join("joined");
    let log = cluster.dir.path().join("joined.log");
    let join = |log: &std::path::Path| {
        Command::new(atoll_bin())
            .args(["server", "--island", "d", "--listen", &address])
            .args(["--capacity", "50", "--join", &cluster.cluster.addresses[1]])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("ATOLL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let joined = KillOnDrop(join(&log));
    let mut up = None;
    for _ in 0..150 {
        up = listed_node(&endpoints, 4).filter(|n| n["state"] == "up");
        if up.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node = up.unwrap_or_else(|| {
        panic!(
            "node 4 never listed as up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(node["island"], "d");
    assert_eq!(node["address"], address.as_str());
    assert_eq!(node["capacity"], 50);
    assert_eq!(node["reachable"], true);

    let (ok, text) = atollctl(&endpoints, &["node", "set-capacity", "4", "70"]);
    assert!(ok, "{text}");
    // `node list` answers from the map of the node it asks, which shows a
    // change once that node has applied it.
    let listed = |field: &str, value: serde_json::Value| {
        (0..50).any(|_| {
            let found = listed_node(&endpoints, 4).is_some_and(|n| n[field] == value);
            if !found {
                std::thread::sleep(Duration::from_millis(100));
            }
            found
        })
    };
    assert!(listed("capacity", 70.into()), "capacity 70 never listed");
    // Only a drained node is removed without --dead; the refusal says why.
    let (ok, text) = atollctl(&endpoints, &["node", "remove", "4"]);
    assert!(!ok && text.contains("refused"), "{text}");
    let (ok, text) = atollctl(&endpoints, &["node", "remove", "4", "--dead"]);
    assert!(ok, "{text}");
    assert!(
        listed("state", "removed".into()),
        "node 4 never listed as removed"
    );

    // `shard split` splits a shard in the middle; `shard list` shows the
    // new shard once the split has finished. A shard being moved is not
    // split (node 4's replicas are being repaired elsewhere): wait for the
    // moves to end first.
    let no_moves = (0..300).any(|_| {
        let (ok, text) = atollctl(&endpoints, &["moves", "list", "-o", "json"]);
        let repaired = listed_node(&endpoints, 4).is_some_and(|n| n["replicas"] == 0);
        let idle = ok && text.trim() == "[]" && repaired;
        if !idle {
            std::thread::sleep(Duration::from_millis(200));
        }
        idle
    });
    assert!(no_moves, "the repairs after node 4's removal never ended");
    let (ok, text) = atollctl(&endpoints, &["shard", "split", "1"]);
    assert!(ok && text.contains("split started"), "{text}");
    let (ok, text) = atollctl(&endpoints, &["shard", "split", "0", "--at", "0x10"]);
    assert!(!ok && text.contains("not a data shard"), "{text}");
    let split = (0..100).any(|_| {
        let (ok, text) = atollctl(&endpoints, &["shard", "list", "-o", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let done = ok && rows.len() == 5 && rows.iter().all(|r| r["change"] == "");
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(split, "shard list never showed 5 shards");

    // Once it has seen its removal, the node refuses to start again.
    let mut retired = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("this node is removed from the cluster") {
            retired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(retired, "the removed node never noticed");
    drop(joined);
    let again_log = cluster.dir.path().join("joined-again.log");
    let mut again = KillOnDrop(join(&again_log));
    let status = again.0.wait().unwrap();
    let text = std::fs::read_to_string(&again_log).unwrap();
    assert!(!status.success(), "a removed node started again: {text}");
    assert!(text.contains("is removed from the cluster"), "{text}");
}
