//! What a storage node tells the managers about itself: its registration at start, then its
//! periodic heartbeat (usage, descriptors, recovery, and every hosted replica's Raft state).
//!
//! Owns the reports only; what the manager concludes from them (health, leaders, stuck
//! replicas) is the manager's. Every field added here needs `#[serde(default)]`: nodes are
//! upgraded one at a time.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::{ManagerRequest, StorageRequest};

/// The highest node id: the manager refuses ids above it, so its id counter (one past the
/// highest id seen) never reaches the end of the range, where a new node would be handed
/// an id already taken.
pub const MAX_NODE_ID: u64 = (1 << 63) - 1;

/// What a storage node tells the managers about itself at every start
/// ([`ManagerRequest::RegisterNode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// The id it was given before, kept in its data directory (`None`: a new node, given
    /// the next free id). 0 is refused.
    pub node_id: Option<u64>,
    /// Its zone, from its config (`zone1` by default): recorded and shown in status.
    pub zone: String,
    /// Its rack, from its config: the failure domain a group's replicas are spread over
    /// (never empty).
    pub rack: String,
    /// Data-plane address other nodes and clients connect to (`host:port`).
    pub addr: String,
    /// Size in bytes of the filesystem holding its data directory.
    pub capacity_bytes: u64,
    /// Bytes its chunk files take on disk.
    pub used_bytes: u64,
    /// A random number the node drew for its data directory before it first registered
    /// (0: unknown). A node without an id of its own whose certificate names a node the
    /// manager knows is that node only if this matches (its own first registration, whose
    /// answer it lost); otherwise it is a wiped disk, which must not come back as the
    /// replica the node was.
    #[serde(default)]
    pub disk: u64,
}

/// A storage node's state: its periodic report ([`ManagerRequest::Heartbeat`]) and its
/// answer to [`StorageRequest::Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// The id the node registered with.
    pub node_id: u64,
    /// Size in bytes of the filesystem holding its data directory, now.
    pub capacity_bytes: u64,
    /// Bytes its chunk files take on disk, now.
    pub used_bytes: u64,
    /// Every replica it hosts, in group id order: the manager has it create the groups
    /// missing here and destroy those it no longer belongs to.
    pub groups: Vec<GroupState>,
    /// What it fetched to rebuild replicas (absent from nodes from before these
    /// statistics: all zero).
    #[serde(default)]
    pub recovery: RecoveryStats,
    /// Its open-file limit and open chunks (absent from nodes from before these
    /// statistics: all zero).
    #[serde(default)]
    pub descriptors: Descriptors,
    /// Its scrubbing (absent from nodes from before scrubbing: all zero).
    #[serde(default)]
    pub scrub: super::ScrubStats,
}

/// A storage node's descriptors: its limit, and its open chunks (two descriptors each)
/// against the share of that limit they may hold; past it, idle chunks are closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptors {
    /// The process's open-file limit (raised to the hard limit at start).
    pub limit: u64,
    /// Chunks open now.
    pub chunks_open: u64,
    /// How many chunks may be open at once: the share of `limit` given to chunk files.
    pub chunks_budget: u64,
    /// Idle chunks closed to make room since the node started.
    pub chunks_closed: u64,
    /// Of `chunks_open`, the dirty ones waiting for the next chunk sync to close them
    /// (each still holds its two descriptors). Absent from older nodes: none counted.
    #[serde(default)]
    pub chunks_closing: u64,
}

/// What this node pulled from other nodes to rebuild replicas, since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStats {
    /// Snapshots (copies of a group's chunk files) installed.
    pub snapshots: u64,
    /// Data bytes fetched: only blocks whose checksum differed from the local copy.
    pub bytes_fetched: u64,
    /// Bytes of chunk data compared (the size of what a full copy would have moved).
    pub bytes_compared: u64,
    /// Groups whose snapshot is being fetched now.
    pub in_progress: Vec<u64>,
}

/// A replica's Raft role, as the replica reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Leads its group: proposes writes and serves reads.
    Leader,
    /// Follows a leader, or waits for one (also reported for a stuck replica).
    Follower,
    /// Campaigning for leadership (a pre-vote included).
    Candidate,
}

