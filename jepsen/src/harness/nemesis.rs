//! Nemeses: what goes wrong during a run, and the record of when it did.
//!
//! Every `period` the nemesis draws one of its faults, applies it, and
//! undoes it a `period` later; at the end it heals everything. Each fault
//! is recorded as one [`Event`] with the shard leaders it hit, so the run
//! can check that the faults it asked for really happened.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use atoll_client::Client;
use atoll_jepsen::cluster::Cluster;
use atoll_jepsen::netns::Grudge;
use atoll_jepsen::partition::{self, Shape};
use atoll_proto::v1::{NodeState, ReplicaRole};

use super::etcd::Etcd;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The faults a nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 a random node, the leader of the most shards, the meta
    /// shard's leader, or every node; restart them a period later.
    Kill,
    /// SIGSTOP a random node or the leader of the most shards (longer than
    /// an election timeout when the period is); SIGCONT a period later.
    Pause,
    /// Cut the network: random halves, one node isolated, one island cut
    /// off, a majority ring, or a bridge; heal a period later.
    Partition,
    /// kill -9 every node of one island (a data center's power loss);
    /// restart them a period later.
    IslandLoss,
    /// One node drops 20% of the packets from its peers.
    PacketLoss,
    /// Power loss: kill -9 a majority of the nodes, or all of them, and
    /// drop every write they had not fsynced (their data dirs are on
    /// lazyfs); restart them a period later.
    LoseUnsynced,
    /// One node's disk fails its fsyncs with EIO (losing the unsynced
    /// data, as Linux does) or fills up; a period later the disk is healed
    /// and the node restarted, as an operator would repair it.
    #[value(name = "disk-fault")]
    Disk,
    /// One node's wall clock jumps ahead (up to 5 min), behind (up to 1
    /// min) or runs 1.5x fast (libfaketime; the monotonic clock is left
    /// alone); set right a period later.
    Clock,
    /// Move a replica of a shard the workload uses (its leader's, when
    /// aimed) to a node that holds none, on the same island when one
    /// exists: the cluster adds a learner, catches it up and swaps it in
    /// with one joint change of voters, while the other faults strike. The
    /// controller may move it back to its placement target later. Needs
    /// more nodes than the replication factor.
    Move,
    /// A move as `move`, then, half a second later (while the learner is
    /// added or catching up), kill -9 the move's target node or the meta
    /// shard's leader; restart it a period later. Every move must end
    /// finished or given up, with no joint configuration or learner left.
    #[value(name = "move-crash")]
    MoveCrash,
    /// Split a shard the workload uses (its leader's, when aimed) in the
    /// middle of its hash range: the shard keeps the lower half, a new
    /// shard on the same nodes the upper half, while the other faults
    /// strike. Nothing to undo.
    Split,
    /// Drain a node (the leader of the most shards, when aimed): the
    /// controller moves every replica off it, then removes it; an operator
    /// changing their mind sets it up again a period later, if it is not
    /// removed by then. Needs more nodes than the replication factor on
    /// the node's island's peers.
    Drain,
    /// Start a spare node that joins the running cluster (`cluster.join`)
    /// on the next island in turn: it gets the next node id, then its
    /// share of replicas, moved to it while the other faults strike. The
    /// run starts with 2 spares; nothing to undo.
    Join,
    /// kill -9 a node (as `kill` picks, but never every node) and keep it
    /// down past `cluster.dead_after` (set to [`SILENT_DEAD_AFTER`] in
    /// runs with this fault): the controller repairs around it, the meta
    /// shard shedding its voter by a removal (5 nodes, 4 answering: 3
    /// voters). Restarted with its data a period later, it finds its
    /// replicas moved away and gets its share back (the meta shard grows
    /// to 5 again).
    Silent,
}

/// `cluster.dead_after` in runs with the `silent` fault.
pub const SILENT_DEAD_AFTER: &str = "2s";
/// How long past the fault period a `silent` node stays down, so that it
/// is silent for longer than [`SILENT_DEAD_AFTER`] whatever the period.
const SILENT_FOR: Duration = Duration::from_secs(3);

