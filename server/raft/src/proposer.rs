//! Client writes of one replica proposed together: concurrent writes share
//! one log entry ([`Command::Group`]), applied in arrival order.
//!
//! openraft makes every `client_write` an entry of its own, and each entry
//! costs CPU on every replica (append, replication, apply, each a task
//! hand-over). The proposer keeps at most `max_in_flight` entries in
//! openraft at once; writes that arrive meanwhile wait in a queue, and the
//! next entry takes as many of them as fit.
//!
//! Each write of a group gets a version of its own (its entry's index and
//! its position, see [`write_version`](crate::command::write_version)), so
//! writes to one key can share an entry: compare-and-swaps racing on a hot
//! key are decided in one entry, the first winning and the rest failing,
//! rather than in one entry each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::command::{Command, Outcome, Proposal, Request, WriteId, WRITES_PER_ENTRY};
use crate::quiesce::Quiescence;
use crate::types::{ClientWriteError, Raft, RaftError};

/// Most writes in one group.
pub const MAX_GROUP_WRITES: usize = WRITES_PER_ENTRY;
/// Most bytes (keys and values, roughly) in one group; a single larger
/// write still goes alone.
pub const MAX_GROUP_BYTES: usize = 512 * 1024;

/// Most bytes (keys and values, roughly) of writes waiting in one
/// replica's queue. Beyond it new writes are refused with
/// [`ProposeError::Overloaded`] rather than growing memory: the queue
/// drains only as fast as the shard commits, which is not at all for a
/// leader cut off from its quorum.
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// Why a proposed write has no outcome.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Raft(#[from] RaftError<ClientWriteError>),
    /// The queue is full; the write was not proposed.
    #[error(
        "{queued} bytes of writes wait for this shard already (at most {MAX_QUEUED_BYTES}); \
         try again shortly"
    )]
    Overloaded { queued: usize },
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Bytes of the writes in `queue` ([`Request::approx_bytes`]).
    queued_bytes: usize,
    /// Tasks proposing groups; each has one entry in openraft at a time.
    runners: usize,
}

impl State {
    /// Queues `pending` unless the queue is full, after dropping the writes
    /// whose callers stopped waiting.
    fn push(&mut self, pending: Pending) -> Result<(), ProposeError> {
        let size = pending.request.approx_bytes();
        if !self.queue.is_empty() && self.queued_bytes + size > MAX_QUEUED_BYTES {
            self.queue.retain(|p| !p.reply.is_closed());
            self.queued_bytes = self.queue.iter().map(|p| p.request.approx_bytes()).sum();
            if !self.queue.is_empty() && self.queued_bytes + size > MAX_QUEUED_BYTES {
                return Err(ProposeError::Overloaded {
                    queued: self.queued_bytes,
                });
            }
        }
        self.queued_bytes += size;
        self.queue.push_back(pending);
        Ok(())
    }

    /// Takes the next group off the queue ([`take_group`]).
    fn take_group(&mut self) -> Vec<Pending> {
        let before = self.queue.len();
        let group = take_group(&mut self.queue);
        if self.queue.len() + group.len() == before {
            let taken: usize = group.iter().map(|p| p.request.approx_bytes()).sum();
            self.queued_bytes = self.queued_bytes.saturating_sub(taken);
        } else {
            // Abandoned writes were dropped too: count afresh.
            self.queued_bytes = self.queue.iter().map(|p| p.request.approx_bytes()).sum();
        }
        group
    }
}

/// Counters of a proposer, for status and benchmarks.
#[derive(Debug, Default)]
pub struct ProposerStats {
    /// Log entries proposed.
    pub entries: AtomicU64,
    /// The writes they carried; `writes / entries` is the mean group size.
    pub writes: AtomicU64,
}

/// Groups the writes of one replica into log entries.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    /// A leader is woken by every proposal: it must heartbeat again.
    quiescence: Arc<Quiescence>,
    state: Arc<Mutex<State>>,
    max_in_flight: usize,
    stats: Arc<ProposerStats>,
}

