//! The deterministic tie-break: a rendezvous (highest-random-weight) score
//! for each (shard, node) pair.
//!
//! When two nodes are equally good for a shard, the one with the higher score
//! wins. Scores are a fixed mix of the two ids (SplitMix64's finalizer), so
//! they are the same on every platform and in every release, and they spread
//! ties evenly instead of always favouring the lowest node id.

use atoll_proto::{NodeId, ShardId};

/// The score of `node` for `shard`.
pub(crate) fn score(shard: ShardId, node: NodeId) -> u64 {
    mix(mix(shard.0 ^ 0x243f_6a88_85a3_08d3) ^ node.0)
}

/// SplitMix64's output function: a bijection that scrambles every bit.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_fixed_forever() {
        // Changing these values would move replicas on upgrade.
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(score(ShardId(1), NodeId(2)), 0xc7d3_60a7_e6cc_d4b8);
    }

    #[test]
    fn ties_are_won_by_different_nodes_for_different_shards() {
        let nodes: Vec<NodeId> = (0..10).map(NodeId).collect();
        let mut winners = std::collections::BTreeSet::new();
        for s in 0..200 {
            let best = nodes.iter().max_by_key(|&&n| score(ShardId(s), n)).unwrap();
            winners.insert(*best);
        }
        assert_eq!(winners.len(), 10);
    }
}
