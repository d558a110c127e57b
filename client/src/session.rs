//! The client's side of sessions (docs/design/sessions.md): every write
//! gets a seq, and carries the lowest seq this client still awaits on its
//! shard, so the shard keeps each write's outcome exactly until the client
//! has its answer, however many other writes apply meanwhile.
//!
//! The lowest seq a write reports is the lowest the client awaits on any
//! shard: a split moves keys, and the writes still awaited for them, to a
//! new shard that starts with a copy of the old shard's sessions, so a
//! floor raised by the new shard's writes alone could drop the row a
//! retried write needs.
//!
//! A client's first write to a shard, and every write until one of them is
//! answered, carries `session_start`: the seq from which the shard may open
//! a session for it. A write refused with `SESSION_EXPIRED` was not
//! applied; if no earlier attempt of it may have been (the router turns
//! the error into `Ambiguous` otherwise), it is sent again with a new seq,
//! opening a new session.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use atoll_proto::v1 as wire;
use atoll_proto::ShardId;

/// One client's sessions, over all shards.
#[derive(Debug)]
pub(crate) struct Sessions {
    client_id: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    shards: HashMap<ShardId, Shard>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Seq from which the current session was (or is being) opened; 0 when
    /// none is.
    start: u64,
    /// Whether a write of the current session has been answered, so the
    /// shard holds it.
    open: bool,
    /// Seqs of the writes to this shard not yet returned to their callers.
    awaited: BTreeSet<u64>,
}

/// One write, from its first attempt until it returns (dropping it ends
/// the wait, so the shard may forget its outcome).
pub(crate) struct Ticket {
    sessions: Arc<Sessions>,
    /// The shard the write was last sent to (a split can change it).
    shard: AtomicU64,
    seq: u64,
}

impl Sessions {
    pub(crate) fn new(client_id: u64) -> Self {
        Self {
            client_id,
            state: Mutex::new(State {
                next_seq: 1,
                shards: HashMap::new(),
            }),
        }
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it:
        // every change is a single insert, remove or assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a write to `shard` with a new seq.
    pub(crate) fn begin(self: &Arc<Self>, shard: ShardId) -> Ticket {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.await_on(shard, seq);
        Ticket {
            sessions: self.clone(),
            shard: AtomicU64::new(shard.get()),
            seq,
        }
    }
}

impl State {
    /// Starts awaiting write `seq` on `shard` (a first write there starts
    /// the session from `seq`).
    fn await_on(&mut self, shard: ShardId, seq: u64) {
        let entry = self.shards.entry(shard).or_default();
        if entry.start == 0 {
            entry.start = seq;
        }
        entry.awaited.insert(seq);
    }
}

impl Ticket {
    fn shard(&self) -> ShardId {
        ShardId(self.shard.load(Ordering::Relaxed))
    }

    /// The write id to send with the next attempt, to `shard` (the shard
    /// the write began with, or the one a split gave its key to).
    pub(crate) fn write_id_to(&self, shard: ShardId) -> wire::WriteId {
        let mut state = self.sessions.state();
        let before = self.shard();
        if shard != before {
            if let Some(old) = state.shards.get_mut(&before) {
                old.awaited.remove(&self.seq);
            }
            state.await_on(shard, self.seq);
            self.shard.store(shard.get(), Ordering::Relaxed);
        }
        let lowest = (state.shards.values())
            .filter_map(|s| s.awaited.first().copied())
            .min();
        let start = (state.shards.get(&shard))
            .filter(|s| !s.open)
            .map_or(0, |s| s.start);
        wire::WriteId {
            client_id: self.sessions.client_id,
            seq: self.seq,
            lowest_awaited: lowest.unwrap_or(self.seq).min(self.seq),
            session_start: start,
        }
    }

    /// The shard answered the write from its session: the session is open.
    pub(crate) fn answered(&self) {
        let mut state = self.sessions.state();
        if let Some(shard) = state.shards.get_mut(&self.shard()) {
            if shard.start != 0 && self.seq >= shard.start {
                shard.open = true;
            }
        }
    }

    /// The shard refused the write with `SESSION_EXPIRED`: unless a newer
    /// session was opened since the write began, the next write opens one.
    pub(crate) fn expired(&self) {
        let mut state = self.sessions.state();
        if let Some(shard) = state.shards.get_mut(&self.shard()) {
            if self.seq >= shard.start {
                shard.start = 0;
                shard.open = false;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.sessions.state();
        if let Some(shard) = state.shards.get_mut(&self.shard()) {
            shard.awaited.remove(&self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_awaited_write_is_reported_until_it_returns() {
        let sessions = Arc::new(Sessions::new(7));
        let a = sessions.begin(ShardId(1));
        let b = sessions.begin(ShardId(1));
        let other = sessions.begin(ShardId(2));
        assert_eq!((a.seq, b.seq, other.seq), (1, 2, 3));
        assert_eq!(b.write_id_to(ShardId(1)).lowest_awaited, 1);
        assert_eq!(
            other.write_id_to(ShardId(2)).lowest_awaited,
            1,
            "the lowest awaited on any shard"
        );
        drop(a);
        assert_eq!(b.write_id_to(ShardId(1)).lowest_awaited, 2);
    }

    #[test]
    fn a_write_sent_to_a_new_shard_is_awaited_there() {
        let sessions = Arc::new(Sessions::new(7));
        let a = sessions.begin(ShardId(1));
        a.answered();
        assert_eq!(a.write_id_to(ShardId(1)).session_start, 0);
        // A split gave the key to shard 5: the write opens a session there
        // unless one is open, and is awaited there until it returns.
        let moved = a.write_id_to(ShardId(5));
        assert_eq!((moved.seq, moved.session_start), (1, 1));
        let b = sessions.begin(ShardId(5));
        assert_eq!(b.write_id_to(ShardId(5)).lowest_awaited, 1);
        drop(a);
        assert_eq!(b.write_id_to(ShardId(5)).lowest_awaited, 2);
    }

    #[test]
    fn writes_carry_the_session_start_until_one_is_answered() {
        let sessions = Arc::new(Sessions::new(7));
        let a = sessions.begin(ShardId(1));
        let b = sessions.begin(ShardId(1));
        assert_eq!(b.write_id_to(ShardId(1)).session_start, 1);
        b.answered();
        assert_eq!(a.write_id_to(ShardId(1)).session_start, 0);

        // Refused: the next write opens a new session from its own seq.
        b.expired();
        let c = sessions.begin(ShardId(1));
        assert_eq!(c.write_id_to(ShardId(1)).session_start, c.seq);
        // A refusal of a write older than the new session changes nothing.
        a.expired();
        assert_eq!(c.write_id_to(ShardId(1)).session_start, c.seq);
    }
}