impl Proposer {
    /// A proposer for `raft` with at most `max_in_flight` (at least 1)
    /// entries proposed and not yet applied.
    pub fn new(raft: Raft, quiescence: Arc<Quiescence>, max_in_flight: usize) -> Self {
        Self {
            raft,
            quiescence,
            state: Arc::new(Mutex::new(State::default())),
            max_in_flight: max_in_flight.max(1),
            stats: Arc::default(),
        }
    }

    /// What the proposer did since the replica started.
    pub fn stats(&self) -> &ProposerStats {
        &self.stats
    }

    /// Proposes `request` and waits until it is applied; returns its own
    /// outcome, whether it went alone or in a group.
    pub async fn propose(&self, request: Request) -> Result<Outcome, ProposeError> {
        self.quiescence.wake_if_leading();
        let (reply, rx) = oneshot::channel();
        let start_runner = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.push(Pending { request, reply })?;
            let start = state.runners < self.max_in_flight;
            if start {
                state.runners += 1;
            }
            start
        };
        if start_runner {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await.unwrap_or(Err(stopped()))
    }

    /// Proposes groups until the queue is empty.
    async fn run(&self) {
        loop {
            let group = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let group = state.take_group();
                if group.is_empty() {
                    state.runners -= 1;
                    return;
                }
                group
            };
            self.submit(group).await;
        }
    }

    async fn submit(&self, mut group: Vec<Pending>) {
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        let writes = group.len() as u64;
        self.stats.writes.fetch_add(writes, Ordering::Relaxed);
        if group.len() == 1 {
            let Some(Pending { request, reply }) = group.pop() else {
                return;
            };
            let result = self.raft.client_write(request).await;
            let _ = reply.send(result.map(|r| r.data).map_err(ProposeError::from));
            return;
        }
        let now_ms = group.iter().map(|p| p.request.now_ms).max().unwrap_or(0);
        let mut replies = Vec::with_capacity(group.len());
        let writes = group
            .into_iter()
            .map(|Pending { request, reply }| {
                replies.push(reply);
                Proposal {
                    write_id: request.write_id,
                    command: request.command,
                }
            })
            .collect();
        let request = Request {
            write_id: WriteId::Untracked,
            now_ms,
            command: Command::Group { writes },
        };
        match self.raft.client_write(request).await.map(|r| r.data) {
            Ok(Outcome::Group(outcomes)) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(other) => {
                tracing::error!(outcome = ?other, writes = replies.len(), "a group of writes was answered with the wrong outcome");
                for reply in replies {
                    let fatal = RaftError::Fatal(openraft::error::Fatal::Panicked);
                    let _ = reply.send(Err(fatal.into()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone().into()));
                }
            }
        }
    }
}

fn stopped() -> ProposeError {
    RaftError::Fatal(openraft::error::Fatal::Stopped).into()
}

