//! Serving a node's gRPC services on one listener.

use std::future::Future;
use std::sync::Arc;

use atoll_proto::v1::cluster_server::ClusterServer;
use atoll_proto::v1::kv_server::KvServer;
use atoll_proto::v1::raft_server::RaftServer;
use atoll_proto::v1::shard_admin_server::ShardAdminServer;
use atoll_raft::network::MAX_RAFT_MESSAGE;
use atoll_raft::RaftService;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::cluster_service::ClusterService;
use crate::kv_service::KvService;
use crate::node::Node;
use crate::shard_admin::ShardAdminService;

/// Largest gRPC message exchanged with clients (a value or read page of at
/// most 8 MiB, or a 4 MiB batch, plus framing).
const MAX_CLIENT_MESSAGE: usize = atoll_proto::limits::MAX_MESSAGE_BYTES;

/// Serves Kv, Cluster and Raft on `listener` until `shutdown` completes.
/// Shutting down waits for the calls in flight; the peers' Raft streams,
/// which would never end, are closed first.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let kv = KvServer::new(KvService::new(node.clone()))
        .max_decoding_message_size(MAX_CLIENT_MESSAGE)
        .max_encoding_message_size(MAX_CLIENT_MESSAGE);
    let cluster = ClusterServer::new(ClusterService::new(node.clone()));
    let shard_admin = ShardAdminServer::new(ShardAdminService::new(node.clone()));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing_tx.send(true);
    };
    let raft = RaftServer::new(RaftService::new(node.clone(), closing))
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    // Small Raft and client messages must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    node.release_elections();
    tonic::transport::Server::builder()
        .add_service(kv)
        .add_service(cluster)
        .add_service(raft)
        .add_service(shard_admin)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