impl Fault {
    /// Whether the fault cuts traffic, and so needs the nodes in network
    /// namespaces.
    pub fn needs_namespaces(self) -> bool {
        matches!(self, Fault::Partition | Fault::PacketLoss)
    }

    /// Whether the fault needs the nodes started under libfaketime.
    pub fn needs_faketime(self) -> bool {
        self == Fault::Clock
    }

    /// Whether the fault needs the nodes' data dirs on lazyfs.
    pub fn needs_lazyfs(self) -> bool {
        matches!(self, Fault::LoseUnsynced | Fault::Disk)
    }

    /// Whether a run with this fault must hit a shard leader at least once.
    fn must_hit_leaders(self) -> bool {
        !matches!(self, Fault::PacketLoss | Fault::Clock | Fault::Join)
    }

    /// Whether the fault changes the cluster's layout, so the run must end
    /// with the map and every shard's membership agreeing again.
    pub fn moves_replicas(self) -> bool {
        matches!(
            self,
            Fault::Move
                | Fault::MoveCrash
                | Fault::Split
                | Fault::Drain
                | Fault::Join
                | Fault::Silent
        )
    }
}

/// One fault, from when it was applied to when it was undone.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
    /// What exactly, e.g. `kill -9 node 2 (leader of the most shards)`.
    pub what: String,
    /// Shards the workload uses whose leader (as the cluster reported just
    /// before) was on a node the fault took down, or was cut off from a
    /// majority of its shard's replicas.
    pub leaders_hit: Vec<u64>,
}

impl serde::Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{self:?}"))
    }
}

/// How to undo a fault.
enum Undo {
    Restart(Vec<usize>),
    /// Heal node's disk, then restart the node.
    Repair(usize),
    /// Set node's clock right.
    Clock(usize),
    Resume(Vec<usize>),
    Heal,
    /// Set a draining node up again (unless it was removed meanwhile).
    Undrain(usize),
    /// Nothing to undo (a move finishes by itself).
    Nothing,
}