/// Takes the next group off the front of `queue`: one write that cannot
/// be grouped (see [`Command::groupable`]), or the longest run of groupable writes
/// within the size limits. Writes whose caller stopped waiting (its
/// deadline passed, and it was told the outcome is unknown) are dropped
/// unproposed.
fn take_group(queue: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut group = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        if next.reply.is_closed() {
            queue.pop_front();
            continue;
        }
        if !next.request.command.groupable() {
            if group.is_empty() {
                group.extend(queue.pop_front());
            }
            break;
        }
        let size = next.request.approx_bytes();
        if !group.is_empty() && (group.len() >= MAX_GROUP_WRITES || bytes + size > MAX_GROUP_BYTES)
        {
            break;
        }
        bytes += size;
        group.extend(queue.pop_front());
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SessionWrite;

    type Receiver = oneshot::Receiver<Result<Outcome, ProposeError>>;

    /// A queued write, and the receiver its caller waits on.
    fn waiting(command: Command) -> (Pending, Receiver) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            write_id: WriteId::Session(SessionWrite {
                client_id: 1,
                seq: 1,
                lowest_awaited: 1,
                session_start: 1,
            }),
            now_ms: 0,
            command,
        };
        (Pending { request, reply }, rx)
    }

    /// Group sizes of a queue of `commands` whose callers all wait.
    fn sizes_of(commands: Vec<Command>) -> Vec<usize> {
        let (queue, _receivers): (VecDeque<_>, Vec<_>) = commands.into_iter().map(waiting).unzip();
        sizes(queue)
    }

    fn put(key: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
            ttl_ms: 0,
        }
    }

    fn sizes(mut queue: VecDeque<Pending>) -> Vec<usize> {
        let mut out = Vec::new();
        loop {
            let group = take_group(&mut queue);
            if group.is_empty() {
                return out;
            }
            out.push(group.len());
        }
    }

    #[test]
    fn writes_to_disjoint_keys_share_a_group() {
        assert_eq!(sizes_of(["a", "b", "c"].map(put).to_vec()), vec![3]);
    }

    #[test]
    fn writes_to_one_key_share_a_group_in_arrival_order() {
        let commands = ["a", "b", "a", "c", "c"].map(put).to_vec();
        let (mut queue, _receivers): (VecDeque<_>, Vec<_>) =
            commands.into_iter().map(waiting).unzip();
        let group = take_group(&mut queue);
        let keys: Vec<_> = group.iter().map(|p| p.request.command.keys()).collect();
        let expected: Vec<Option<Vec<&[u8]>>> = ["a", "b", "a", "c", "c"]
            .iter()
            .map(|k| Some(vec![k.as_bytes()]))
            .collect();
        assert_eq!(keys, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_cluster_map_command_goes_alone() {
        let map = || Command::SetClusterMap {
            expected_version: 1,
            map: vec![],
        };
        assert_eq!(
            sizes_of(vec![put("a"), map(), map(), put("b")]),
            vec![1, 1, 1, 1]
        );
    }

    #[test]
    fn groups_stop_at_the_write_and_byte_limits() {
        let many = (0..MAX_GROUP_WRITES + 1)
            .map(|i| put(&i.to_string()))
            .collect();
        assert_eq!(sizes_of(many), vec![MAX_GROUP_WRITES, 1]);
        let big = |k: &str| Command::Put {
            key: k.into(),
            value: vec![0; MAX_GROUP_BYTES / 2],
            ttl_ms: 0,
        };
        assert_eq!(sizes_of(["a", "b", "c"].map(big).to_vec()), vec![1, 1, 1]);
    }

    #[test]
    fn a_full_queue_refuses_writes_until_it_drains() {
        let big = |k: &str| Command::Put {
            key: k.into(),
            value: vec![0; MAX_QUEUED_BYTES / 4],
            ttl_ms: 0,
        };
        let mut state = State::default();
        let mut receivers = Vec::new();
        for k in ["a", "b", "c"] {
            let (pending, rx) = waiting(big(k));
            state.push(pending).unwrap();
            receivers.push(rx);
        }
        let (fourth, _rx) = waiting(big("d"));
        let refused = state.push(fourth);
        assert!(
            matches!(refused, Err(ProposeError::Overloaded { .. })),
            "the fourth quarter does not fit"
        );
        // A caller that stopped waiting frees its room.
        drop(receivers.remove(0));
        let (fourth, _rx) = waiting(big("d"));
        state.push(fourth).unwrap();
        assert_eq!(
            state.take_group().len(),
            1,
            "b goes alone (too big to group)"
        );
        assert_eq!(state.queue.len(), 2);
        assert_eq!(
            state.queued_bytes,
            state
                .queue
                .iter()
                .map(|p| p.request.approx_bytes())
                .sum::<usize>()
        );
    }

    #[test]
    fn writes_nobody_waits_for_are_not_proposed() {
        let (first, _first_rx) = waiting(put("a"));
        let (abandoned, abandoned_rx) = waiting(put("a"));
        let (last, _last_rx) = waiting(put("b"));
        drop(abandoned_rx);
        let mut queue: VecDeque<_> = vec![first, abandoned, last].into();
        let group = take_group(&mut queue);
        let keys: Vec<_> = group.iter().map(|p| p.request.command.keys()).collect();
        assert_eq!(keys, vec![Some(vec![&b"a"[..]]), Some(vec![&b"b"[..]])]);
        assert!(queue.is_empty());
    }
}
