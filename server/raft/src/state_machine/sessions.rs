//! Client sessions: exactly-once client writes at any write rate
//! (docs/design/sessions.md; Raft thesis section 6.3).
//!
//! A client's id names a session. Every write carries its `seq` and the
//! lowest seq its client still awaits on this shard (`lowest_awaited`); the
//! session keeps the outcome (a *row*) of every applied write at or above
//! its *floor*, the largest `lowest_awaited` seen, and drops the rows below
//! it. So a row lives until its client has its answer, however many other
//! writes apply meanwhile. A write with no row is applied only if its seq
//! is at or above the floor; below it, the write is refused with
//! `SessionExpired`: it may have applied before, and nothing below the
//! floor ever applies.
//!
//! Bounds, all decided in apply from the log alone, so every replica keeps
//! the same sessions and rows:
//! - a row stores no value above [`MAX_KEPT_VALUE_BYTES`] (a failed CAS's
//!   current value is then left out), so it costs about 1 KiB plus the key;
//! - the rows of all sessions cost at most [`MAX_TABLE_BYTES`]: past it, the
//!   session with the most bytes drops its oldest row and raises its floor
//!   past it (a retry of that write is then refused, never applied twice);
//! - a session idle for [`IDLE_EXPIRY_MS`] by the log clock is removed;
//! - at most [`MAX_SESSIONS`]: opening one more removes the session idle
//!   longest if it has been idle [`EVICTABLE_AFTER_MS`], else is refused
//!   with `Overloaded`.
//!
//! Stored in `apply_state`, written in the same batch as the writes they
//! describe: a header per session (`replica ++ 's' ++ client_id BE`) and a
//! row per kept outcome (`replica ++ 'r' ++ client_id BE ++ seq BE`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, Engine, EngineError, EngineSnapshot, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::command::{Outcome, SessionWrite};

/// Most sessions per replica.
pub const MAX_SESSIONS: usize = 100_000;
/// A session without writes for this long (log clock) is removed.
pub const IDLE_EXPIRY_MS: u64 = 10 * 60 * 1000;
/// A full table removes a session to open another only if it has been idle
/// this long, longer than any client retries one write.
pub const EVICTABLE_AFTER_MS: u64 = 60 * 1000;
/// Most bytes the rows of all sessions of a replica may cost.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// A failed CAS's row keeps the key's current value only up to this size.
pub const MAX_KEPT_VALUE_BYTES: usize = 1024;
/// What a row costs beyond its encoding (map entry, indexes).
const ROW_OVERHEAD: u64 = 64;

/// What to do with a client write, decided before it applies.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: apply it, then [`SessionTable::record`] its outcome.
    Apply,
    /// Applied before: answer with its first outcome (as stored: a failed
    /// CAS's large value left out), apply nothing.
    Answer(Outcome),
    /// Refused (`SessionExpired` or `Overloaded`): apply nothing.
    Refuse(Outcome),
}

#[derive(Debug, Default)]
struct Session {
    floor: u64,
    last_active_ms: u64,
    /// Outcomes of applied writes with seq >= floor, by seq, with their
    /// cost in bytes.
    rows: BTreeMap<u64, (Outcome, u64)>,
    bytes: u64,
}

/// A session's stored header.
#[derive(Serialize, Deserialize)]
struct Header {
    floor: u64,
    last_active_ms: u64,
}

/// One session, whole, as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    pub client_id: u64,
    pub floor: u64,
    pub last_active_ms: u64,
    /// Kept outcomes, by seq, ascending.
    pub rows: Vec<(u64, Outcome)>,
}

