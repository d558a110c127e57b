//! The key-value commands, applied to the `data` column family.
//!
//! One [`Applier`] collects the writes of all entries handed to one `apply`
//! call into one batch; an overlay lets a later entry see an earlier one's
//! writes before the batch lands.
//!
//! Expiry is judged by the log clock handed to [`Applier::apply`], never by
//! a local clock, so every replica computes the same outcome.

use std::collections::{BTreeSet, HashMap, HashSet};

use atoll_proto::keyhash::key_hash;
use atoll_proto::ReplicaId;
use atoll_storage::keys::{data_key_with_hash, expiry_key, expiry_range, split_expiry_key};
use atoll_storage::{Cf, Engine, EngineError, Record, WriteBatch};

use crate::command::{BatchStep, Command, Current, Expected, Outcome};

/// The writes of one `apply` call.
pub struct Applier<'a> {
    engine: &'a dyn Engine,
    replica: ReplicaId,
    /// Hash range `[first, last]` the shard owns; `None` for the meta shard.
    range: Option<(u64, u64)>,
    overlay: HashMap<Vec<u8>, Option<Record>>,
    /// Expiry-index rows this batch added, and those it deleted.
    expiry_added: BTreeSet<Vec<u8>>,
    expiry_deleted: HashSet<Vec<u8>>,
    pub batch: WriteBatch,
}

fn expiry(now_ms: u64, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        0
    } else {
        now_ms.saturating_add(ttl_ms)
    }
}

fn current_of(record: &Record) -> Current {
    Current {
        value: record.value.clone(),
        version: record.version,
        expires_at_ms: record.expires_at_ms,
    }
}

impl<'a> Applier<'a> {
    pub fn new(engine: &'a dyn Engine, replica: ReplicaId, range: Option<(u64, u64)>) -> Self {
        Self {
            engine,
            replica,
            range,
            overlay: HashMap::new(),
            expiry_added: BTreeSet::new(),
            expiry_deleted: HashSet::new(),
            batch: WriteBatch::new(),
        }
    }

