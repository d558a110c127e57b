//! What a log entry asks the state machine to do, and what it answered.

use atoll_proto::{NodeId, ReplicaId, ShardId};
use serde::{Deserialize, Serialize};

use crate::meta_command::MetaCommand;

/// A client write as entries of earlier versions identify it: deduplicated
/// by the bounded table of [`DedupTable`](crate::state_machine::DedupTable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LegacyWriteId {
    pub client_id: u64,
    pub seq: u64,
}

/// A client write in its client's session (docs/design/sessions.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionWrite {
    pub client_id: u64,
    /// Unique per client, growing.
    pub seq: u64,
    /// The lowest seq of the client's writes to this shard it still awaits
    /// (at most `seq`): the shard drops the outcomes below it.
    pub lowest_awaited: u64,
    /// Non-zero while the client has no confirmed session on the shard: the
    /// seq from which the shard may open one.
    pub session_start: u64,
}

/// Who sent a write, for exactly-once (Raft thesis section 6.3).
///
/// Encoded as the `Option<LegacyWriteId>` of earlier versions was (postcard
/// writes an `Option` as the variant index of `None` = 0 or `Some` = 1), so
/// their log entries decode unchanged: variants may only be added at the
/// end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WriteId {
    /// Not a client write, or one without an id: applied every time.
    #[default]
    Untracked,
    /// Proposed by an earlier version.
    Legacy(LegacyWriteId),
    Session(SessionWrite),
}

impl WriteId {
    pub fn is_tracked(&self) -> bool {
        !matches!(self, WriteId::Untracked)
    }
}

/// The application payload of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Set for client writes: a retry with the same id is applied once.
    pub write_id: WriteId,
    /// The proposer's wall clock (Unix ms). Applying advances the log clock
    /// to it (never back); every replica and every read judges TTL expiry
    /// by the log clock, so all agree at a given applied index
    /// (docs/design/ttl-and-clocks.md).
    pub now_ms: u64,
    pub command: Command,
}

/// What a CAS compares against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The current version; 0 = the key must not exist.
    Version(u64),
    /// The current value; the key must exist.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One step of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchStep {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Precondition: the key's version is this (0 = absent).
    Check {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected_version: u64,
    },
}

impl BatchStep {
    /// The key the step reads or writes.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchStep::Put { key, .. }
            | BatchStep::Delete { key }
            | BatchStep::Check { key, .. } => key,
        }
    }
}

/// Most writes one log entry carries ([`Command::Group`]).
pub const WRITES_PER_ENTRY: usize = 256;

/// The version a write gets: the log index of its entry times
/// [`WRITES_PER_ENTRY`], plus its position in the entry. So every write of
/// a key has its own version, later writes larger ones, even when one
/// entry writes a key several times.
pub fn write_version(index: u64, position: usize) -> u64 {
    index
        .saturating_mul(WRITES_PER_ENTRY as u64)
        .saturating_add(position as u64)
}

/// A state-machine command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Cas {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: Expected,
        #[serde(with = "serde_bytes")]
        new_value: Option<Vec<u8>>,
        ttl_ms: u64,
    },
    /// All steps apply, or none (if any check fails).
    Batch { steps: Vec<BatchStep> },
    /// Removes expired keys, each only if still at the given version.
    /// Earlier versions proposed it; it is still applied, never proposed.
    Expire { keys: Vec<(Vec<u8>, u64)> },
    /// Meta shard only: replace the cluster map (an encoded
    /// `atoll.v1.ClusterMap`) if its current version is `expected_version`.
    SetClusterMap {
        expected_version: u64,
        #[serde(with = "serde_bytes")]
        map: Vec<u8>,
    },
    /// Independent client writes proposed as one entry (see
    /// [`Proposer`](crate::proposer::Proposer)): applied in order, each with
    /// its own write id and outcome ([`Outcome::Group`]). Their keys are
    /// pairwise disjoint, and none is itself a group or names no keys.
    Group { writes: Vec<Proposal> },
    /// Removes up to `limit` records whose expiry time the log clock has
    /// reached, earliest first, found through the expiry index. Proposed by
    /// the leader's sweeper; its entry's time also moves the clock on.
    ExpireDue { limit: u32 },
    /// Meta shard only: one checked change of the cluster map
    /// ([`MetaCommand`]).
    Meta(MetaCommand),
    /// Data shard only: the shard splits; applied alone, in a synced batch
    /// of its own ([`SplitCommand`]).
    Split(SplitCommand),
}

/// A split of a data shard at hash `at` (docs/design/elastic.md,
/// "Splits"): the shard keeps `[first, at)`; every replica named here
/// seeds its child replica with the state of `[at, last]` as of the split
/// entry, on its own node, so no data moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCommand {
    /// The first hash the child owns.
    pub at: u64,
    /// The child shard.
    pub child: ShardId,
    /// Every voter of the shard, with the child replica it seeds.
    pub replicas: Vec<SplitReplica>,
}

/// One voter of a splitting shard and the child replica on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitReplica {
    pub parent: ReplicaId,
    pub child: ReplicaId,
    pub node: NodeId,
}

/// One write of a [`Command::Group`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub write_id: WriteId,
    pub command: Command,
}

impl Command {
    /// Whether the command may go into a [`Command::Group`]: data commands
    /// may; cluster-map commands and groups go alone.
    pub fn groupable(&self) -> bool {
        !matches!(
            self,
            Command::SetClusterMap { .. }
                | Command::Group { .. }
                | Command::ExpireDue { .. }
                | Command::Meta(_)
                | Command::Split(_)
        )
    }

