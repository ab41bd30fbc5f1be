//! A replica group as the manager placed it: its members and where to reach them.
//!
//! Shared by the heartbeat answer, the storage admin RPCs and chunk routes; owns no
//! behaviour.

use serde::{Deserialize, Serialize};

/// A node holding a replica of a group, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node's id.
    pub node_id: u64,
    /// Its data-plane address (`host:port`).
    pub addr: String,
}

/// A replica group's membership, as the manager placed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The group.
    pub group_id: u64,
    /// The nodes hosting its replicas: for a new group, its first voters, this node
    /// among them.
    pub peers: Vec<PeerInfo>,
    /// A replica added to an existing group: it starts empty, never campaigns, and waits
    /// for the leader's snapshot (which tells it the real membership). `peers` then only
    /// tells where the other nodes are.
    #[serde(default)]
    pub joining: bool,
    /// For a joining replica: the newest term the managers know the group reached, at or
    /// after the last membership change they recorded. The replica starts at this term,
    /// so it never answers a leader the group has left behind: its node may have been a
    /// member before (removed, then added back), and a stale leader still counting that
    /// old member would take the empty replica's answers for a majority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_term: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