/// How the nemesis asks the system under test who leads what.
pub enum Probe<'a> {
    Atoll(&'a Client),
    Etcd(&'a [Etcd]),
}

/// Who led what just before a fault, for the shards the workload uses.
#[derive(Clone, Debug, Default)]
struct View {
    /// Shard → the node index of its leader.
    leaders: BTreeMap<u64, usize>,
    /// Shard → the node indices of its replicas.
    replicas: BTreeMap<u64, Vec<usize>>,
    /// The node that led the meta shard.
    meta: Option<usize>,
    /// The target nodes of the moves in flight.
    move_targets: Vec<usize>,
}

impl View {
    /// Asks the cluster (an empty view when no node answers), keeping the
    /// leaders of the shards that hold the `relevant` keys now (a split
    /// may have moved a key to a new shard since the run began).
    async fn probe(probe: &Probe<'_>, n: usize, relevant: &[String]) -> View {
        let mut view = View::default();
        match probe {
            Probe::Etcd(stores) => {
                // etcd is one group: shard 0 is the workload's and meta.
                view.leaders = super::etcd::leaders(stores).await;
                view.replicas.insert(0, (0..n).collect());
                view.meta = view.leaders.get(&0).copied();
            }
            Probe::Atoll(client) => {
                let Ok(status) = client.cluster_status().await else {
                    return view;
                };
                let used: BTreeSet<u64> = (status.map.iter())
                    .flat_map(|m| {
                        relevant
                            .iter()
                            .filter_map(|k| m.shard_for_key(k.as_bytes()))
                    })
                    .map(|s| s.id)
                    .collect();
                let index = |node_id: u64| (node_id as usize).saturating_sub(1);
                for shard in status.map.iter().flat_map(|m| &m.shards) {
                    let nodes = shard.replicas.iter().map(|r| index(r.node_id)).collect();
                    view.replicas.insert(shard.id, nodes);
                }
                let moves = status.map.iter().flat_map(|m| &m.moves);
                view.move_targets = moves.map(|m| index(m.to_node)).collect();
                for node in status.nodes.iter().filter_map(|r| r.status.as_ref()) {
                    for replica in &node.replicas {
                        if replica.role == ReplicaRole::Leader as i32 {
                            view.leaders.insert(replica.shard_id, index(node.node_id));
                        }
                    }
                }
                view.meta = view.leaders.get(&0).copied();
                view.leaders.retain(|shard, _| used.contains(shard));
            }
        }
        view
    }

    /// Shards whose leader is on one of `nodes`.
    fn led_from(&self, nodes: &BTreeSet<usize>) -> Vec<u64> {
        self.leaders
            .iter()
            .filter(|(_, node)| nodes.contains(node))
            .map(|(&shard, _)| shard)
            .collect()
    }

    /// Shards whose leader, under `grudge`, reaches fewer than a majority
    /// of its shard's replicas (itself included): it cannot commit.
    fn cut_off(&self, grudge: &Grudge) -> Vec<u64> {
        self.leaders
            .iter()
            .filter(|(shard, &leader)| {
                let replicas = self.replicas.get(shard).map_or(&[][..], Vec::as_slice);
                let reached = replicas
                    .iter()
                    .filter(|&&j| partition::connected(grudge, leader, j))
                    .count();
                reached <= replicas.len() / 2
            })
            .map(|(&shard, _)| shard)
            .collect()
    }

    /// The node that leads the most of the shards.
    fn busiest(&self) -> Option<usize> {
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        for &node in self.leaders.values() {
            *count.entry(node).or_default() += 1;
        }
        count
            .into_iter()
            .max_by_key(|&(_, c)| c)
            .map(|(node, _)| node)
    }
}

fn show(nodes: &BTreeSet<usize>) -> String {
    let names: Vec<String> = nodes.iter().map(|i| (i + 1).to_string()).collect();
    names.join(",")
}

/// Picks the nodes to kill or pause. Aimed (`aim`): the node leading the
/// most of the workload's shards. Otherwise a random node, the meta shard's
/// leader, the target node of a move in flight, or (when `all` is allowed)
/// every node.
fn victims(
    n: usize,
    view: &View,
    aim: bool,
    all: bool,
    rng: &mut impl Rng,
) -> (BTreeSet<usize>, &'static str) {
    if aim {
        if let Some(i) = view.busiest() {
            return (BTreeSet::from([i]), "leader of the most shards");
        }
    }
    let choices = if all { 4 } else { 3 };
    match rng.random_range(0..choices) {
        1 => {
            if let Some(i) = view.meta {
                return (BTreeSet::from([i]), "meta shard leader");
            }
        }
        2 => {
            if let Some(&i) = view.move_targets.choose(rng) {
                return (BTreeSet::from([i]), "target of a move in flight");
            }
        }
        3 => return ((0..n).collect(), "every node"),
        _ => {}
    }
    (BTreeSet::from([rng.random_range(0..n)]), "random node")
}

/// How long after asking for a move `move-crash` kills a node.
const MOVE_CRASH_AFTER: Duration = Duration::from_millis(500);

/// Asks for a move of a replica of a shard the workload uses (its
/// leader's, when aimed) to a node of the same island that holds none of
/// the shard's. Returns what it did, the shards whose leader it moves, and
/// the target node's index if the cluster took the move.
async fn start_move(
    c: &Cluster,
    view: &View,
    aim: bool,
    probe: &Probe<'_>,
    rng: &mut impl Rng,
) -> anyhow::Result<(String, Vec<u64>, Option<usize>)> {
    let Probe::Atoll(client) = probe else {
        anyhow::bail!("moves need an Atoll cluster");
    };
    let n = c.len();
    let mut legal: Vec<(u64, usize, usize)> = Vec::new();
    for &shard in view.leaders.keys() {
        let replicas = view.replicas.get(&shard).cloned().unwrap_or_default();
        for &from in &replicas {
            for to in (0..n).filter(|i| !replicas.contains(i)) {
                if c.islands[to] == c.islands[from] {
                    legal.push((shard, from, to));
                }
            }
        }
    }
    let led: Vec<(u64, usize, usize)> = (legal.iter())
        .filter(|(shard, from, _)| view.leaders.get(shard) == Some(from))
        .copied()
        .collect();
    let pick = match aim {
        true => led.choose(rng).or_else(|| legal.choose(rng)),
        false => legal.choose(rng),
    };
    let Some(&(shard, from, to)) = pick else {
        return Ok((
            "move: no replica can move within its island".into(),
            Vec::new(),
            None,
        ));
    };
    let leader = view.leaders.get(&shard).copied();
    let asked = client
        .move_replica(shard, from as u64 + 1, to as u64 + 1)
        .await;
    let what = format!(
        "move shard {shard} from node {} to node {}",
        from + 1,
        to + 1
    );
    Ok(match asked {
        // A refused move hit nothing.
        Err(e) => (format!("{what}: {e}"), Vec::new(), None),
        Ok(_) if leader == Some(from) => (what, vec![shard], Some(to)),
        Ok(_) => (what, Vec::new(), Some(to)),
    })
}

/// Applies one fault; returns what it did, the shards whose leader it took
/// down or cut off, and how to undo it.
async fn inject(
    fault: Fault,
    cluster: &Mutex<Cluster>,
    view: &View,
    aim: bool,
    probe: &Probe<'_>,
) -> anyhow::Result<(String, Vec<u64>, Undo)> {
    let mut c = cluster.lock().await;
    let n = c.len();
    let mut rng = rand::rng();
    Ok(match fault {
        Fault::Kill | Fault::Silent => {
            let silent = fault == Fault::Silent;
            let (nodes, why) = victims(n, view, aim, !silent, &mut rng);
            for &i in &nodes {
                c.kill(i)?;
            }
            let mut what = format!("kill -9 node {} ({why})", show(&nodes));
            if silent {
                // Down for longer than dead_after: the meta leader repairs
                // around it while it is gone.
                drop(c);
                tokio::time::sleep(SILENT_FOR).await;
                what += &format!(
                    ", down {} s + a period (dead_after {SILENT_DEAD_AFTER})",
                    SILENT_FOR.as_secs()
                );
            }
            (
                what,
                view.led_from(&nodes),
                Undo::Restart(nodes.into_iter().collect()),
            )
        }
        Fault::Pause => {
            let (nodes, why) = victims(n, view, aim, false, &mut rng);
            for &i in &nodes {
                c.signal(i, "STOP")?;
            }
            let what = format!("pause node {} ({why})", show(&nodes));
            (
                what,
                view.led_from(&nodes),
                Undo::Resume(nodes.into_iter().collect()),
            )
        }
        Fault::LoseUnsynced => {
            let mut nodes: Vec<usize> = (0..n).collect();
            nodes.shuffle(&mut rng);
            let count = if rng.random_bool(0.5) { n } else { n / 2 + 1 };
            let nodes: BTreeSet<usize> = nodes.into_iter().take(count).collect();
            let mut lost = 0;
            for &i in &nodes {
                lost += c.crash(i)?;
            }
            let what = format!(
                "power loss on node {}: {} KiB not fsynced dropped",
                show(&nodes),
                lost / 1024
            );
            (
                what,
                view.led_from(&nodes),
                Undo::Restart(nodes.into_iter().collect()),
            )
        }
        Fault::Disk => {
            let (nodes, why) = victims(n, view, aim, false, &mut rng);
            let i = nodes.first().copied().unwrap_or(0);
            let (command, what) = if rng.random_bool(0.5) {
                ("fail-fsync", "fsyncs fail with EIO")
            } else {
                ("full", "disk full")
            };
            c.disk(i, command)?;
            (
                format!("node {} ({why}): {what}", i + 1),
                view.led_from(&nodes),
                Undo::Repair(i),
            )
        }
        Fault::Clock => {
            let (nodes, why) = victims(n, view, aim, false, &mut rng);
            let i = nodes.first().copied().unwrap_or(0);
            let clock = match rng.random_range(0..3) {
                0 => format!("+{}s", rng.random_range(10..=300)),
                1 => format!("-{}s", rng.random_range(10..=60)),
                _ => "+0 x1.5".to_string(),
            };
            c.set_clock(i, &clock)?;
            (
                format!("node {} ({why}): wall clock {clock}", i + 1),
                view.led_from(&nodes),
                Undo::Clock(i),
            )
        }
        Fault::IslandLoss => {
            let node = match view.busiest() {
                Some(i) if aim => i,
                _ => rng.random_range(0..n),
            };
            let island = c.islands[node].clone();
            let nodes: BTreeSet<usize> = (0..n).filter(|&i| c.islands[i] == island).collect();
            for &i in &nodes {
                c.kill(i)?;
            }
            let what = format!("lose island {island}: kill -9 node {}", show(&nodes));
            (
                what,
                view.led_from(&nodes),
                Undo::Restart(nodes.into_iter().collect()),
            )
        }
        Fault::Partition => {
            let net = c
                .net()
                .ok_or_else(|| anyhow::anyhow!("partitions need the nodes in namespaces"))?;
            // Draw again (a few times, any shape) until a leader is cut off:
            // a partition that cuts off only followers proves little.
            let mut draw = || {
                let shape = *Shape::ALL.choose(&mut rng).unwrap_or(&Shape::Halves);
                partition::draw(shape, &c.islands, &mut rng)
            };
            let mut cut = draw();
            for _ in 0..30 {
                if !view.cut_off(&cut.grudge).is_empty() {
                    break;
                }
                cut = draw();
            }
            net.apply(&cut.grudge)?;
            let minority = partition::minority(&cut.grudge, n);
            let what = format!(
                "partition: {} (minority: {{{}}})",
                cut.description,
                show(&minority)
            );
            (what, view.cut_off(&cut.grudge), Undo::Heal)
        }
        Fault::Move => {
            let (what, hit, _) = start_move(&c, view, aim, probe, &mut rng).await?;
            (what, hit, Undo::Nothing)
        }
        Fault::MoveCrash => {
            let (what, hit, started) = start_move(&c, view, aim, probe, &mut rng).await?;
            let Some(to) = started else {
                return Ok((what, hit, Undo::Nothing));
            };
            // Mid-move: the learner is being added or catching up.
            tokio::time::sleep(MOVE_CRASH_AFTER).await;
            let (victim, why) = match (rng.random_bool(0.5), view.meta) {
                (true, Some(meta)) => (meta, "the meta shard's leader"),
                _ => (to, "the move's target"),
            };
            c.kill(victim)?;
            let what = format!("{what}, then kill -9 node {} ({why})", victim + 1);
            let mut hit = hit;
            hit.extend(view.led_from(&BTreeSet::from([victim])));
            hit.sort_unstable();
            hit.dedup();
            (what, hit, Undo::Restart(vec![victim]))
        }
        Fault::Split => {
            let Probe::Atoll(client) = probe else {
                anyhow::bail!("splits need an Atoll cluster");
            };
            let shards: Vec<u64> = view.leaders.keys().copied().collect();
            let Some(&shard) = shards.choose(&mut rng) else {
                return Ok((
                    "split: no shard leader known".into(),
                    Vec::new(),
                    Undo::Nothing,
                ));
            };
            match client.split_shard(shard, 0).await {
                Ok(answer) => (
                    format!(
                        "split shard {shard} at {:#018x} into shard {}",
                        answer.at, answer.child_shard_id
                    ),
                    vec![shard],
                    Undo::Nothing,
                ),
                // Refused (a move or split of it in progress): hit nothing.
                Err(e) => (
                    format!("split shard {shard}: {e}"),
                    Vec::new(),
                    Undo::Nothing,
                ),
            }
        }
        Fault::Drain => {
            let Probe::Atoll(client) = probe else {
                anyhow::bail!("drains need an Atoll cluster");
            };
            let i = match view.busiest() {
                Some(i) if aim => i,
                _ => rng.random_range(0..n),
            };
            let asked = client
                .set_node_state(i as u64 + 1, NodeState::Draining, false)
                .await;
            match asked {
                Ok(_) => (
                    format!("drain node {}", i + 1),
                    view.led_from(&BTreeSet::from([i])),
                    Undo::Undrain(i),
                ),
                // Refused (nowhere to put its replicas, or removed): hit
                // nothing.
                Err(e) => (
                    format!("drain node {}: {e}", i + 1),
                    Vec::new(),
                    Undo::Nothing,
                ),
            }
        }
        Fault::Join => match c.join_spare()? {
            Some((i, island)) => (
                format!("node {} joins on {island}", i + 1),
                Vec::new(),
                Undo::Nothing,
            ),
            None => ("join: no spare node left".into(), Vec::new(), Undo::Nothing),
        },
        Fault::PacketLoss => {
            let i = rng.random_range(0..n);
            let net = c
                .net()
                .ok_or_else(|| anyhow::anyhow!("packet loss needs the nodes in namespaces"))?;
            net.lossy(i, 0.2)?;
            (
                format!("node {} drops 20% of peer packets", i + 1),
                Vec::new(),
                Undo::Heal,
            )
        }
    })
}

async fn undo(cluster: &Mutex<Cluster>, probe: &Probe<'_>, undo: Undo) -> anyhow::Result<()> {
    if let (Undo::Undrain(i), Probe::Atoll(client)) = (&undo, probe) {
        // Refused once the node is removed: a drain that finished stays.
        let _ = client
            .set_node_state(*i as u64 + 1, NodeState::Up, false)
            .await;
        return Ok(());
    }
    let mut c = cluster.lock().await;
    match undo {
        Undo::Restart(nodes) => {
            for i in nodes {
                c.start_node(i)?;
            }
        }
        Undo::Repair(i) => {
            c.disk(i, "heal")?;
            c.kill(i)?;
            c.start_node(i)?;
        }
        Undo::Clock(i) => c.set_clock(i, "+0")?,
        Undo::Resume(nodes) => {
            for i in nodes {
                c.signal(i, "CONT")?;
            }
        }
        Undo::Heal => {
            if let Some(net) = c.net() {
                net.heal()?;
            }
        }
        Undo::Nothing | Undo::Undrain(_) => {}
    }
    Ok(())
}

/// Every `period`, applies the next of `faults` (in turn) and undoes it
/// `period` later, until `until`; then heals everything. Every other round
/// of `faults` (the first included) aims at the leaders of the shards that
/// hold the `relevant` keys (those the workload uses); the others pick at
/// random. Returns the events.
pub async fn run(
    faults: &[Fault],
    cluster: &Mutex<Cluster>,
    probe: Probe<'_>,
    relevant: &[String],
    t0: Instant,
    until: Instant,
    period: Duration,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let at = || t0.elapsed().as_millis() as u64;
    for (count, &fault) in faults.iter().cycle().enumerate() {
        if Instant::now() + period * 2 >= until {
            break;
        }
        tokio::time::sleep(period).await;
        let n = cluster.lock().await.len();
        let view = View::probe(&probe, n, relevant).await;
        let start_ms = at();
        // Aimed in every other round of the list, the first included, so
        // each fault is aimed on its first use however many there are.
        let aim = (count / faults.len().max(1)).is_multiple_of(2);
        let (what, leaders_hit, how) = inject(fault, cluster, &view, aim, &probe).await?;
        tokio::time::sleep(period).await;
        undo(cluster, &probe, how).await?;
        events.push(Event {
            start_ms,
            end_ms: at(),
            fault,
            what,
            leaders_hit,
        });
    }
    let mut c = cluster.lock().await;
    for i in 0..c.len() {
        if !c.is_running(i) {
            c.start_node(i)?;
        }
        c.signal(i, "CONT")?;
    }
    if let Some(net) = c.net() {
        net.heal()?;
    }
    Ok(events)
}

/// What the run asked for and did not get: a fault that never ran, or never
/// hit a shard leader.
pub fn missed(faults: &[Fault], events: &[Event]) -> Vec<String> {
    let mut missed = Vec::new();
    for &fault in faults.iter().collect::<BTreeSet<_>>() {
        let ran: Vec<_> = events.iter().filter(|e| e.fault == fault).collect();
        if ran.is_empty() {
            missed.push(format!(
                "{fault:?} never ran (run longer or shorten the period)"
            ));
        } else if fault.must_hit_leaders() && ran.iter().all(|e| e.leaders_hit.is_empty()) {
            missed.push(format!("{fault:?} never hit a shard leader"));
        }
    }
    missed
}
