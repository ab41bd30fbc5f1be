//! Which storage calls carry the planned moves on: a `ChangeMembers` to the leader of each
//! moving group whose new nodes already host it ([`drive`]).
//!
//! Pure: decides the calls, never sends them (the reconcile loop does), and never changes
//! a group's target.

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_proto::control::PeerInfo;

use crate::liveness::Liveness;
use crate::state::State;

/// A call to a storage node that drives a move or a hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// Ask `leader` to make the voters exactly `target`.
    ChangeMembers {
        group_id: u64,
        leader: u64,
        target: Vec<PeerInfo>,
    },
}

/// The ChangeMembers calls of this pass: one per moving group whose new nodes all host the
/// group (as joining replicas) and whose leader is known. `hints` are leaders named by
/// `NotLeader` answers, tried before the heartbeats' view.
pub fn drive(
    state: &State,
    live: &Liveness,
    now: Instant,
    hints: &BTreeMap<u64, u64>,
) -> Vec<Drive> {
    let mut out = Vec::new();
    for g in state.groups().filter(|g| !g.target.is_empty()) {
        let joined = g
            .target
            .iter()
            .filter(|n| !g.members.contains(n))
            .all(|n| live.report(*n, g.id).is_some());
        if !joined {
            continue;
        }
        let all = g.members_and_target();
        let hinted = hints
            .get(&g.id)
            .copied()
            .filter(|h| all.contains(h) && !live.is_down(*h, now));
        let Some(leader) = hinted.or_else(|| live.leader(g, now)) else {
            continue;
        };
        out.push(Drive::ChangeMembers {
            group_id: g.id,
            leader,
            target: state.peer_infos(&g.target),
        });
    }
    out
}
