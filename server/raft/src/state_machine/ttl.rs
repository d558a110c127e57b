//! The log clock and the expiry index (docs/design/ttl-and-clocks.md).
//!
//! Expiry is judged by the log clock, the largest proposer time of any
//! applied entry, never by a reader's or an applier's own clock: so every
//! replica, and every read at a given applied index, agrees on which keys
//! are live. The clock is stored in the same batch as the data it judges.

use std::sync::Mutex;
use std::time::Instant;

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot, Record, WriteBatch};

fn clock_key(replica: ReplicaId) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::CLOCK, &[])
}

/// The log clock of `replica` in an engine view (0 before any entry).
pub fn read_clock(view: &dyn EngineSnapshot, replica: ReplicaId) -> Result<u64, EngineError> {
    Ok(stored_clock(view, replica)?.unwrap_or(0))
}

/// The stored clock row, if any: replicas written by versions before the
/// log clock have none, nor an expiry index.
fn stored_clock(view: &dyn EngineSnapshot, replica: ReplicaId) -> Result<Option<u64>, EngineError> {
    let Some(bytes) = view.get(Cf::ApplyState, &clock_key(replica))? else {
        return Ok(None);
    };
    let raw: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| EngineError::Corruption(format!("log clock of {} bytes", bytes.len())))?;
    Ok(Some(u64::from_be_bytes(raw)))
}

/// Builds the expiry index of a data replica that has none (written before
/// the index existed), from its records, with a clock row marking it
/// built. A no-op once the clock row exists.
pub(super) fn build_index_once(
    engine: &dyn Engine,
    replica: ReplicaId,
    (first, last): (u64, u64),
) -> Result<(), EngineError> {
    let view = engine.snapshot();
    if stored_clock(view.as_ref(), replica)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::new();
    let (start, end) = keys::data_range(first, last);
    view.for_each(Cf::Data, &start, &end, &mut |dkey, stored| {
        let record = Record::decode(stored)?;
        if record.expires_at_ms != 0 {
            let row = keys::expiry_key(replica, record.expires_at_ms, dkey);
            batch.put(Cf::ApplyState, row, Vec::new());
        }
        Ok(true)
    })?;
    write_clock(replica, 0, &mut batch);
    engine.write(batch, true)
}

pub(super) fn write_clock(replica: ReplicaId, ms: u64, batch: &mut WriteBatch) {
    batch.put(
        Cf::ApplyState,
        clock_key(replica),
        ms.to_be_bytes().to_vec(),
    );
}

/// Deletes the expiry index of `replica` (its clock is rewritten by the
/// caller).
pub(super) fn clear_index(replica: ReplicaId, batch: &mut WriteBatch) {
    let (start, end) = keys::tag_range(replica, apply_tag::EXPIRY);
    batch.delete_range(Cf::ApplyState, start, end);
}

/// Whether `replica` stores a record due to expire at or before `now_ms`:
/// the leader's sweeper proposes an expiry sweep when it does.
pub fn has_due(engine: &dyn Engine, replica: ReplicaId, now_ms: u64) -> Result<bool, EngineError> {
    let (start, end) = keys::expiry_range(replica, now_ms);
    Ok(!engine.scan(Cf::ApplyState, &start, &end, 1)?.is_empty())
}

/// The applied log clock as one replica saw it: its value, and when (on
/// this node's monotonic clock) the replica last applied an entry, which
/// says the clock was still that value then.
#[derive(Clone, Copy, Debug)]
pub struct AppliedClock {
    pub ms: u64,
    pub at: Instant,
}

/// Shared between a state machine, which sets it as entries apply, and its
/// replica's [`Stamper`].
#[derive(Debug)]
pub struct SharedClock(Mutex<AppliedClock>);

impl SharedClock {
    pub fn new(ms: u64) -> Self {
        SharedClock(Mutex::new(AppliedClock {
            ms,
            at: Instant::now(),
        }))
    }

