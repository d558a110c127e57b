//! Applying a split (docs/design/elastic.md, "Splits").
//!
//! Data keys begin with their hash, so a split moves no data: at the split
//! entry's log id `L`, each replica of the shard narrows its own range to
//! `[first, at)` and writes, in the same synced batch, the whole state of
//! its child replica on the same node as of `L`: applied log id and
//! membership (the shard's voters mapped to their children), range, log
//! clock, sessions and dedup rows (so a write retried across the split is
//! still answered once), the expiry-index rows of the child's half, and a
//! Raft state whose log is purged up to `L`. Every child replica starts
//! from the same state at the same `L`, and the child's entries (and so
//! its versions, `index × 256 + position`) come after every entry of the
//! parent that wrote its keys.

use std::collections::{BTreeMap, BTreeSet};

use atoll_proto::ReplicaId;
use atoll_storage::keys::{self, apply_tag};
use atoll_storage::{Cf, EngineError, WriteBatch};

use super::dedup::{self, DedupTable};
use super::range::write_range;
use super::sessions::{self, SessionTable};
use super::{ttl, AppliedState, ShardKind, StateMachine};
use crate::codec::encode;
use crate::command::{Outcome, SplitCommand};
use crate::log_store::LogStore;
use crate::types::{LogId, Membership, ReplicaNode, StoredMembership};

/// What a split entry does to the replica applying it.
enum Plan {
    /// Narrow `[first, last]` at the split point, seeding the child under
    /// this membership.
    Split {
        first: u64,
        last: u64,
        child: Membership,
    },
    /// The range already ends before the split point.
    Already,
}

impl StateMachine {
    /// Applies the split entry at `log_id`, alone, in a synced batch of its
    /// own (the entries before it have landed, so the engine holds the
    /// state the child starts from).
    pub(super) fn apply_split(
        &mut self,
        log_id: LogId,
        now_ms: u64,
        split: &SplitCommand,
    ) -> Result<Outcome, EngineError> {
        self.applied.last_applied = Some(log_id);
        self.clock_ms = self.clock_ms.max(now_ms);
        let mut batch = WriteBatch::new();
        let outcome = match self.plan_split(split) {
            Err(reason) => Outcome::Rejected { reason },
            Ok(Plan::Already) => Outcome::Split { already: true },
            Ok(Plan::Split { first, last, child }) => {
                self.seed_child(log_id, split, (first, last), child, &mut batch)?;
                Outcome::Split { already: false }
            }
        };
        ttl::write_clock(self.replica, self.clock_ms, &mut batch);
        batch.put(Cf::ApplyState, self.applied_key(), encode(&self.applied)?);
        // Synced: the child's state is in no log; once it runs, nothing
        // may bring the parent back to before the split.
        self.engine.write(batch, true)?;
        if let Outcome::Split { already: false } = outcome {
            self.kind = ShardKind::Data {
                first: self.kind.range().map_or(0, |(first, _)| first),
                last: split.at - 1,
            };
            self.owned.set(self.kind, log_id.index);
        }
        self.published_clock.applied(self.clock_ms);
        Ok(outcome)
    }

    /// Checks a split against this replica's range and membership.
    fn plan_split(&self, split: &SplitCommand) -> Result<Plan, String> {
        let ShardKind::Data { first, last } = self.kind else {
            return Err("only data shards split".into());
        };
        if last.checked_add(1) == Some(split.at) {
            return Ok(Plan::Already);
        }
        if split.at <= first || split.at > last {
            return Err(format!(
                "split point {:#x} is not inside the shard's range [{first:#x}, {last:#x}]",
                split.at
            ));
        }
        let configs = self.applied.membership.membership().get_joint_config();
        let [voters] = configs.as_slice() else {
            return Err("the shard is changing its voters".into());
        };
        let named: BTreeSet<ReplicaId> = split.replicas.iter().map(|r| r.parent).collect();
        if *voters != named || named.len() != split.replicas.len() {
            return Err(format!(
                "the split names replicas {named:?}, the shard's voters are {voters:?}"
            ));
        }
        let nodes: BTreeMap<ReplicaId, ReplicaNode> = (split.replicas.iter())
            .map(|r| (r.child, ReplicaNode { node: r.node }))
            .collect();
        if nodes.len() != split.replicas.len() {
            return Err("the split names a child replica twice".into());
        }
        let config = vec![nodes.keys().copied().collect()];
        let child = Membership::new(config, nodes).map_err(|e| e.to_string())?;
        Ok(Plan::Split { first, last, child })
    }

