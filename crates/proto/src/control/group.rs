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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode, encode};

    fn spec(joining: bool, min_term: u64) -> GroupSpec {
        GroupSpec {
            group_id: 3,
            peers: vec![
                PeerInfo {
                    node_id: 1,
                    addr: "n1:7500".into(),
                },
                PeerInfo {
                    node_id: 2,
                    addr: "n2:7500".into(),
                },
            ],
            joining,
            min_term,
        }
    }

    #[test]
    fn specs_round_trip() {
        assert_round_trips(&spec(false, 0));
        assert_round_trips(&spec(true, 9));
    }

    /// A spec with no `min_term` is sent without it, as managers from before it did, and
    /// a spec from such a manager (no `joining` either) reads as a founding member's.
    #[test]
    fn specs_without_the_later_fields_are_those_of_older_managers() {
        let wire = encode(&spec(false, 0));
        assert!(!String::from_utf8_lossy(&wire).contains("min_term"));
        let old = br#"{"group_id":3,"peers":[{"node_id":1,"addr":"n1:7500"}]}"#;
        let got: GroupSpec = decode(old).unwrap();
        assert_eq!((got.joining, got.min_term), (false, 0));
    }
}
