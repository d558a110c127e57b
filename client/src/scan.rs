//! Scans: one hash tag in key order, and the whole key space shard by
//! shard.

use atoll_proto::v1 as wire;
use atoll_proto::ShardId;

use crate::client::{request, Client};
use crate::error::{Error, Result};
use crate::router::{CallKind, Target};
use crate::types::{Consistency, ScanAllPage, ScanCursor, ScanPage};
use atoll_proto::keyhash::key_hash;

impl Client {
    /// Keys of one hash tag in key order, from `start` (inclusive) to `end`
    /// (exclusive; empty = the tag's last key), at most `limit` per page.
    pub async fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<ScanPage> {
        let (start, end) = (start.as_ref(), end.as_ref());
        let target = Target::Owner(vec![key_hash(start)]);
        let resp = self
            .router
            .call_to(&target, CallKind::LeaderRead, |mut c, shard, t| {
                let msg = wire::ScanRequest {
                    shard_id: shard.get(),
                    start: start.to_vec(),
                    end: end.to_vec(),
                    limit,
                    consistency: Consistency::Linearizable.wire(),
                };
                async move { c.scan(request(msg, t)).await.map(|r| r.into_inner()) }
            })
            .await?;
        let resume_key = (!resp.resume_key.is_empty()).then_some(resp.resume_key);
        Ok(ScanPage {
            kvs: resp.kvs,
            resume_key,
        })
    }

    /// One page of the whole key space (in storage order, not key order),
    /// from `cursor` (`None` = the beginning). Each shard page is
    /// linearizable; keys that exist for the whole scan are returned exactly
    /// once, while shards keep serving writes.
    pub async fn scan_all(&self, cursor: Option<&ScanCursor>, limit: u32) -> Result<ScanAllPage> {
        let mut position = cursor.cloned().unwrap_or_else(ScanCursor::start);
        loop {
            let map = self.router.current_map().await?;
            let shard = map
                .shard_for_hash(position.hash())
                .cloned()
                .ok_or_else(|| {
                    Error::StaleMap(format!("no shard owns hash {:#x}", position.hash()))
                })?;
            let shard_id = ShardId(shard.id);
            let msg = wire::ScanAllRequest {
                shard_id: shard.id,
                cursor: position.0.clone(),
                limit,
                consistency: Consistency::Linearizable.wire(),
            };
            let resp = self
                .router
                .call(shard_id, CallKind::LeaderRead, |mut c, t| {
                    let msg = msg.clone();
                    async move { c.scan_all(request(msg, t)).await.map(|r| r.into_inner()) }
                })
                .await?;
            // The replica may own less than the map says: a split it
            // applied that this map does not show yet.
            let last = resp
                .owned_last
                .map_or(shard.range_last, |owned| owned.min(shard.range_last));
            let next_shard = last
                .checked_add(1)
                .map(|h| ScanCursor(h.to_be_bytes().to_vec()));
            let next = if resp.shard_done {
                next_shard
            } else {
                Some(ScanCursor(resp.cursor))
            };
            if !resp.kvs.is_empty() || next.is_none() {
                return Ok(ScanAllPage {
                    kvs: resp.kvs,
                    next,
                });
            }
            position = next.unwrap_or_default();
        }
    }
}