    /// Narrows this replica to `[first, at)` and writes its child's state
    /// as of `log_id` (if the split names one on this node).
    fn seed_child(
        &self,
        log_id: LogId,
        split: &SplitCommand,
        (first, last): (u64, u64),
        membership: Membership,
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        let at = split.at;
        write_range(self.replica, (first, at - 1), log_id.index, batch);
        let child = (split.replicas.iter())
            .find(|r| r.parent == self.replica)
            .map(|r| r.child);
        let view = self.engine.snapshot();
        // The expiry-index rows of the child's half leave the parent's
        // index, for the child's.
        let (start, end) = keys::tag_range(self.replica, apply_tag::EXPIRY);
        view.for_each(Cf::ApplyState, &start, &end, &mut |row, _| {
            let Some((expires_at, dkey)) = keys::split_expiry_key(row) else {
                return Err(EngineError::Corruption("short expiry-index row".into()));
            };
            let hash = keys::split_data_key(dkey).map_or(0, |(hash, _)| hash);
            if hash >= at {
                batch.delete(Cf::ApplyState, row.to_vec());
                if let Some(child) = child {
                    batch.put(
                        Cf::ApplyState,
                        keys::expiry_key(child, expires_at, dkey),
                        Vec::new(),
                    );
                }
            }
            Ok(true)
        })?;
        let Some(child) = child else {
            // A replica the split does not name (it cannot be a voter)
            // only narrows: its node gets the child from a snapshot.
            return Ok(());
        };
        let applied = AppliedState {
            last_applied: Some(log_id),
            membership: StoredMembership::new(Some(log_id), membership),
        };
        batch.put(
            Cf::ApplyState,
            keys::tagged_key(child, apply_tag::APPLIED, &[]),
            encode(&applied)?,
        );
        write_range(child, (at, last), log_id.index, batch);
        ttl::write_clock(child, self.clock_ms, batch);
        for session in sessions::stored_sessions(view.as_ref(), self.replica)? {
            SessionTable::restore(child, &session, batch)?;
        }
        let rows = dedup::stored_rows(view.as_ref(), self.replica)?;
        DedupTable::restore(child, &rows, batch)?;
        LogStore::seed(child, log_id, batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atoll_proto::keyhash::key_hash;
    use atoll_proto::{NodeId, ShardId};
    use atoll_storage::{Engine, MemEngine};

    use super::*;
    use crate::command::{Command, Request, SessionWrite, SplitReplica, WriteId};
    use crate::types::{Entry, EntryPayload, LeaderId};

    const PARENT: ReplicaId = ReplicaId(1);
    const CHILD: ReplicaId = ReplicaId(11);

    fn entry(index: u64, payload: EntryPayload) -> Entry {
        Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 3,
                    node_id: PARENT,
                },
                index,
            ),
            payload,
        }
    }

    fn request(command: Command, write_id: WriteId) -> EntryPayload {
        EntryPayload::Normal(Request {
            write_id,
            now_ms: 1_000,
            command,
        })
    }

    fn put(key: &str, ttl_ms: u64) -> Command {
        Command::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ttl_ms,
        }
    }

    fn session_write(seq: u64) -> WriteId {
        WriteId::Session(SessionWrite {
            client_id: 9,
            seq,
            lowest_awaited: seq,
            session_start: 1,
        })
    }

    /// Opens the parent over the whole hash space with three voters.
    fn parent(engine: &Arc<dyn Engine>, dir: &std::path::Path) -> StateMachine {
        let mut sm = StateMachine::open(
            PARENT,
            ShardId(1),
            ShardKind::Data {
                first: 0,
                last: u64::MAX,
            },
            engine.clone(),
            dir,
        )
        .unwrap();
        let voters = [PARENT, ReplicaId(2), ReplicaId(3)];
        let nodes: BTreeMap<_, _> = voters
            .iter()
            .map(|r| (*r, ReplicaNode { node: NodeId(r.0) }))
            .collect();
        let membership = Membership::new(vec![voters.into_iter().collect()], nodes).unwrap();
        sm.apply_entries(vec![entry(1, EntryPayload::Membership(membership))])
            .unwrap();
        sm
    }

    fn split_at(at: u64) -> Command {
        Command::Split(SplitCommand {
            at,
            child: ShardId(2),
            replicas: [1, 2, 3]
                .map(|r| SplitReplica {
                    parent: ReplicaId(r),
                    child: ReplicaId(r + 10),
                    node: NodeId(r),
                })
                .to_vec(),
        })
    }

    /// A key whose hash is at or above `at`, and one below.
    fn keys_around(at: u64) -> (String, String) {
        let find = |above: bool| {
            (0..)
                .map(|i| format!("key-{i}"))
                .find(|k| (key_hash(k.as_bytes()) >= at) == above)
                .unwrap()
        };
        (find(true), find(false))
    }

    #[test]
    fn a_split_narrows_the_parent_and_seeds_the_child_as_of_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut sm = parent(&engine, dir.path());
        let at = 1 << 63;
        let (high, low) = keys_around(at);
        sm.apply_entries(vec![
            entry(2, request(put(&high, 60_000), session_write(1))),
            entry(3, request(put(&low, 0), WriteId::Untracked)),
        ])
        .unwrap();
        let outcomes = sm
            .apply_entries(vec![
                entry(4, request(split_at(at), WriteId::Untracked)),
                // After the split, in the same call: the child's keys are
                // no longer the parent's.
                entry(5, request(put(&high, 0), WriteId::Untracked)),
                entry(6, request(put(&low, 0), WriteId::Untracked)),
            ])
            .unwrap();
        assert_eq!(outcomes[0], Outcome::Split { already: false });
        assert!(
            matches!(outcomes[1], Outcome::Rejected { .. }),
            "{outcomes:?}"
        );
        assert!(matches!(outcomes[2], Outcome::Written { .. }));
        assert_eq!(
            sm.owned.kind(),
            ShardKind::Data {
                first: 0,
                last: at - 1
            }
        );

        // The child, opened from what the split wrote.
        let child = StateMachine::open(
            CHILD,
            ShardId(2),
            ShardKind::Data {
                first: at,
                last: u64::MAX,
            },
            engine.clone(),
            dir.path(),
        )
        .unwrap();
        let split_id = entry(4, EntryPayload::Blank).log_id;
        assert_eq!(child.applied.last_applied, Some(split_id));
        let voters: Vec<_> = child.applied.membership.membership().voter_ids().collect();
        assert_eq!(voters, [ReplicaId(11), ReplicaId(12), ReplicaId(13)]);
        assert_eq!(child.clock_ms, 1_000);
        // The session came along: a retry of write 1 is answered, not
        // applied again.
        assert_eq!(child.sessions.len(), 1);
        // The expiry row of the high key moved to the child.
        let rows = |r: ReplicaId| {
            let (start, end) = keys::tag_range(r, apply_tag::EXPIRY);
            engine.scan(Cf::ApplyState, &start, &end, 100).unwrap()
        };
        assert!(rows(PARENT).is_empty());
        let moved = rows(CHILD);
        assert_eq!(moved.len(), 1);
        let (_, dkey) = keys::split_expiry_key(&moved[0].0).unwrap();
        assert!(keys::split_data_key(dkey).is_some_and(|(hash, _)| hash >= at));
        // The child's log starts after the split entry, in a later term.
        let state = |tag| {
            engine
                .get(Cf::RaftState, &keys::tagged_key(CHILD, tag, &[]))
                .unwrap()
                .is_some()
        };
        use atoll_storage::keys::state_tag;
        assert!(state(state_tag::VOTE) && state(state_tag::PURGED));
    }

    #[test]
    fn a_split_applied_again_changes_nothing_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut sm = parent(&engine, dir.path());
        let at = 1 << 62;
        let outcomes = sm
            .apply_entries(vec![
                entry(2, request(split_at(at), WriteId::Untracked)),
                entry(3, request(split_at(at), WriteId::Untracked)),
                entry(4, request(split_at(at + 5), WriteId::Untracked)),
            ])
            .unwrap();
        assert_eq!(outcomes[0], Outcome::Split { already: false });
        assert_eq!(outcomes[1], Outcome::Split { already: true });
        assert!(matches!(outcomes[2], Outcome::Rejected { .. }));
        let Command::Split(mut wrong) = split_at(at / 2) else {
            unreachable!()
        };
        wrong.replicas.pop();
        let outcomes = sm
            .apply_entries(vec![entry(
                5,
                request(Command::Split(wrong), WriteId::Untracked),
            )])
            .unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Rejected { reason } if reason.contains("voters")),
            "{outcomes:?}"
        );
        assert_eq!(sm.applied.last_applied.map(|l| l.index), Some(5));
    }
}
