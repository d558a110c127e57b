//! Changes of the cluster map after bootstrap (docs/design/elastic.md,
//! "Meta commands"). Each is one command in the meta shard's log, checked
//! in apply against the map it applies to, so an operator's command, a
//! node's join and the controller's steps interleave without
//! read-modify-write races; a refused command changes nothing and says why.

use atoll_proto::v1::{ClusterMap, Node, NodeState};
use serde::{Deserialize, Serialize};

/// A node's place in its life: `Joining → Up ⇄ Draining → Removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    Joining,
    Up,
    Draining,
    Removed,
}

impl Lifecycle {
    /// The state a map stores for a node. Maps written before node states
    /// were used have every node unspecified, which means up.
    pub fn of(node: &Node) -> Lifecycle {
        NodeState::try_from(node.state)
            .ok()
            .and_then(Lifecycle::from_proto)
            .unwrap_or(Lifecycle::Up)
    }

    /// The lifecycle state a request names; none for `UNSPECIFIED`.
    pub fn from_proto(state: NodeState) -> Option<Lifecycle> {
        match state {
            NodeState::Joining => Some(Lifecycle::Joining),
            NodeState::Up => Some(Lifecycle::Up),
            NodeState::Draining => Some(Lifecycle::Draining),
            NodeState::Removed => Some(Lifecycle::Removed),
            NodeState::Unspecified => None,
        }
    }

    pub fn proto(self) -> NodeState {
        match self {
            Lifecycle::Joining => NodeState::Joining,
            Lifecycle::Up => NodeState::Up,
            Lifecycle::Draining => NodeState::Draining,
            Lifecycle::Removed => NodeState::Removed,
        }
    }
}

/// One change of the cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A new node: it gets the next node id (ids are never reused), in
    /// state `Joining`. A retry with the same `token` gets the same id.
    RegisterNode {
        island: String,
        address: String,
        capacity: u64,
        token: u64,
    },
    /// Moves a node along its lifecycle. `dead` removes a node from any
    /// state at once (one that will not come back); otherwise a node is
    /// removed only once drained, holding no replica.
    SetNodeState {
        node: u64,
        state: Lifecycle,
        dead: bool,
    },
    /// A node's relative capacity, which placement weighs.
    SetCapacity { node: u64, capacity: u64 },
}

impl MetaCommand {
    /// The command's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaCommand::RegisterNode { .. } => "register-node",
            MetaCommand::SetNodeState { .. } => "set-node-state",
            MetaCommand::SetCapacity { .. } => "set-capacity",
        }
    }
}

/// What a meta command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The map changed (its version is one more than before).
    Changed,
    /// The map already said so: nothing changed.
    AlreadyDone,
}

/// Whether node `node` holds a replica of any shard of `map`.
fn holds_replicas(map: &ClusterMap, node: u64) -> bool {
    (map.meta.iter().chain(&map.shards))
        .flat_map(|shard| &shard.replicas)
        .any(|replica| replica.node_id == node)
}

fn node_mut(map: &mut ClusterMap, id: u64) -> Result<&mut Node, String> {
    map.nodes
        .iter_mut()
        .find(|n| n.id == id)
        .ok_or_else(|| format!("node {id} is not in the cluster"))
}

/// The id the next registered node gets: above every id the map has ever
/// held (removed nodes stay in it as tombstones).
fn next_node_id(map: &ClusterMap) -> u64 {
    let above_all = map.nodes.iter().map(|n| n.id + 1).max().unwrap_or(1);
    map.next_node_id.max(above_all)
}

