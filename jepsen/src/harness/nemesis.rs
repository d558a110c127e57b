//! Nemeses: what goes wrong during a run, and the record of when it did.

use std::time::Duration;

use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::cluster::Cluster;

/// One fault event.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// Kill -9 a random node every `period`, restart it `period` later, until
/// `until`; then restart every node. Returns the events.
pub async fn kill_restart(
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
            c.kill(i)?;
            i
        };
        events.push(Event {
            at_ms: at(),
            what: format!("kill -9 node {}", victim + 1),
        });
        tokio::time::sleep(period).await;
        cluster.lock().await.start_node(victim)?;
        events.push(Event {
            at_ms: at(),
            what: format!("restart node {}", victim + 1),
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