/// One replica's view of its group, as reported by the node hosting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group.
    pub group_id: u64,
    /// Its Raft role.
    pub role: Role,
    /// Its current Raft term.
    pub term: u64,
    /// The leader this replica knows of (0: none).
    pub leader: u64,
    /// The highest log index it knows committed.
    pub commit: u64,
    /// The highest log index it has applied to its chunk files.
    pub applied: u64,
    /// The membership this replica has applied (empty while a joining replica waits for
    /// its first snapshot).
    #[serde(default)]
    pub voters: Vec<u64>,
    /// The learners of that membership (absent from nodes from before learners were
    /// reported: none).
    #[serde(default)]
    pub learners: Vec<u64>,
    /// Whether that membership is joint (a change under way: the outgoing configuration
    /// is not empty, and `voters` is the union of the old and the new voters, so a
    /// majority of `voters` need not be a majority of either). Absent from older nodes:
    /// not joint.
    #[serde(default)]
    pub joint: bool,
    /// Why this replica cannot serve its group, if it cannot: its apply has been stalled
    /// (a full disk, a corrupt block) for longer than the node tolerates, or the node
    /// quarantined it at start. It still holds the group's log (and may still count
    /// towards commits) until it is removed through a membership change; the manager
    /// replaces it as it would a lost replica, then has it destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode};

    fn state(role: Role, stuck: Option<&str>) -> GroupState {
        GroupState {
            group_id: 3,
            role,
            term: 5,
            leader: 1,
            commit: 40,
            applied: 39,
            voters: vec![1, 2, 3],
            learners: vec![4],
            joint: false,
            stuck: stuck.map(str::to_string),
        }
    }

    fn heartbeat() -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: 1,
            capacity_bytes: 1 << 40,
            used_bytes: 1 << 30,
            groups: vec![
                state(Role::Leader, None),
                state(Role::Follower, Some("apply stalled for 60 s: disk full")),
                state(Role::Candidate, None),
            ],
            recovery: RecoveryStats {
                snapshots: 2,
                bytes_fetched: 4096,
                bytes_compared: 1 << 26,
                in_progress: vec![7],
            },
            descriptors: Descriptors {
                limit: 1 << 20,
                chunks_open: 12,
                ..Descriptors::default()
            },
            scrub: super::super::ScrubStats {
                pass: 3,
                bytes_checked: 1 << 30,
                unrepairable: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn registrations_and_heartbeats_round_trip() {
        for node_id in [None, Some(4)] {
            assert_round_trips(&NodeRegistration {
                node_id,
                zone: "zone1".into(),
                rack: "rack2".into(),
                addr: "n1:7500".into(),
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                disk: 7,
            });
        }
        assert_round_trips(&heartbeat());
    }

    /// A heartbeat from a node from before recovery statistics, descriptors, reported
    /// memberships and stuck replicas still decodes, with those empty.
    #[test]
    fn a_heartbeat_of_an_older_node_still_decodes() {
        let old = br#"{"node_id":1,"capacity_bytes":2,"used_bytes":3,"groups":[{"group_id":3,
            "role":"leader","term":1,"leader":1,"commit":2,"applied":1}]}"#;
        let got: NodeHeartbeat = decode(old).unwrap();
        assert_eq!(got.recovery, RecoveryStats::default());
        assert_eq!(got.descriptors, Descriptors::default());
        let g = &got.groups[0];
        assert_eq!(
            (g.role, g.voters.len(), g.learners.len()),
            (Role::Leader, 0, 0)
        );
        assert_eq!(g.stuck, None);
        assert!(
            !g.joint,
            "a node from before joint reports is taken as not joint"
        );
    }

    #[test]
    fn roles_are_lowercase_on_the_wire_and_unknown_ones_are_refused() {
        let roles: Vec<Role> = decode(br#"["leader","follower","candidate"]"#).unwrap();
        assert_eq!(roles, [Role::Leader, Role::Follower, Role::Candidate]);
        assert!(decode::<Role>(br#""Leader""#).is_err());
        assert!(decode::<Role>(br#""observer""#).is_err());
    }
}
