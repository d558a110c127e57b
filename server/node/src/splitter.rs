//! Splits, carried out by the meta leader's controller (docs/design/
//! elastic.md, "Splits"). A split record in the map names the shard, the
//! split point, the child's shard id and a child replica id per voter. Each
//! step asks the shard's leader to apply the split (one entry of the
//! shard's log; a retry finds it applied and says so), then records it in
//! the map (`FinishSplit`): the shard narrowed, the child after it. A new
//! meta leader resumes a split where it stands, since both steps are
//! idempotent.

use std::collections::HashMap;

use atoll_proto::v1::{self as wire, ClusterMap, SplitRequest};
use atoll_proto::ShardId;
use atoll_raft::meta_command::MetaCommand;
use atoll_raft::{Command, Outcome, Replica, WriteId};

use crate::cluster_service::middle;
use crate::node::Node;
use crate::shard_admin::on_leader;

/// One step of a split in progress.
pub(crate) async fn advance(node: &Node, meta: &Replica, map: &ClusterMap, record: &wire::Split) {
    let shard = ShardId(record.shard_id);
    let request = SplitRequest {
        shard_id: record.shard_id,
        at: record.at,
        child_shard_id: record.child_shard_id,
        replicas: record.replicas.clone(),
    };
    let applied = on_leader(map, shard, |mut c| {
        let request = request.clone();
        async move { c.split(request).await.map(|r| r.into_inner()) }
    })
    .await;
    let command = match applied {
        Ok(answer) => {
            tracing::info!(shard = %shard, child = record.child_shard_id, at = record.at, already = answer.already, "split applied by the shard");
            MetaCommand::FinishSplit {
                shard: record.shard_id,
            }
        }
        Err(why) => MetaCommand::AdvanceSplit {
            shard: record.shard_id,
            stuck: format!("the shard's leader did not apply the split: {why}"),
        },
    };
    let finishing = matches!(command, MetaCommand::FinishSplit { .. });
    match node
        .propose_command(meta, Command::Meta(command), WriteId::Untracked)
        .await
    {
        Ok(Outcome::MapChanged { version, .. }) if finishing => {
            tracing::info!(shard = %shard, child = record.child_shard_id, map_version = version, "split finished");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(shard = %shard, error = %e, "recording a split's step"),
    }
}

/// Begins splitting the data shards larger than `split_bytes` (0: none),
/// by the sizes the nodes last reported (`sizes`: bytes by shard, of its
/// largest replica). A shard with a move or a split in progress waits.
pub(crate) async fn split_large(
    node: &Node,
    meta: &Replica,
    map: &ClusterMap,
    sizes: &HashMap<u64, u64>,
    split_bytes: u64,
) {
    if split_bytes == 0 || map.placement_paused {
        return;
    }
    let busy = |id: u64| {
        map.moves.iter().any(|m| m.shard_id == id) || map.splits.iter().any(|s| s.shard_id == id)
    };
    for shard in &map.shards {
        let bytes = sizes.get(&shard.id).copied().unwrap_or(0);
        if bytes <= split_bytes || busy(shard.id) || shard.range_start == shard.range_last {
            continue;
        }
        let command = MetaCommand::BeginSplit {
            shard: shard.id,
            epoch: shard.epoch,
            at: middle(shard.range_start, shard.range_last),
            reason: "size".into(),
            now_ms: crate::node::now_ms(),
        };
        match node
            .propose_command(meta, Command::Meta(command), WriteId::Untracked)
            .await
        {
            Ok(Outcome::MapChanged { allocated, .. }) => {
                tracing::info!(shard = shard.id, bytes, split_bytes, child = ?allocated, "split started: the shard passed cluster.split_bytes");
            }
            other => tracing::debug!(shard = shard.id, ?other, "split not started"),
        }
    }
}
