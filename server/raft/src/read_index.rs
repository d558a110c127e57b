//! Linearizable reads with one ReadIndex round shared by concurrent reads of
//! a shard.
//!
//! A read joins the next round that *starts after it arrived*; joining a
//! round already in flight could miss a write that completed between that
//! round's start and the read's arrival.
//!
//! After a restart, reads also wait until the replica has applied every
//! entry its log knew to be committed when it opened (the *restart floor*;
//! not its last entry, which may never commit). openraft can
//! restore a replica that led before the restart as leader at once, and its
//! read index is then the larger of its first entry of the term and the
//! commit index it last persisted, which can be older than writes it had
//! acknowledged: a power loss takes the unsynced commit index and applied
//! state with it. Found by the fault-injection harness (`lose-unsynced`): a
//! linearizable read after a power loss of every node returned the value
//! before an acknowledged write. Replicas now run with that restore turned
//! off (see [`Replica`](crate::Replica)), which closes the same hole; the
//! floor stays as a second guard.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use openraft::async_runtime::WatchReceiver;
use openraft::ReadPolicy;

use crate::quiesce::Quiescence;
use crate::types::{CheckIsLeaderError, Raft, RaftError};

type Waiter = oneshot::Sender<Result<(), RaftError<CheckIsLeaderError>>>;

#[derive(Default)]
struct State {
    running: bool,
    waiting: Vec<Waiter>,
}

/// Batches `ensure_linearizable` calls of one replica.
#[derive(Clone)]
pub struct ReadIndex {
    raft: Raft,
    /// A leader is woken by every read: a read round sends heartbeats, and
    /// followers woken by them must not find their leader quiet.
    quiescence: Arc<Quiescence>,
    state: Arc<Mutex<State>>,
    /// The commit index the log had saved when the replica opened: no read
    /// is served before it is applied.
    restart_floor: u64,
}

impl ReadIndex {
    /// Read rounds for `raft`, just opened with `restart_floor` as its
    /// saved commit index.
    pub fn new(raft: Raft, quiescence: Arc<Quiescence>, restart_floor: u64) -> Self {
        Self {
            raft,
            quiescence,
            state: Arc::new(Mutex::new(State::default())),
            restart_floor,
        }
    }

    /// The saved commit index when the replica opened.
    pub fn restart_floor(&self) -> u64 {
        self.restart_floor
    }

    /// Waits (once after a restart) until everything known committed at
    /// open is applied.
    async fn reach_restart_floor(&self) -> Result<(), RaftError<CheckIsLeaderError>> {
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |id| id.index);
        if applied >= self.restart_floor {
            return Ok(());
        }
        self.raft
            .wait(None)
            .applied_index_at_least(Some(self.restart_floor), "restart floor")
            .await
            .map(|_| ())
            .map_err(|_| RaftError::Fatal(openraft::error::Fatal::Stopped))
    }

    /// Returns once this replica has confirmed it leads and has applied
    /// everything committed before the call.
    pub async fn wait(&self) -> Result<(), RaftError<CheckIsLeaderError>> {
        self.quiescence.wake_if_leading();
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start_round {
            let this = self.clone();
            tokio::spawn(async move { this.run_rounds().await });
        }
        rx.await
            .unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
    }

    async fn run_rounds(&self) {
        loop {
            let group = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let result = match self.reach_restart_floor().await {
                Ok(()) => self
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            for waiter in group {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
