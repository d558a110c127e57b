//! Keeps a shard's entries from before its range last changed away from
//! replicas that joined it later (docs/design/elastic.md, "Splits").
//!
//! Entries up to a split were applied by the old members to the wider
//! range. A replica that joins afterwards (a move's learner) starts with
//! the narrowed range; replaying those entries, it would refuse the writes
//! that spanned both halves and silently lack their keys in its own half.
//! It must start from a snapshot taken after the split. A leader refuses
//! to add a learner while its log still holds such entries
//! ([`crate::Replica::unfit_to_add_members`]), but leadership can move to
//! a replica that has not purged them yet while the learner is still
//! empty. So every leader also refuses to *send* them to a learner: the
//! send fails as unreachable, openraft retries, and once the snapshot
//! policy has purged the log past the split, openraft sends a snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use atoll_proto::ReplicaId;
use openraft::async_runtime::WatchReceiver;
use openraft::type_config::alias::WatchReceiverOf;

use crate::state_machine::OwnedRange;
use crate::types::{AppendEntriesRequest, RaftMetrics, TypeConfig};

type MetricsWatch = WatchReceiverOf<TypeConfig, RaftMetrics>;

/// One replica's guard, shared by its per-target network clients. It
/// also counts the bytes this replica sent each target to catch it up, so
/// a move shows its own progress.
pub struct JoinGuard {
    owned: Arc<OwnedRange>,
    /// Set once the replica's Raft exists (it is created after its network).
    metrics: OnceLock<MetricsWatch>,
    /// Snapshot chunk bytes and learner entry bytes sent, per target, since
    /// this replica started.
    sent: Mutex<HashMap<ReplicaId, u64>>,
}

impl JoinGuard {
    pub fn new(owned: Arc<OwnedRange>) -> Self {
        Self {
            owned,
            metrics: OnceLock::new(),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// `bytes` more were sent to `target` to catch it up.
    pub fn count_sent(&self, target: ReplicaId, bytes: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        *sent.entry(target).or_default() += bytes;
    }

    /// Bytes sent to `target` to catch it up (see [`Self::count_sent`]).
    pub fn sent_to(&self, target: ReplicaId) -> u64 {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(&target).copied().unwrap_or(0)
    }

    /// Lets the guard read the replica's membership.
    pub fn watch(&self, metrics: MetricsWatch) {
        let _ = self.metrics.set(metrics);
    }

    /// Whether `target` is a learner of the replica's membership: a move's
    /// new replica, catching up (its entries are paced like snapshots).
    pub fn is_learner(&self, target: ReplicaId) -> bool {
        self.metrics.get().is_some_and(|metrics| {
            (metrics.borrow_watched().membership_config.membership())
                .learner_ids()
                .any(|id| id == target)
        })
    }

    /// Why `rpc` must not go to `target`, if it must not.
    pub fn refuses(&self, target: ReplicaId, rpc: &AppendEntriesRequest) -> Option<String> {
        let since = self.owned.since();
        let first = rpc.entries.first().map(|e| e.log_id.index)?;
        if !holds_entries_before_range_change(since, first) {
            return None;
        }
        self.is_learner(target).then(|| {
            format!(
                "learner {target} would get entries from index {first}, at or before the range \
                 change at index {since}: it must start from a snapshot taken after it, once the \
                 log is purged"
            )
        })
    }
}

/// Whether entries starting at index `first` include some at or before the
/// range change at `since` (0: the range never changed).
fn holds_entries_before_range_change(since: u64, first: u64) -> bool {
    since > 0 && first <= since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_up_to_the_range_change_are_held_back() {
        assert!(
            !holds_entries_before_range_change(0, 1),
            "a range never changed"
        );
        assert!(holds_entries_before_range_change(100, 1));
        assert!(holds_entries_before_range_change(100, 100));
        assert!(!holds_entries_before_range_change(100, 101));
    }
}