    /// The keys a data command reads or writes; `None` for commands that
    /// name no keys (cluster map, expiry sweeps) and for groups.
    pub fn keys(&self) -> Option<Vec<&[u8]>> {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => {
                Some(vec![key.as_slice()])
            }
            Command::Batch { steps } => Some(steps.iter().map(BatchStep::key).collect()),
            Command::Expire { keys } => Some(keys.iter().map(|(k, _)| k.as_slice()).collect()),
            Command::SetClusterMap { .. }
            | Command::Group { .. }
            | Command::ExpireDue { .. }
            | Command::Meta(_)
            | Command::Split(_) => None,
        }
    }
}

/// A key's value as a command saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
    pub expires_at_ms: u64,
}

/// What applying a command produced. Stored in the dedup table, so a retried
/// write gets the first answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Blank and membership entries.
    #[default]
    Done,
    Written {
        version: u64,
    },
    Deleted {
        deleted: bool,
        version: u64,
    },
    /// A CAS or batch check failed; nothing was written. `key` is the key
    /// whose check failed and `current` its value.
    CasFailed {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        current: Option<Current>,
    },
    Expired {
        removed: u64,
    },
    /// `SetClusterMap` found another version: nothing changed.
    MapVersionMismatch {
        current_version: u64,
    },
    /// The command could not apply (e.g. a data command on the meta shard).
    Rejected {
        reason: String,
    },
    /// The outcomes of a [`Command::Group`], one per write, in order.
    Group(Vec<Outcome>),
    /// The write's session is gone, or its outcome is no longer kept: it
    /// was not applied (docs/design/sessions.md).
    SessionExpired {
        reason: String,
    },
    /// The write could not be taken (its session could not be opened); it
    /// was not applied. Retryable.
    Overloaded {
        reason: String,
    },
    /// A CAS or batch check failed, as a session row keeps it when the key's
    /// value was too large to keep: its version and expiry, not its value.
    CasFailedValueOmitted {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        version: u64,
        expires_at_ms: u64,
    },
    /// A [`MetaCommand`] applied: the map's version after it, and the id
    /// it allocated (a registered node's, a begun move's).
    MapChanged {
        version: u64,
        allocated: Option<u64>,
    },
    /// A [`Command::Split`] applied: the shard's range ends before the
    /// split point. `already`: it did before this entry (a retried split).
    Split {
        already: bool,
    },
}

impl Command {
    /// The command's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "cas",
            Command::Batch { .. } => "batch",
            Command::Expire { .. } => "expire",
            Command::SetClusterMap { .. } => "set-cluster-map",
            Command::Group { .. } => "group",
            Command::ExpireDue { .. } => "expire-due",
            Command::Meta(command) => command.kind(),
            Command::Split(_) => "split",
        }
    }
}

/// A short form for logs: the kind and the write id, never keys or values.
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.command.kind();
        match (&self.command, self.write_id) {
            (Command::Group { writes }, _) => write!(f, "group of {} writes", writes.len()),
            (_, WriteId::Legacy(LegacyWriteId { client_id, seq }))
            | (_, WriteId::Session(SessionWrite { client_id, seq, .. })) => {
                write!(f, "{kind} {client_id}:{seq}")
            }
            (_, WriteId::Untracked) => f.write_str(kind),
        }
    }
}

impl Request {
    /// Roughly how many bytes the request takes on the wire (keys and
    /// values; fixed overheads ignored). Used to bound message sizes.
    pub fn approx_bytes(&self) -> usize {
        32 + command_bytes(&self.command)
    }
}

/// Bytes of keys and values a command carries.
fn command_bytes(command: &Command) -> usize {
    match command {
        Command::Put { key, value, .. } => key.len() + value.len(),
        Command::Delete { key } => key.len(),
        Command::Cas {
            key,
            expected,
            new_value,
            ..
        } => {
            let expected = match expected {
                Expected::Version(_) => 8,
                Expected::Value(v) => v.len(),
            };
            key.len() + expected + new_value.as_ref().map_or(0, Vec::len)
        }
        Command::Batch { steps } => steps
            .iter()
            .map(|s| match s {
                BatchStep::Put { key, value, .. } => key.len() + value.len(),
                BatchStep::Delete { key } | BatchStep::Check { key, .. } => key.len(),
            })
            .sum(),
        Command::Expire { keys } => keys.iter().map(|(k, _)| k.len() + 8).sum(),
        Command::SetClusterMap { map, .. } => map.len(),
        Command::Group { writes } => writes.iter().map(|w| 16 + command_bytes(&w.command)).sum(),
        Command::ExpireDue { .. } => 4,
        Command::Meta(_) => 64,
        Command::Split(split) => 16 + 24 * split.replicas.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries written before sessions carry an `Option<LegacyWriteId>`
    /// where [`WriteId`] is now: they must decode unchanged.
    #[test]
    fn write_ids_written_by_earlier_versions_decode() {
        let id = LegacyWriteId {
            client_id: 7,
            seq: 300,
        };
        let old = postcard::to_allocvec(&Some(id)).unwrap();
        assert_eq!(old, [1, 7, 0xac, 0x02], "the bytes earlier versions wrote");
        assert_eq!(
            postcard::from_bytes::<WriteId>(&old).unwrap(),
            WriteId::Legacy(id)
        );
        let none = postcard::to_allocvec(&None::<LegacyWriteId>).unwrap();
        assert_eq!(
            postcard::from_bytes::<WriteId>(&none).unwrap(),
            WriteId::Untracked
        );
    }
}
