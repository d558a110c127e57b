//! Linearizable reads with one ReadIndex round shared by concurrent reads of
//! a shard.
//!
//! A read joins the next round that *starts after it arrived*; joining a
//! round already in flight could miss a write that completed between that
//! round's start and the read's arrival.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

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
    state: Arc<Mutex<State>>,
}

impl ReadIndex {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Returns once this replica has confirmed it leads and has applied
    /// everything committed before the call.
    pub async fn wait(&self) -> Result<(), RaftError<CheckIsLeaderError>> {
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
            let result = self.raft.ensure_linearizable().await.map(|_| ());
            for waiter in group {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
