//! The log clock and the expiry index (docs/design/ttl-and-clocks.md).
//!
//! Expiry is judged by the log clock, the largest proposer time of any
//! applied entry, never by a reader's or an applier's own clock: so every
//! replica, and every read at a given applied index, agrees on which keys
//! are live. The clock is stored in the same batch as the data it judges.

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

/// How much faster than real time a leader's stamps may run while its wall
/// clock is ahead of the log clock: 1/100, so a key expires at worst 1%
/// early on the leader's monotonic clock, whatever its wall clock says.
const CATCH_UP_PER_MS: u64 = 100;

/// Chooses the time a leader stamps on its entries (`Request::now_ms`), so
/// that the log clock follows real time as the leader's monotonic clock
/// measures it, whatever its wall clock does:
///
/// - the stamp never falls behind the log clock plus the real time elapsed
///   since this node saw it: a leader whose wall clock is behind does not
///   stall the log clock (a stall, later jumped over, would expire keys
///   written during it early);
/// - it never runs ahead of that by more than 1% of the elapsed time: a
///   leader whose wall clock is ahead (or runs fast) moves the log clock
///   towards it slowly, never in a jump;
/// - between those bounds it is the wall clock, so the log clock, and
///   every `expires_at_ms`, stays in Unix time when clocks agree.
#[derive(Debug, Default)]
pub struct Stamper {
    /// The log clock as last seen, and when (monotonic).
    anchor: Option<(u64, std::time::Instant)>,
    last: u64,
}

impl Stamper {
    /// The stamp for an entry proposed at monotonic time `now`, on a replica
    /// whose applied log clock is `log_clock` and whose wall clock reads
    /// `wall_ms`. Stamps of one stamper never go back.
    pub fn stamp(&mut self, log_clock: u64, wall_ms: u64, now: std::time::Instant) -> u64 {
        if log_clock == 0 {
            // A new shard: nothing to follow yet.
            self.last = self.last.max(wall_ms);
            return self.last;
        }
        let projected = |(base, at): (u64, std::time::Instant)| {
            base.saturating_add(now.saturating_duration_since(at).as_millis() as u64)
        };
        // Re-anchor when the log is ahead of our projection (another
        // leader's stamps, or our first look).
        if self.anchor.is_none_or(|a| projected(a) < log_clock) {
            self.anchor = Some((log_clock, now));
        }
        let Some((base, at)) = self.anchor else {
            return self.last;
        };
        let elapsed = now.saturating_duration_since(at).as_millis() as u64;
        let low = base.saturating_add(elapsed);
        let high = low.saturating_add(elapsed / CATCH_UP_PER_MS);
        self.last = self.last.max(wall_ms.clamp(low, high));
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn stamps_follow_real_time_whatever_the_wall_clock_does() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let log = 1_000_000;

        // Wall clock in step: stamps are the wall clock.
        let mut s = Stamper::default();
        assert_eq!(s.stamp(log, log, at(0)), log);
        assert_eq!(s.stamp(log, log + 500, at(500)), log + 500);

        // Wall clock 22 s behind: stamps still advance with real time.
        let mut s = Stamper::default();
        assert_eq!(s.stamp(log, log - 22_000, at(0)), log);
        assert_eq!(s.stamp(log, log - 21_000, at(1_000)), log + 1_000);

        // Wall clock 259 s ahead: stamps move at most 1% faster.
        let mut s = Stamper::default();
        assert_eq!(s.stamp(log, log + 259_000, at(0)), log);
        assert_eq!(s.stamp(log, log + 269_000, at(10_000)), log + 10_100);

        // Another leader moved the log ahead: stamps follow it.
        assert_eq!(
            s.stamp(log + 60_000, log + 269_000, at(10_000)),
            log + 60_000
        );

        // A new shard takes the wall clock.
        let mut s = Stamper::default();
        assert_eq!(s.stamp(0, 42, at(0)), 42);
    }
}
