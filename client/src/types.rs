//! Request and response types of the client API.

use atoll_proto::v1::{self as wire, batch_op};

/// How a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// By the shard's leader after a ReadIndex round: sees every write
    /// acknowledged before the read started.
    #[default]
    Linearizable,
    /// By any replica, nearest island first; may miss recent writes.
    Stale,
}

impl Consistency {
    pub(crate) fn wire(self) -> i32 {
        match self {
            Consistency::Linearizable => wire::ReadConsistency::Linearizable as i32,
            Consistency::Stale => wire::ReadConsistency::Stale as i32,
        }
    }
}

/// What a compare-and-swap expects to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key's current version; `Version(0)` means "does not exist".
    Version(u64),
    /// The key's current value.
    Value(Vec<u8>),
}

/// One operation of an atomic [`Client::batch`](crate::Client::batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `value` under `key`, expiring after `ttl_ms` (0 = never).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Time to live in milliseconds; 0 = no expiry.
        ttl_ms: u64,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// The batch applies only if `key` is at `version` (0 = absent).
    Check {
        /// The key.
        key: Vec<u8>,
        /// Its expected version.
        version: u64,
    },
}

impl BatchOp {
    /// A put without TTL.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        BatchOp::Put {
            key: key.into(),
            value: value.into(),
            ttl_ms: 0,
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        BatchOp::Delete { key: key.into() }
    }

    /// A version check.
    pub fn check(key: impl Into<Vec<u8>>, version: u64) -> Self {
        BatchOp::Check {
            key: key.into(),
            version,
        }
    }

    /// The key the operation names.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } | BatchOp::Check { key, .. } => key,
        }
    }

    pub(crate) fn wire(&self) -> wire::BatchOp {
        let op = match self.clone() {
            BatchOp::Put { key, value, ttl_ms } => {
                batch_op::Op::Put(wire::PutOp { key, value, ttl_ms })
            }
            BatchOp::Delete { key } => batch_op::Op::Delete(wire::DeleteOp { key }),
            BatchOp::Check { key, version } => batch_op::Op::Check(wire::CheckOp {
                key,
                expected_version: version,
            }),
        };
        wire::BatchOp { op: Some(op) }
    }
}

/// One page of a [`Client::scan`](crate::Client::scan).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The keys of this page, in key order.
    pub kvs: Vec<wire::KeyValue>,
    /// Where the next page starts; `None` when the range is done.
    pub resume_key: Option<Vec<u8>>,
}

/// A position in the whole key space, for resuming a
/// [`Client::scan_all`](crate::Client::scan_all). Opaque; it can be stored
/// with [`ScanCursor::as_bytes`] and restored with [`ScanCursor::from_bytes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanCursor(pub(crate) Vec<u8>);

impl ScanCursor {
    /// The beginning of the key space.
    pub fn start() -> Self {
        ScanCursor(0u64.to_be_bytes().to_vec())
    }

    /// The cursor's stored form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A cursor from its stored form.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        ScanCursor(bytes.into())
    }

    /// The hash position the cursor points into.
    pub(crate) fn hash(&self) -> u64 {
        let mut h = [0u8; 8];
        let n = self.0.len().min(8);
        h[..n].copy_from_slice(&self.0[..n]);
        u64::from_be_bytes(h)
    }
}

/// One page of a [`Client::scan_all`](crate::Client::scan_all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanAllPage {
    /// The keys of this page.
    pub kvs: Vec<wire::KeyValue>,
    /// Where to continue; `None` when the whole key space has been read.
    pub next: Option<ScanCursor>,
}