    pub fn get(&self) -> AppliedClock {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that entries were just applied, with the clock at `ms`.
    pub(super) fn applied(&self, ms: u64) {
        let mut clock = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *clock = AppliedClock {
            ms: ms.max(clock.ms),
            at: Instant::now(),
        };
    }
}

/// Chooses the times a leader stamps on its entries (`Request::now_ms`).
///
/// A key expires when the log clock has moved its TTL past the clock at its
/// write, so the log clock must never run faster than real time, and wall
/// clocks cannot promise that: one set ahead, or a leader change from a
/// clock that lagged to one that does not, makes the log clock jump. So
/// stamps follow monotonic clocks only, in a chain per term:
///
/// - a term's first stamp is the applied log clock plus the real time since
///   this replica last applied an entry (so an election gap counts), never
///   what this node stamped in an earlier term;
/// - later stamps add the real time since the previous one, restarting from
///   the applied clock if entries of an earlier term moved it past the
///   chain.
///
/// The wall clock only gives a new shard its first time. So the log clock
/// starts at Unix time and then lags it by a few milliseconds per leader
/// change, and by the length of any outage of the whole shard (a restarted
/// node's chain starts when it opens): keys outlive their TTL by that much,
/// as etcd's leases, renewed on a leader change, do.
#[derive(Debug, Default)]
pub struct Stamper {
    /// The term, the last stamp and when it was made.
    chain: Option<(u64, u64, Instant)>,
}

impl Stamper {
    /// The stamp for an entry this replica proposes in `term` at monotonic
    /// time `now`; `wall_ms` is used only for a shard's first entry. Stamps
    /// of one term never go back.
    pub fn stamp(&mut self, term: u64, applied: AppliedClock, wall_ms: u64, now: Instant) -> u64 {
        let since = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let (base, at) = match self.chain {
            Some((t, base, at)) if t == term && base.saturating_add(since(at)) >= applied.ms => {
                (base, at)
            }
            // A new term, or entries of an earlier term applied since
            // moved the clock past this chain.
            _ => (applied.ms, applied.at),
        };
        let stamp = if base == 0 {
            wall_ms
        } else {
            base.saturating_add(since(at))
        };
        self.chain = Some((term, stamp, now));
        stamp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOG: u64 = 1_000_000;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn applied(ms: u64, at: Instant) -> AppliedClock {
        AppliedClock { ms, at }
    }

    #[test]
    fn stamps_follow_real_time_whatever_the_wall_clock_says() {
        let t0 = Instant::now();
        let mut s = Stamper::default();
        assert_eq!(s.stamp(1, applied(LOG, t0), LOG, t0), LOG);
        // 22 s behind, or 259 s ahead: the same real time.
        assert_eq!(
            s.stamp(1, applied(LOG, t0), LOG - 22_000, at(t0, 500)),
            LOG + 500
        );
        assert_eq!(
            s.stamp(1, applied(LOG, t0), LOG + 259_000, at(t0, 1_500)),
            LOG + 1_500
        );
        assert_eq!(
            s.stamp(1, applied(0, t0), 42, t0),
            LOG + 1_500,
            "never back"
        );
        let mut fresh = Stamper::default();
        assert_eq!(fresh.stamp(1, applied(0, t0), 42, t0), 42, "a new shard");
    }

    /// The failure jepsen found: leader A's stamps lagged real time by
    /// 800 ms; B, whose chain from an earlier term ran at real time, took
    /// over and stamped real time, and keys A had written expired 800 ms
    /// early. B must continue A's clock instead.
    #[test]
    fn a_new_term_continues_the_applied_clock_not_an_older_chain() {
        let t0 = Instant::now();
        let mut b = Stamper::default();
        assert_eq!(b.stamp(1, applied(LOG, t0), LOG, t0), LOG);
        // Term 2 (A's) left the clock at LOG + 9_200, which B last saw
        // applied at 10 s: 800 ms behind real time.
        let seen = applied(LOG + 9_200, at(t0, 10_000));
        let stamp = b.stamp(3, seen, LOG + 10_050, at(t0, 10_050));
        assert_eq!(stamp, LOG + 9_250, "real time since B applied it, no jump");
    }

    /// After an election gap the new leader counts the gap: its chain
    /// starts when it last applied an entry, not when it first stamps.
    #[test]
    fn an_election_gap_is_counted() {
        let t0 = Instant::now();
        let mut a = Stamper::default();
        assert_eq!(a.stamp(2, applied(LOG, t0), 0, at(t0, 1_000)), LOG + 1_000);
    }

    /// Entries of an earlier term applied after the new term began, with
    /// a clock ahead of the new chain: the chain follows them.
    #[test]
    fn a_chain_behind_the_applied_clock_restarts_from_it() {
        let t0 = Instant::now();
        let mut s = Stamper::default();
        assert_eq!(s.stamp(2, applied(LOG, t0), 0, t0), LOG);
        let later = applied(LOG + 5_000, at(t0, 100));
        assert_eq!(s.stamp(2, later, 0, at(t0, 200)), LOG + 5_100);
    }
}