#[derive(Debug)]
pub struct SessionTable {
    replica: ReplicaId,
    sessions: HashMap<u64, Session>,
    /// (last active, client id), idle longest first.
    by_activity: BTreeSet<(u64, u64)>,
    /// (row bytes, client id), largest last.
    by_bytes: BTreeSet<(u64, u64)>,
    bytes: u64,
    /// Sessions whose header the next flush writes (or deletes, if gone).
    dirty: HashSet<u64>,
    /// Row writes (`None`: delete) since the last flush, in order.
    pending: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn header_key(replica: ReplicaId, client_id: u64) -> Vec<u8> {
    keys::tagged_key(replica, apply_tag::SESSION, &client_id.to_be_bytes())
}

fn row_key(replica: ReplicaId, client_id: u64, seq: u64) -> Vec<u8> {
    let mut rest = [0u8; 16];
    rest[..8].copy_from_slice(&client_id.to_be_bytes());
    rest[8..].copy_from_slice(&seq.to_be_bytes());
    keys::tagged_key(replica, apply_tag::SESSION_ROW, &rest)
}

/// The `u64`s after the tag of a session key.
fn key_ids<const N: usize>(key: &[u8]) -> Result<[u64; N], EngineError> {
    let corrupt = || EngineError::Corruption(format!("session key {key:?}"));
    let rest = key
        .get(9..)
        .filter(|r| r.len() == N * 8)
        .ok_or_else(corrupt)?;
    let mut out = [0u64; N];
    for (slot, chunk) in out.iter_mut().zip(rest.chunks_exact(8)) {
        *slot = u64::from_be_bytes(chunk.try_into().map_err(|_| corrupt())?);
    }
    Ok(out)
}

/// The outcome as a row stores it: a failed CAS's current value only if
/// small.
fn row_of(outcome: &Outcome) -> Outcome {
    match outcome {
        Outcome::CasFailed {
            key,
            current: Some(current),
        } if current.value.len() > MAX_KEPT_VALUE_BYTES => Outcome::CasFailedValueOmitted {
            key: key.clone(),
            version: current.version,
            expires_at_ms: current.expires_at_ms,
        },
        other => other.clone(),
    }
}

fn row_cost(encoded: &[u8]) -> u64 {
    ROW_OVERHEAD + encoded.len() as u64
}

/// Every stored session of `replica` in a view, rows included (for
/// snapshots).
pub fn stored_sessions(
    view: &dyn EngineSnapshot,
    replica: ReplicaId,
) -> Result<Vec<StoredSession>, EngineError> {
    let mut sessions: BTreeMap<u64, StoredSession> = BTreeMap::new();
    let (start, end) = keys::tag_range(replica, apply_tag::SESSION);
    view.for_each(Cf::ApplyState, &start, &end, &mut |k, v| {
        let [client_id] = key_ids::<1>(k)?;
        let header: Header = decode(v, "session header")?;
        let session = StoredSession {
            client_id,
            floor: header.floor,
            last_active_ms: header.last_active_ms,
            rows: Vec::new(),
        };
        sessions.insert(client_id, session);
        Ok(true)
    })?;
    let (start, end) = keys::tag_range(replica, apply_tag::SESSION_ROW);
    view.for_each(Cf::ApplyState, &start, &end, &mut |k, v| {
        let [client_id, seq] = key_ids::<2>(k)?;
        match sessions.get_mut(&client_id) {
            Some(session) if seq >= session.floor => {
                session.rows.push((seq, decode(v, "session row")?));
                Ok(true)
            }
            _ => Err(EngineError::Corruption(format!(
                "session row {seq} of client {client_id:#x} has no session or lies below its floor"
            ))),
        }
    })?;
    Ok(sessions.into_values().collect())
}

impl SessionTable {
    /// An empty table.
    pub fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            sessions: HashMap::new(),
            by_activity: BTreeSet::new(),
            by_bytes: BTreeSet::new(),
            bytes: 0,
            dirty: HashSet::new(),
            pending: Vec::new(),
        }
    }

    /// Loads a replica's sessions.
    pub fn load(engine: &dyn Engine, replica: ReplicaId) -> Result<Self, EngineError> {
        let mut table = Self::new(replica);
        for stored in stored_sessions(engine.snapshot().as_ref(), replica)? {
            let mut session = Session {
                floor: stored.floor,
                last_active_ms: stored.last_active_ms,
                ..Session::default()
            };
            for (seq, outcome) in stored.rows {
                let cost = row_cost(&encode(&outcome)?);
                session.rows.insert(seq, (outcome, cost));
                session.bytes += cost;
            }
            table.bytes += session.bytes;
            (table.by_activity).insert((session.last_active_ms, stored.client_id));
            table.by_bytes.insert((session.bytes, stored.client_id));
            table.sessions.insert(stored.client_id, session);
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Bytes the rows of all sessions cost.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Decides what to do with `write`, applied at log clock `now`: first
    /// removes the sessions idle too long, then finds (or opens) the
    /// write's session and raises its floor to the write's
    /// `lowest_awaited`.
    pub fn check(&mut self, write: &SessionWrite, now: u64) -> Verdict {
        self.expire_idle(now);
        let client = write.client_id;
        if !self.sessions.contains_key(&client) {
            if let Some(refusal) = self.open(write, now) {
                return Verdict::Refuse(refusal);
            }
        }
        // A client never awaits a write above the one it sends.
        self.raise_floor(client, write.lowest_awaited.min(write.seq));
        self.touch(client, now);
        let Some(session) = self.sessions.get(&client) else {
            return Verdict::Apply;
        };
        if let Some((first, _)) = session.rows.get(&write.seq) {
            return Verdict::Answer(first.clone());
        }
        if write.seq < session.floor {
            return Verdict::Refuse(Outcome::SessionExpired {
                reason: format!(
                    "write {} of client {client:#x} lies below its session's floor {}: its \
                     outcome is no longer kept, and it was not applied now",
                    write.seq, session.floor
                ),
            });
        }
        Verdict::Apply
    }

    /// Opens the session of `write`'s client, if the write may open one;
    /// otherwise says why not.
    fn open(&mut self, write: &SessionWrite, now: u64) -> Option<Outcome> {
        let client = write.client_id;
        if write.session_start == 0 || write.seq < write.session_start {
            return Some(Outcome::SessionExpired {
                reason: format!(
                    "client {client:#x} has no session on this shard (it expired after {} min \
                     without writes, or was evicted); the write was not applied",
                    IDLE_EXPIRY_MS / 60_000
                ),
            });
        }
        if self.sessions.len() >= MAX_SESSIONS {
            match self.by_activity.first() {
                Some(&(active, idle)) if active.saturating_add(EVICTABLE_AFTER_MS) <= now => {
                    self.remove(idle);
                }
                _ => {
                    return Some(Outcome::Overloaded {
                        reason: format!(
                            "{MAX_SESSIONS} client sessions are open on this shard and none \
                             has been idle for {} s; the write was not applied",
                            EVICTABLE_AFTER_MS / 1000
                        ),
                    })
                }
            }
        }
        let session = Session {
            floor: write.session_start,
            last_active_ms: now,
            ..Session::default()
        };
        self.by_activity.insert((now, client));
        self.by_bytes.insert((0, client));
        self.sessions.insert(client, session);
        self.dirty.insert(client);
        None
    }

    /// Keeps the outcome of `write`, just applied ([`Verdict::Apply`]),
    /// then drops rows until the table is within its byte bound.
    pub fn record(&mut self, write: &SessionWrite, outcome: &Outcome) -> Result<(), EngineError> {
        let client = write.client_id;
        let row = row_of(outcome);
        let encoded = encode(&row)?;
        let cost = row_cost(&encoded);
        let Some(session) = self.sessions.get_mut(&client) else {
            return Ok(());
        };
        let old = session.bytes;
        if let Some((_, replaced)) = session.rows.insert(write.seq, (row, cost)) {
            session.bytes -= replaced;
            self.bytes -= replaced;
        }
        session.bytes += cost;
        self.bytes += cost;
        let new = session.bytes;
        let key = row_key(self.replica, client, write.seq);
        self.pending.push((key, Some(encoded)));
        self.resized(client, old, new);
        self.shed_bytes();
        Ok(())
    }

    /// Drops rows, the oldest of the session with most bytes first, raising
    /// its floor past each, until the table is within [`MAX_TABLE_BYTES`].
    fn shed_bytes(&mut self) {
        while self.bytes > MAX_TABLE_BYTES {
            let Some(&(_, client)) = self.by_bytes.last() else {
                return;
            };
            let oldest = (self.sessions.get(&client)).and_then(|s| s.rows.keys().next().copied());
            let Some(seq) = oldest else {
                return;
            };
            self.raise_floor(client, seq + 1);
        }
    }

    /// Raises `client`'s floor to `floor` (never lowers it), dropping the
    /// rows below.
    fn raise_floor(&mut self, client: u64, floor: u64) {
        let replica = self.replica;
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        if floor <= session.floor {
            return;
        }
        session.floor = floor;
        self.dirty.insert(client);
        let old = session.bytes;
        let kept = session.rows.split_off(&floor);
        for (seq, (_, cost)) in std::mem::replace(&mut session.rows, kept) {
            session.bytes -= cost;
            self.bytes -= cost;
            self.pending.push((row_key(replica, client, seq), None));
        }
        let new = session.bytes;
        self.resized(client, old, new);
    }

    fn touch(&mut self, client: u64, now: u64) {
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        // The log clock never goes back; max keeps the index exact anyway.
        let active = session.last_active_ms.max(now);
        if active != session.last_active_ms {
            self.by_activity.remove(&(session.last_active_ms, client));
            self.by_activity.insert((active, client));
            session.last_active_ms = active;
        }
        self.dirty.insert(client);
    }

    fn resized(&mut self, client: u64, old: u64, new: u64) {
        if old != new {
            self.by_bytes.remove(&(old, client));
            self.by_bytes.insert((new, client));
        }
    }

    /// Removes the sessions idle for [`IDLE_EXPIRY_MS`] at log clock `now`.
    fn expire_idle(&mut self, now: u64) {
        while let Some(&(active, client)) = self.by_activity.first() {
            if active.saturating_add(IDLE_EXPIRY_MS) > now {
                return;
            }
            self.remove(client);
        }
    }

    fn remove(&mut self, client: u64) {
        let Some(session) = self.sessions.remove(&client) else {
            return;
        };
        self.by_activity.remove(&(session.last_active_ms, client));
        self.by_bytes.remove(&(session.bytes, client));
        self.bytes -= session.bytes;
        for seq in session.rows.keys() {
            self.pending
                .push((row_key(self.replica, client, *seq), None));
        }
        self.dirty.insert(client);
    }

    /// Records in `batch` what changed since the last flush.
    pub fn flush(&mut self, batch: &mut WriteBatch) -> Result<(), EngineError> {
        for (key, value) in self.pending.drain(..) {
            match value {
                Some(value) => batch.put(Cf::ApplyState, key, value),
                None => batch.delete(Cf::ApplyState, key),
            }
        }
        for client in self.dirty.drain() {
            let key = header_key(self.replica, client);
            match self.sessions.get(&client) {
                Some(session) => {
                    let header = Header {
                        floor: session.floor,
                        last_active_ms: session.last_active_ms,
                    };
                    batch.put(Cf::ApplyState, key, encode(&header)?);
                }
                None => batch.delete(Cf::ApplyState, key),
            }
        }
        Ok(())
    }

    /// Deletes every session of `replica` (before installing a snapshot).
    pub fn clear(replica: ReplicaId, batch: &mut WriteBatch) {
        for tag in [apply_tag::SESSION, apply_tag::SESSION_ROW] {
            let (start, end) = keys::tag_range(replica, tag);
            batch.delete_range(Cf::ApplyState, start, end);
        }
    }

    /// Writes `session` as one of `replica`'s (snapshot install, after
    /// [`clear`](Self::clear)).
    pub fn restore(
        replica: ReplicaId,
        session: &StoredSession,
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        let header = Header {
            floor: session.floor,
            last_active_ms: session.last_active_ms,
        };
        let client = session.client_id;
        batch.put(
            Cf::ApplyState,
            header_key(replica, client),
            encode(&header)?,
        );
        let kept = session.rows.iter().filter(|(seq, _)| *seq >= session.floor);
        for (seq, outcome) in kept {
            let key = row_key(replica, client, *seq);
            batch.put(Cf::ApplyState, key, encode(outcome)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Current;

    fn write(client_id: u64, seq: u64, lowest_awaited: u64) -> SessionWrite {
        SessionWrite {
            client_id,
            seq,
            lowest_awaited,
            session_start: 1,
        }
    }

    /// A failed CAS whose row keeps a value of `MAX_KEPT_VALUE_BYTES`.
    fn large_row() -> Outcome {
        Outcome::CasFailed {
            key: b"k".to_vec(),
            current: Some(Current {
                value: vec![0; MAX_KEPT_VALUE_BYTES],
                version: 1,
                expires_at_ms: 0,
            }),
        }
    }

    fn apply(table: &mut SessionTable, w: SessionWrite, now: u64, outcome: &Outcome) {
        assert_eq!(table.check(&w, now), Verdict::Apply);
        table.record(&w, outcome).unwrap();
    }

    #[test]
    fn a_row_costs_the_same_whatever_the_value_size() {
        let failed = |size| Outcome::CasFailed {
            key: b"k".to_vec(),
            current: Some(Current {
                value: vec![0; size],
                version: 1,
                expires_at_ms: 0,
            }),
        };
        let cost = |size| {
            let mut table = SessionTable::new(ReplicaId(1));
            apply(&mut table, write(1, 1, 1), 0, &failed(size));
            table.bytes()
        };
        assert_eq!(cost(MAX_KEPT_VALUE_BYTES + 1), cost(8 << 20));
        assert!(cost(8 << 20) < 128, "{} bytes", cost(8 << 20));
        assert!(cost(MAX_KEPT_VALUE_BYTES) < 1200);
    }

    #[test]
    fn the_session_with_most_bytes_gives_way_when_the_table_is_full() {
        let mut table = SessionTable::new(ReplicaId(1));
        let row = large_row();
        // A client that never reports progress, and one that awaits three.
        let mut hog = 0;
        while table.bytes() + 2 * MAX_KEPT_VALUE_BYTES as u64 <= MAX_TABLE_BYTES {
            hog += 1;
            apply(&mut table, write(1, hog, 1), 0, &row);
        }
        for seq in 1..=3 {
            apply(&mut table, write(2, seq, 1), 0, &row);
        }
        assert!(table.bytes() <= MAX_TABLE_BYTES);
        for seq in 1..=3 {
            let retry = table.check(&write(2, seq, 1), 0);
            assert!(matches!(retry, Verdict::Answer(_)), "{retry:?}");
        }
        // The hog's oldest rows went, and its floor moved past them: their
        // retries are refused, never applied again.
        let retry = table.check(&write(1, 1, 1), 0);
        assert!(
            matches!(retry, Verdict::Refuse(Outcome::SessionExpired { .. })),
            "{retry:?}"
        );
        assert!(matches!(
            table.check(&write(1, hog, 1), 0),
            Verdict::Answer(_)
        ));
    }

    #[test]
    fn a_full_table_removes_only_a_session_idle_for_a_minute() {
        let mut table = SessionTable::new(ReplicaId(1));
        let done = Outcome::Written { version: 1 };
        for client in 1..=MAX_SESSIONS as u64 {
            apply(&mut table, write(client, 1, 1), 0, &done);
        }
        let newcomer = write(0, 1, 1);
        let refused = table.check(&newcomer, EVICTABLE_AFTER_MS - 1);
        assert!(
            matches!(refused, Verdict::Refuse(Outcome::Overloaded { .. })),
            "{refused:?}"
        );
        assert_eq!(table.len(), MAX_SESSIONS, "nothing grew");

        // All have been idle for a minute; the first of them goes, and only
        // it.
        apply(&mut table, newcomer, EVICTABLE_AFTER_MS, &done);
        assert_eq!(table.len(), MAX_SESSIONS);
        let retry = SessionWrite {
            session_start: 0,
            ..write(1, 1, 1)
        };
        let gone = table.check(&retry, EVICTABLE_AFTER_MS);
        assert!(
            matches!(gone, Verdict::Refuse(Outcome::SessionExpired { .. })),
            "{gone:?}"
        );
        let kept = table.check(&write(3, 1, 1), EVICTABLE_AFTER_MS);
        assert!(matches!(kept, Verdict::Answer(_)), "{kept:?}");
    }
}
