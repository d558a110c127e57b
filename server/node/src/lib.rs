//! The Atoll node: configuration, the initial cluster map, the replicas a
//! node hosts, and the gRPC services (Kv, Cluster, internal Raft).

mod background;
pub mod bootstrap;
pub mod cluster_service;
pub mod config;
mod controller;
pub mod dev;
pub mod errors;
pub mod identity;
pub mod join;
pub mod kv_service;
pub mod node;
mod planner;
mod scan;
pub mod server;
pub mod shard_admin;
pub use atoll_proto::size;
mod splitter;
mod validate;

pub use config::NodeConfig;
pub use node::Node;
