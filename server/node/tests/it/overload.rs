//! Bounded queues under faults, on real processes: a paused follower and an
//! isolated leader must not make a leader's memory grow with the load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_client::Client;
use atoll_jepsen::cluster::{Cluster, ClusterSpec, Network, FAST_RAFT};
use atoll_jepsen::partition;
use tokio::time::Instant;

use crate::read_pages::sample_peaks;

const WRITERS: usize = 64;
const VALUE_BYTES: usize = 64 << 10;
const MIB: u64 = 1 << 20;

fn start(dir: &std::path::Path, network: Network) -> Cluster {
    let spec = ClusterSpec {
        islands: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
        shards: 1,
        testing: vec![],
        raft: FAST_RAFT.map(String::from).to_vec(),
        storage: vec![],
        network,
        lazyfs: None,
        faketime: None,
        spares: 0,
        replication_factor: 3,
        cluster: vec![],
    };
    Cluster::start(&crate::processes::atoll_bin(), dir, &spec).unwrap()
}

/// Whether a node's status says it leads the data shard (shard 1).
fn leads(status: &atoll_proto::v1::NodeStatusResponse) -> bool {
    (status.replicas.iter())
        .any(|r| r.shard_id == 1 && r.role == atoll_proto::v1::ReplicaRole::Leader as i32)
}

/// The indexes of the nodes that say they lead the data shard; a node cut
/// off from the others may still say so.
async fn data_leaders(client: &Client) -> Vec<usize> {
    let Ok(status) = client.cluster_status().await else {
        return Vec::new();
    };
    status
        .nodes
        .iter()
        .filter(|n| n.status.as_ref().is_some_and(leads))
        .map(|n| n.node_id as usize - 1)
        .collect()
}

/// The nodes among `nodes` that say they lead the data shard, each asked
/// itself (a status gathered by one node misses the nodes it cannot reach).
async fn leaders_among(cluster: &Cluster, nodes: &[usize]) -> Vec<usize> {
    use atoll_proto::v1::cluster_client::ClusterClient;
    use atoll_proto::v1::NodeStatusRequest;

    let mut leaders = Vec::new();
    for &i in nodes {
        let address = format!("http://{}", cluster.client_addresses()[i]);
        let Ok(mut node) = ClusterClient::connect(address).await else {
            continue;
        };
        if let Ok(status) = node.node_status(NodeStatusRequest {}).await {
            if leads(status.get_ref()) {
                leaders.push(i);
            }
        }
    }
    leaders
}

/// The index of the node leading the data shard.
async fn data_leader(client: &Client) -> usize {
    for _ in 0..300 {
        if let [leader] = data_leaders(client).await[..] {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the data shard has no single leader");
}

/// Writers putting 64 KiB values until stopped; counts their successes.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Client) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..WRITERS)
            .map(|w| {
                let (client, stop) = (client.clone(), stop.clone());
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let value = vec![b'v'; VALUE_BYTES];
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match client.put(format!("w{w}-{}", n % 64), &value).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The peak RSS of `pid` over `time`, and the writes that succeeded in
/// each tenth of it.
async fn watch(pid: u32, load: &Load, time: Duration) -> (u64, Vec<u64>) {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_peaks(vec![pid], done.clone());
    let mut per_tenth = Vec::new();
    let start = Instant::now();
    let mut last = load.ok();
    while start.elapsed() < time {
        tokio::time::sleep(time / 10).await;
        let now = load.ok();
        per_tenth.push(now - last);
        last = now;
    }
    done.store(true, Ordering::SeqCst);
    (sampler.join().unwrap()[0], per_tenth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_does_not_grow_the_leaders_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), Network::Loopback);
    let client = cluster.client(Duration::from_secs(20), None).await.unwrap();
    let leader = data_leader(&client).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let pid = cluster.pid(leader).unwrap();

    // The healthy steady state (memtables filled, caches warm) is the base.
    let load = Load::start(&client);
    let (base, _) = watch(pid, &load, Duration::from_secs(20)).await;
    cluster.signal(follower, "STOP").unwrap();
    let (peak, per_tenth) = watch(pid, &load, Duration::from_secs(60)).await;
    cluster.signal(follower, "CONT").unwrap();
    let (ok, failed) = load.stop().await;
    eprintln!(
        "leader RSS {} MiB healthy, {} MiB peak with a follower paused 60 s; \
         writes ok {ok}, failed {failed}, ok per 6 s {per_tenth:?}",
        base / MIB,
        peak / MIB
    );
    assert!(
        per_tenth.iter().all(|&n| n > 0),
        "writes succeed on the majority throughout: {per_tenth:?}"
    );
    assert!(
        peak < base + 200 * MIB,
        "the leader's RSS grew by {} MiB",
        (peak - base) / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_fails_writes_fast_and_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), Network::Namespaces);
    let client = cluster.client(Duration::from_secs(10), None).await.unwrap();
    let leader = data_leader(&client).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let pid = cluster.pid(leader).unwrap();

    let load = Load::start(&client);
    let (base, _) = watch(pid, &load, Duration::from_secs(15)).await;
    let net = cluster.net().expect("namespaces");
    net.apply(&partition::complete(&[vec![leader], others.clone()]))
        .unwrap();
    let (peak, per_tenth) = watch(pid, &load, Duration::from_secs(30)).await;
    let mut moved = Vec::new();
    for _ in 0..50 {
        moved = leaders_among(&cluster, &others).await;
        if !moved.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    net.heal().unwrap();
    let (ok, failed) = load.stop().await;
    eprintln!(
        "isolated leader RSS {} MiB before, {} MiB peak over 30 s; \
         writes ok {ok}, failed {failed}, ok per 3 s {per_tenth:?}",
        base / MIB,
        peak / MIB
    );
    assert!(
        !moved.is_empty(),
        "the majority elected another leader among {others:?}"
    );
    // The majority elects a leader within seconds; the clients find it.
    assert!(
        per_tenth[per_tenth.len() / 2..].iter().all(|&n| n > 0),
        "clients moved on to the new leader: {per_tenth:?}"
    );
    assert!(
        peak < base + 64 * MIB,
        "the isolated leader's RSS grew by {} MiB",
        (peak - base) / MIB
    );
}