    /// The stored record of `key`, expired or not.
    fn stored(&mut self, dkey: &[u8]) -> Result<Option<Record>, EngineError> {
        if let Some(pending) = self.overlay.get(dkey) {
            return Ok(pending.clone());
        }
        match self.engine.get(Cf::Data, dkey)? {
            Some(bytes) => Record::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The live (unexpired at `now_ms`) record of a data key.
    fn live(&mut self, dkey: &[u8], now_ms: u64) -> Result<Option<Record>, EngineError> {
        Ok(self.stored(dkey)?.filter(|r| !r.is_expired(now_ms)))
    }

    /// Writes a record, and its expiry-index row if it has a TTL. A row
    /// left by an earlier write of the key stays until its time comes, and
    /// is then dropped without touching the key ([`Self::expire_due`]).
    fn put(&mut self, dkey: Vec<u8>, record: Record) {
        if record.expires_at_ms != 0 {
            let row = expiry_key(self.replica, record.expires_at_ms, &dkey);
            self.batch.put(Cf::ApplyState, row.clone(), Vec::new());
            self.expiry_deleted.remove(&row);
            self.expiry_added.insert(row);
        }
        self.batch.put(Cf::Data, dkey.clone(), record.encode());
        self.overlay.insert(dkey, Some(record));
    }

    /// Removes up to `limit` records the log clock `clock` has expired,
    /// earliest expiry first, with their index rows; drops index rows of
    /// keys rewritten since. Which rows it takes depends on the state
    /// before the entry only, not on how entries were batched.
    pub fn expire_due(&mut self, clock: u64, limit: u32) -> Result<Outcome, EngineError> {
        let limit = limit as usize;
        let (start, end) = expiry_range(self.replica, clock);
        let stored = self.engine.scan(
            Cf::ApplyState,
            &start,
            &end,
            limit + self.expiry_deleted.len(),
        )?;
        let mut due: BTreeSet<Vec<u8>> = stored
            .into_iter()
            .map(|(row, _)| row)
            .filter(|row| !self.expiry_deleted.contains(row))
            .collect();
        due.extend(self.expiry_added.range(start..end).cloned());
        let mut removed = 0;
        for row in due.into_iter().take(limit) {
            let Some((_, dkey)) = split_expiry_key(&row) else {
                return Err(EngineError::Corruption("short expiry-index row".into()));
            };
            let dkey = dkey.to_vec();
            if self.stored(&dkey)?.is_some_and(|r| r.is_expired(clock)) {
                self.delete(dkey);
                removed += 1;
            }
            self.batch.delete(Cf::ApplyState, row.clone());
            self.expiry_added.remove(&row);
            self.expiry_deleted.insert(row);
        }
        Ok(Outcome::Expired { removed })
    }

    fn delete(&mut self, dkey: Vec<u8>) {
        self.batch.delete(Cf::Data, dkey.clone());
        self.overlay.insert(dkey, None);
    }

    /// A write's first outcome, as its session row kept it, for a retry:
    /// a failed check whose value the row left out gets the key's value
    /// back if the key is still at the version the check saw (so the same
    /// answer as the first), else stays without it.
    pub fn answer_again(&mut self, first: Outcome) -> Result<Outcome, EngineError> {
        let Outcome::CasFailedValueOmitted {
            key,
            version,
            expires_at_ms,
        } = first
        else {
            return Ok(first);
        };
        let record = match self.data_key(&key) {
            Some(dkey) => self.stored(&dkey)?,
            None => None,
        };
        Ok(match record {
            Some(record) if record.version == version => Outcome::CasFailed {
                key,
                current: Some(Current {
                    value: record.value,
                    version,
                    expires_at_ms,
                }),
            },
            _ => Outcome::CasFailedValueOmitted {
                key,
                version,
                expires_at_ms,
            },
        })
    }

    /// The data key of `key`, or `None` if the key is not in this shard.
    fn data_key(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (first, last) = self.range?;
        let hash = key_hash(key);
        (first..=last)
            .contains(&hash)
            .then(|| data_key_with_hash(hash, key))
    }

    /// Applies one data command, which writes `version` (see
    /// [`write_version`](crate::command::write_version)), judging expiry
    /// and computing new expiry times by the log clock `now` (Unix ms).
    pub fn apply(
        &mut self,
        version: u64,
        now: u64,
        command: &Command,
    ) -> Result<Outcome, EngineError> {
        let Some(keys) = command.keys() else {
            return Ok(not_data(command));
        };
        if let Some(stray) = keys.iter().find(|k| self.data_key(k).is_none()) {
            return Ok(Outcome::Rejected {
                reason: format!(
                    "key {:?} is not in this shard",
                    String::from_utf8_lossy(stray)
                ),
            });
        }
        let dkey = |this: &Self, key: &[u8]| this.data_key(key).unwrap_or_default();

        match command {
            Command::Put { key, value, ttl_ms } => {
                let record = Record {
                    version,
                    expires_at_ms: expiry(now, *ttl_ms),
                    value: value.clone(),
                };
                self.put(dkey(self, key), record);
                Ok(Outcome::Written { version })
            }
            Command::Delete { key } => {
                let dk = dkey(self, key);
                let stored = self.stored(&dk)?;
                let deleted = stored.as_ref().is_some_and(|r| !r.is_expired(now));
                if stored.is_some() {
                    self.delete(dk);
                }
                Ok(Outcome::Deleted { deleted, version })
            }
            Command::Cas {
                key,
                expected,
                new_value,
                ttl_ms,
            } => {
                let dk = dkey(self, key);
                let live = self.live(&dk, now)?;
                let matches = match (expected, &live) {
                    (Expected::Version(0), None) => true,
                    (Expected::Version(v), Some(r)) => r.version == *v,
                    (Expected::Value(v), Some(r)) => r.value == *v,
                    _ => false,
                };
                if !matches {
                    return Ok(Outcome::CasFailed {
                        key: key.clone(),
                        current: live.as_ref().map(current_of),
                    });
                }
                match new_value {
                    Some(value) => {
                        let record = Record {
                            version,
                            expires_at_ms: expiry(now, *ttl_ms),
                            value: value.clone(),
                        };
                        self.put(dk, record);
                    }
                    None => self.delete(dk),
                }
                Ok(Outcome::Written { version })
            }
            Command::Batch { steps } => {
                for step in steps {
                    if let BatchStep::Check {
                        key,
                        expected_version,
                    } = step
                    {
                        let live = self.live(&dkey(self, key), now)?;
                        let current = live.as_ref().map_or(0, |r| r.version);
                        if current != *expected_version {
                            return Ok(Outcome::CasFailed {
                                key: key.clone(),
                                current: live.as_ref().map(current_of),
                            });
                        }
                    }
                }
                for step in steps {
                    match step {
                        BatchStep::Put { key, value, ttl_ms } => {
                            let record = Record {
                                version,
                                expires_at_ms: expiry(now, *ttl_ms),
                                value: value.clone(),
                            };
                            self.put(dkey(self, key), record);
                        }
                        BatchStep::Delete { key } => self.delete(dkey(self, key)),
                        BatchStep::Check { .. } => {}
                    }
                }
                Ok(Outcome::Written { version })
            }
            Command::Expire { keys } => {
                let mut removed = 0;
                for (key, expired_version) in keys {
                    let dk = dkey(self, key);
                    if let Some(r) = self.stored(&dk)? {
                        if r.version == *expired_version && r.is_expired(now) {
                            self.delete(dk);
                            removed += 1;
                        }
                    }
                }
                Ok(Outcome::Expired { removed })
            }
            Command::SetClusterMap { .. }
            | Command::Group { .. }
            | Command::ExpireDue { .. }
            | Command::Meta(_)
            | Command::Split(_) => Ok(not_data(command)),
        }
    }
}

/// The outcome of a command that is not one data command.
fn not_data(command: &Command) -> Outcome {
    let reason = match command {
        Command::Group { .. } => "a group of writes cannot hold another group",
        Command::ExpireDue { .. } => "an expiry sweep goes alone",
        Command::Split(_) => "a split goes alone",
        _ => "cluster map commands go to the meta shard",
    };
    Outcome::Rejected {
        reason: reason.into(),
    }
}
