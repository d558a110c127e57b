//! When a replica builds a snapshot (docs/design/elastic.md, "Snapshots
//! that scale").
//!
//! openraft's own policy counts entries: a snapshot every N entries. But a
//! snapshot's cost is the size of the state, and what it buys is the log it
//! lets go of. On a 2 GiB shard taking small writes, a snapshot every
//! 20,000 entries rewrites 2 GiB for every few MiB of log. So a replica
//! builds one when both hold:
//!
//! - at least `snapshot_after_entries` entries applied since the last one
//!   (as before), and
//! - the log since the last one takes at least a quarter of the bytes of
//!   the state (RocksDB's estimates of both ranges).
//!
//! So building costs at most about four times the bytes written, and the
//! log beyond those entries stays under about a quarter of the state. A
//! small shard still builds every `snapshot_after_entries` entries.
//!
//! One more reason overrides both: after a split, the replica builds a
//! snapshot and purges its log up to the split, so that a replica joining
//! the shard later starts from a snapshot of the narrowed range and never
//! replays entries applied to the wider one ([`OwnedRange::since`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use atoll_proto::ReplicaId;
use atoll_storage::{keys, Cf, Engine, EngineError};
use openraft::async_runtime::WatchReceiver;

use crate::state_machine::{OwnedRange, ShardKind};
use crate::types::{Raft, ServerState};

/// How often a replica looks whether a snapshot is due.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a snapshot asked for to purge the log past a range change may
/// take before it is asked for again.
const RETRY_FLOOR: Duration = Duration::from_secs(60);

/// The log, as a fraction of the state, that makes a snapshot worth its
/// cost: one quarter.
const LOG_TO_STATE: u64 = 4;

/// Whether a snapshot is due, given the entries and log bytes since the
/// last one and the state's bytes.
pub fn due(entries_since: u64, log_bytes: u64, state_bytes: u64, after_entries: u64) -> bool {
    entries_since >= after_entries && log_bytes.saturating_mul(LOG_TO_STATE) >= state_bytes
}

/// Bytes of `replica`'s log in `[from, to]` and of its state.
fn sizes(
    engine: &dyn Engine,
    replica: ReplicaId,
    kind: ShardKind,
    (from, to): (u64, u64),
) -> Result<(u64, u64), EngineError> {
    let log = engine.approximate_bytes(
        Cf::RaftLog,
        &keys::log_key(replica, from),
        &keys::log_key(replica, to.saturating_add(1)),
    )?;
    let state = match kind {
        ShardKind::Data { first, last } => {
            let (start, end) = keys::data_range(first, last);
            engine.approximate_bytes(Cf::Data, &start, &end)?
        }
        ShardKind::Meta => 0,
    };
    Ok((log, state))
}

/// Runs the policy for one replica until its Raft shuts down. Holds the
/// engine weakly, so a stopping node is never kept from closing it.
pub(crate) fn spawn(
    raft: Raft,
    engine: &Arc<dyn Engine>,
    replica: ReplicaId,
    owned: Arc<OwnedRange>,
    after_entries: u64,
) {
    let engine: Weak<dyn Engine> = Arc::downgrade(engine);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The floor a snapshot was last asked for, and when.
        let mut asked: Option<(u64, tokio::time::Instant)> = None;
        loop {
            tick.tick().await;
            // Read in place: cloning the metrics each second, for every
            // replica of the node, would copy their replication maps.
            let (state, last, applied, purged) = {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                let index = |id: Option<&crate::types::LogId>| id.map_or(0, |id| id.index);
                (
                    m.state,
                    index(m.snapshot.as_ref()),
                    index(m.last_applied.as_ref()),
                    index(m.purged.as_ref()),
                )
            };
            if state == ServerState::Shutdown {
                return;
            }
            // Entries before the range changed are purged, so a replica
            // that joins starts from a snapshot (`OwnedRange::since`).
            let floor = owned.since();
            if floor > purged && applied >= floor {
                let ask_again =
                    asked.is_none_or(|(f, at)| f != floor || at.elapsed() > RETRY_FLOOR);
                if last >= floor {
                    if raft.trigger().purge_log(floor).await.is_err() {
                        return;
                    }
                } else if ask_again {
                    tracing::info!(replica = %replica, floor, "a snapshot past the range change, to purge the log before it");
                    asked = Some((floor, tokio::time::Instant::now()));
                    if raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                }
                continue;
            }
            if applied.saturating_sub(last) < after_entries {
                continue;
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let measured = sizes(engine.as_ref(), replica, owned.kind(), (last + 1, applied));
            drop(engine);
            let (log, state) = match measured {
                Ok(sizes) => sizes,
                Err(e) => {
                    tracing::warn!(replica = %replica, error = %e, "sizing the log and state");
                    continue;
                }
            };
            if !due(applied - last, log, state, after_entries) {
                continue;
            }
            tracing::debug!(replica = %replica, log, state, "building a snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_entries_and_for_log_worth_a_quarter_of_the_state() {
        const N: u64 = 20_000;
        assert!(!due(N - 1, u64::MAX, 0, N), "too few entries");
        assert!(due(N, 0, 0, N), "an empty state: entries decide");
        let two_gib = 2 << 30;
        assert!(!due(N, 5 << 20, two_gib, N), "5 MiB of log on 2 GiB");
        assert!(due(N, 512 << 20, two_gib, N), "a quarter");
    }
}