/// Applies `command` to `map` (in place), or says why it may not. The
/// caller bumps the map's version when it changed. For `RegisterNode`,
/// the returned id is the node's.
pub fn apply(map: &mut ClusterMap, command: &MetaCommand) -> Result<(Change, Option<u64>), String> {
    match command {
        MetaCommand::RegisterNode {
            island,
            address,
            capacity,
            token,
        } => {
            if *token == 0 || island.is_empty() || address.is_empty() || *capacity == 0 {
                return Err(
                    "a joining node needs a token, an island, an address and a capacity above 0"
                        .into(),
                );
            }
            if let Some(known) = map.nodes.iter().find(|n| n.join_token == *token) {
                return Ok((Change::AlreadyDone, Some(known.id)));
            }
            let taken = map
                .nodes
                .iter()
                .find(|n| n.address == *address && Lifecycle::of(n) != Lifecycle::Removed);
            if let Some(taken) = taken {
                return Err(format!(
                    "address {address} is node {}'s; remove that node first",
                    taken.id
                ));
            }
            let id = next_node_id(map);
            map.nodes.push(Node {
                id,
                island: island.clone(),
                address: address.clone(),
                capacity: *capacity,
                state: NodeState::Joining as i32,
                join_token: *token,
            });
            map.next_node_id = id + 1;
            Ok((Change::Changed, Some(id)))
        }
        MetaCommand::SetNodeState { node, state, dead } => {
            let holds = holds_replicas(map, *node);
            let entry = node_mut(map, *node)?;
            let from = Lifecycle::of(entry);
            if from == *state {
                return Ok((Change::AlreadyDone, None));
            }
            use Lifecycle::*;
            let allowed = match (from, *state) {
                (Removed, _) => {
                    return Err(format!(
                    "node {node} is removed; a removed node never comes back (ids are not reused)"
                ))
                }
                (_, Removed) if *dead => true,
                (Draining, Removed) if holds => {
                    return Err(format!(
                    "node {node} still holds replicas; it is removed once drained (or with --dead)"
                ))
                }
                (Joining, Up) | (Up, Draining) | (Draining, Up) | (Draining, Removed) => true,
                _ => false,
            };
            if !allowed {
                return Err(format!("node {node} cannot go from {from:?} to {state:?}"));
            }
            entry.state = state.proto() as i32;
            Ok((Change::Changed, None))
        }
        MetaCommand::SetCapacity { node, capacity } => {
            if *capacity == 0 {
                return Err("capacity must be above 0 (drain a node to empty it)".into());
            }
            let entry = node_mut(map, *node)?;
            if Lifecycle::of(entry) == Lifecycle::Removed {
                return Err(format!("node {node} is removed"));
            }
            if entry.capacity == *capacity {
                return Ok((Change::AlreadyDone, None));
            }
            entry.capacity = *capacity;
            Ok((Change::Changed, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_proto::v1::{Replica, Shard};

    use super::*;

    fn node(id: u64, island: &str) -> Node {
        Node {
            id,
            island: island.into(),
            address: format!("10.0.0.{id}:7000"),
            capacity: 1,
            state: NodeState::Up as i32,
            join_token: 0,
        }
    }

    /// Three nodes; node 1 holds the one shard's only replica.
    fn map() -> ClusterMap {
        ClusterMap {
            map_version: 3,
            nodes: vec![node(1, "a"), node(2, "b"), node(3, "c")],
            shards: vec![Shard {
                id: 1,
                replicas: vec![Replica {
                    replica_id: 10,
                    node_id: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn register(token: u64, address: &str) -> MetaCommand {
        MetaCommand::RegisterNode {
            island: "d".into(),
            address: address.into(),
            capacity: 2,
            token,
        }
    }

    fn set_state(node: u64, state: Lifecycle, dead: bool) -> MetaCommand {
        MetaCommand::SetNodeState { node, state, dead }
    }

    #[test]
    fn a_joining_node_gets_a_new_id_once_per_token() {
        let mut m = map();
        let (change, id) = apply(&mut m, &register(77, "10.0.0.9:7000")).unwrap();
        assert_eq!((change, id), (Change::Changed, Some(4)));
        assert_eq!(Lifecycle::of(&m.nodes[3]), Lifecycle::Joining);
        let before = m.clone();
        let again = apply(&mut m, &register(77, "10.0.0.9:7000")).unwrap();
        assert_eq!(again, (Change::AlreadyDone, Some(4)), "a retried join");
        assert_eq!(m, before);
        let taken = apply(&mut m, &register(78, "10.0.0.9:7000")).unwrap_err();
        assert!(taken.contains("is node 4's"), "{taken}");
        assert!(apply(&mut m, &register(0, "x:1")).is_err(), "no token");
    }

    #[test]
    fn ids_of_removed_nodes_are_never_reused() {
        let mut m = map();
        apply(&mut m, &set_state(3, Lifecycle::Removed, true)).unwrap();
        let (_, id) = apply(&mut m, &register(5, "10.0.0.3:7000")).unwrap();
        assert_eq!(
            id,
            Some(4),
            "the removed node's address may be reused, its id not"
        );
        let back = apply(&mut m, &set_state(3, Lifecycle::Up, false)).unwrap_err();
        assert!(back.contains("never comes back"), "{back}");
        let mut emptied = m.clone();
        emptied.nodes.retain(|n| n.id != 4);
        emptied.next_node_id = 5;
        let (_, id) = apply(&mut emptied, &register(6, "x:1")).unwrap();
        assert_eq!(id, Some(5), "next_node_id counts past ids no longer listed");
    }

    #[test]
    fn node_states_follow_the_lifecycle() {
        let mut m = map();
        let refused = apply(&mut m, &set_state(2, Lifecycle::Removed, false)).unwrap_err();
        assert!(
            refused.contains("cannot go from Up to Removed"),
            "{refused}"
        );
        apply(&mut m, &set_state(2, Lifecycle::Draining, false)).unwrap();
        apply(&mut m, &set_state(2, Lifecycle::Removed, false)).unwrap();

        apply(&mut m, &set_state(1, Lifecycle::Draining, false)).unwrap();
        let busy = apply(&mut m, &set_state(1, Lifecycle::Removed, false)).unwrap_err();
        assert!(busy.contains("still holds replicas"), "{busy}");
        assert_eq!(
            apply(&mut m, &set_state(1, Lifecycle::Draining, false)).unwrap(),
            (Change::AlreadyDone, None)
        );
        apply(&mut m, &set_state(1, Lifecycle::Up, false)).unwrap();
        let missing = apply(&mut m, &set_state(9, Lifecycle::Up, false)).unwrap_err();
        assert!(missing.contains("not in the cluster"), "{missing}");
    }

    #[test]
    fn capacity_is_positive_and_only_for_nodes_in_the_cluster() {
        let mut m = map();
        apply(
            &mut m,
            &MetaCommand::SetCapacity {
                node: 2,
                capacity: 4,
            },
        )
        .unwrap();
        assert_eq!(m.nodes[1].capacity, 4);
        let zero = MetaCommand::SetCapacity {
            node: 2,
            capacity: 0,
        };
        assert!(apply(&mut m, &zero).is_err());
        apply(&mut m, &set_state(3, Lifecycle::Removed, true)).unwrap();
        let removed = MetaCommand::SetCapacity {
            node: 3,
            capacity: 2,
        };
        assert!(apply(&mut m, &removed).unwrap_err().contains("removed"));
    }
}
