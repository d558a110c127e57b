//! Id newtypes. Ids are assigned once and never reused: a replica that moves
//! back to a node gets a fresh `ReplicaId`, since reusing one can split a
//! Raft group's brain.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw id, for the wire and for storage keys.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(raw: u64) -> Self {
                Self(raw)
            }
        }
    };
}

id_type!(
    /// A node: one `atoll server` process with one data dir.
    NodeId,
    "n"
);
id_type!(
    /// A shard: one range of the hash space, one Raft group. Shard 0 is the
    /// meta shard.
    ShardId,
    "s"
);
id_type!(
    /// One member of one shard's Raft group (openraft's node id).
    ReplicaId,
    "r"
);

impl ShardId {
    /// The meta shard, which holds the cluster map.
    pub const META: ShardId = ShardId(0);

    /// Whether this is the meta shard.
    pub fn is_meta(self) -> bool {
        self == Self::META
    }
}
