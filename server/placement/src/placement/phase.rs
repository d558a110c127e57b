//! The three balancing phases shared by replica and leader balancing.
//!
//! A node is *over* above its window `[lo, hi]` and *under* below it. Moving
//! one unit from an over node straight to an under node fixes two problems
//! with one move, so that goes first; then the remaining over nodes give to
//! any node with room, then the remaining under nodes take from any node
//! above its floor. Each move shrinks the total distance to the windows, so
//! the phases end.

use super::target::Target;

/// Which nodes give and which take in one balancing phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Over nodes give to under nodes.
    OverToUnder,
    /// Over nodes give to nodes below their ceiling.
    OverToRoom,
    /// Nodes above their floor give to under nodes.
    SpareToUnder,
}

impl Phase {
    /// The phases, in the order they run.
    pub const ALL: [Phase; 3] = [Phase::OverToUnder, Phase::OverToRoom, Phase::SpareToUnder];

    /// Whether a node holding `count` gives in this phase.
    pub fn gives(self, count: usize, target: &Target) -> bool {
        match self {
            Phase::OverToUnder | Phase::OverToRoom => count as u64 > target.hi,
            Phase::SpareToUnder => count as u64 > target.lo,
        }
    }

    /// Whether a node holding `count` takes in this phase.
    pub fn takes(self, count: usize, target: &Target) -> bool {
        match self {
            Phase::OverToUnder | Phase::SpareToUnder => (count as u64) < target.lo,
            Phase::OverToRoom => (count as u64) < target.hi,
        }
    }

    /// Sort key for givers: the furthest over first.
    pub fn urgency(count: usize, target: &Target) -> (u64, u64) {
        let count = count as u64;
        (
            count.saturating_sub(target.hi),
            count.saturating_sub(target.lo),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target = Target {
        ideal: 4.5,
        lo: 4,
        hi: 5,
    };

    #[test]
    fn givers_and_takers_never_overlap() {
        for phase in Phase::ALL {
            for count in 0..10 {
                assert!(!(phase.gives(count, &T) && phase.takes(count, &T)));
            }
        }
    }

    #[test]
    fn windows_decide_who_gives_and_takes() {
        assert!(Phase::OverToUnder.gives(6, &T) && !Phase::OverToUnder.gives(5, &T));
        assert!(Phase::OverToUnder.takes(3, &T) && !Phase::OverToUnder.takes(4, &T));
        assert!(Phase::OverToRoom.takes(4, &T) && !Phase::OverToRoom.takes(5, &T));
        assert!(Phase::SpareToUnder.gives(5, &T) && !Phase::SpareToUnder.gives(4, &T));
    }
}
