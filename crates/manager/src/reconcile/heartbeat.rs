//! What a node's heartbeat proves for good ([`newly_established`]) and what the manager
//! answers it: replicas to create and to destroy ([`heartbeat_orders`]).
//!
//! Decides from replicated state only, so every manager that takes over answers the same.
//! Must never order the destruction of a replica of a group whose members or target include
//! the node, nor of a group the state does not know.

use std::collections::BTreeSet;

use tessera_proto::control::{GroupSpec, NodeHeartbeat, Role};

use crate::state::State;

/// Groups `hb` shows with a leader (a replica leading it, or following a known leader) that
/// the state does not record as established yet: the heartbeat handler records them
/// ([`Mutation::SetGroupsEstablished`](crate::state::Mutation::SetGroupsEstablished))
/// before it answers. Groups the state does not know are left out.
pub fn newly_established<'a>(
    state: &'a State,
    hb: &'a NodeHeartbeat,
) -> impl Iterator<Item = u64> + 'a {
    hb.groups
        .iter()
        .filter(|g| g.role == Role::Leader || g.leader != 0)
        .map(|g| g.group_id)
        .filter(|id| state.group(*id).is_some_and(|g| !g.established))
}

/// What the manager tells a node in its heartbeat ack: replicas to create and replicas to
/// destroy.
///
/// - Create: every group the node does not report that wants it as a voter (its members,
///   or its target during a move).
///   It joins (starts empty, waits for the leader's snapshot, never campaigns) when it is
///   being added, or when the group is established (has had a leader): a member that lost
///   its replica must not come back as a fresh voter with an empty log, which could elect a
///   replica missing committed entries. Otherwise the group is new and it is one of the
///   initial voters. `established` is replicated state, not what this manager happened to
///   hear, so every manager that takes over decides the same.
/// - Destroy: groups the node reports that the state knows and of which it is neither a
///   member nor a move target. A group the manager does not know is left alone: a wiped
///   or stale manager database must not destroy data.
pub fn heartbeat_orders(
    state: &State,
    node: u64,
    reported: &BTreeSet<u64>,
) -> (Vec<GroupSpec>, Vec<u64>) {
    let create = state
        .groups()
        .filter(|g| !reported.contains(&g.id))
        // A member a move is removing is not re-created: it may just have applied its
        // removal, before the manager heard the move is done.
        .filter(|g| g.wanted().contains(&node))
        .map(|g| {
            let joining = !g.members.contains(&node) || g.established;
            state.group_spec(g, joining)
        })
        .collect();
    let remove = reported
        .iter()
        .copied()
        .filter(|id| {
            state
                .group(*id)
                .is_some_and(|g| !g.members_and_target().contains(&node))
        })
        .collect();
    (create, remove)
}
