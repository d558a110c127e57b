//! Nemeses: what goes wrong during a run, and the record of when it did.

use std::time::Duration;

use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use atoll_jepsen::cluster::Cluster;

/// One fault event.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// What a nemesis does to one node, and how it undoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then start it again.
    Kill,
    /// SIGSTOP (longer than an election timeout when `period` is), then
    /// SIGCONT.
    Pause,
}

/// Every `period`, apply `fault` to a random node and undo it `period`
/// later, until `until`; then heal every node. Returns the events.
pub async fn run(
    fault: Fault,
    cluster: &Mutex<Cluster>,
    t0: Instant,
    until: Instant,
    period: Duration,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let at = || t0.elapsed().as_millis() as u64;
    while Instant::now() + period * 2 < until {
        tokio::time::sleep(period).await;
        let victim = {
            let mut c = cluster.lock().await;
            let i = rand::rng().random_range(0..c.len());
            match fault {
                Fault::Kill => c.kill(i)?,
                Fault::Pause => c.signal(i, "STOP")?,
            }
            i
        };
        let (did, undid) = match fault {
            Fault::Kill => ("kill -9", "restart"),
            Fault::Pause => ("pause (SIGSTOP)", "resume (SIGCONT)"),
        };
        events.push(Event {
            at_ms: at(),
            what: format!("{did} node {}", victim + 1),
        });
        tokio::time::sleep(period).await;
        {
            let mut c = cluster.lock().await;
            match fault {
                Fault::Kill => c.start_node(victim)?,
                Fault::Pause => c.signal(victim, "CONT")?,
            }
        }
        events.push(Event {
            at_ms: at(),
            what: format!("{undid} node {}", victim + 1),
        });
    }
    let mut c = cluster.lock().await;
    for i in 0..c.len() {
        if !c.is_running(i) {
            c.start_node(i)?;
            events.push(Event {
                at_ms: at(),
                what: format!("heal: restart node {}", i + 1),
            });
        }
    }
    Ok(events)
}
