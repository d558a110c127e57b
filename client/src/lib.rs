//! The Rust client for Atoll.
//!
//! [`Client`] is `Clone + Send + Sync` and its methods take `&self`. It
//! caches the cluster map and each shard's leader, sends every request
//! straight to the leader, follows `NOT_LEADER` hints and `STALE_MAP`
//! refreshes, and retries reads and writes with jittered backoff under one
//! deadline. Every write carries a `(client_id, seq)` id, so a retried write
//! is applied at most once; when a write's fate is still unknown at the
//! deadline, the call returns [`Error::Ambiguous`] instead of guessing.
//!
//! ```no_run
//! # async fn demo() -> atoll_client::Result<()> {
//! let client = atoll_client::Client::connect(["127.0.0.1:7001"]).await?;
//! let version = client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?.expect("just written");
//! assert_eq!(kv.version, version);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod error;
mod router;
mod scan;
mod session;
mod types;

pub use atoll_proto::v1::{
    ClusterMap, KeyValue, LeaderHint, Limit, ListMovesResponse, Move, MoveState, NodeState,
    PlacementLimits, PlacementPlanResponse, PlannedMove, Split, SplitShardResponse, StatusResponse,
};
pub use client::{Client, ClientOptions};
pub use error::{Error, Result};
pub use types::{BatchOp, Consistency, Expect, ScanAllPage, ScanCursor, ScanPage};

/// Endpoints of the local cluster started by `atoll dev`.
pub const DEV_ENDPOINTS: [&str; 3] = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
