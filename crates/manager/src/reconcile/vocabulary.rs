//! The words of reconciliation: the throttles a pass obeys ([`Limits`]), what it looks at
//! ([`Facts`]), what it decides ([`Plan`]: [`Move`]s and [`Transfer`]s, each with its
//! [`Why`]), and small membership helpers shared by the planner and the service.
//!
//! Owns no rule: deciding is the planner's. Must never hold state or do I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use crate::liveness::Liveness;
use crate::state::{Mutation, State};

/// Bounds on the work one reconcile pass may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Moves in flight in the whole cluster.
    pub max_moves: usize,
    /// Moves in flight adding a replica to one node (each one copies a group's data to it).
    pub max_moves_per_node: usize,
}

/// Why a replica moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its node is down.
    Down,
    /// Its node is up but has not hosted the group for longer than the down timeout (its
    /// data was lost, or it never managed to create the replica).
    Lost,
    /// Its node reports the replica stuck (it cannot apply, or was quarantined) for longer
    /// than the down timeout. It holds its node's shared log until it is removed.
    Stuck,
    Draining,
    Rebalance,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Down => "node down",
            Why::Lost => "replica lost on a live node",
            Why::Stuck => "replica stuck on a live node",
            Why::Draining => "node draining",
            Why::Rebalance => "rebalance",
        })
    }
}

/// A membership change to start (or re-aim): the group's voters become `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub group_id: u64,
    /// The voters the group has or was moving to.
    pub from: Vec<u64>,
    pub target: Vec<u64>,
    /// (node leaving, node replacing it, why), one per replaced node.
    pub swaps: Vec<(u64, u64, Why)>,
}

impl Move {
    pub fn mutation(&self) -> Mutation {
        Mutation::SetGroupTarget {
            group_id: self.group_id,
            target: self.target.clone(),
        }
    }
}

/// A leadership hand-over to ask of the current leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub group_id: u64,
    pub from: u64,
    pub to: u64,
    /// `true`: the leader's node is draining; `false`: leader balance.
    pub drain: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub transfers: Vec<Transfer>,
}

/// What one pass looks at. `lost` holds (node, group) pairs of members that are up but have
/// not hosted the group for longer than the down timeout
/// ([`LostTracker`](super::memory::LostTracker)); `settling` holds groups whose leadership
/// was just handed over, left alone until heartbeats show the result.
pub struct Facts<'a> {
    pub state: &'a State,
    pub live: &'a Liveness,
    pub now: Instant,
    pub lost: &'a BTreeSet<(u64, u64)>,
    pub settling: &'a BTreeSet<u64>,
}

/// Whether two lists name the same nodes, in any order.
pub fn same_nodes(a: &[u64], b: &[u64]) -> bool {
    let a: BTreeSet<u64> = a.iter().copied().collect();
    let b: BTreeSet<u64> = b.iter().copied().collect();
    a == b
}

/// `members` with `from` replaced by `to`, in place.
pub(super) fn replace_member(members: &[u64], from: u64, to: u64) -> Vec<u64> {
    members
        .iter()
        .map(|&m| if m == from { to } else { m })
        .collect()
}
