//! The cluster as the manager leader sees it, for `tessera cluster status` and operators:
//! nodes, groups and their replicas.
//!
//! Owns the report only; it is built from heartbeats and the replicated state by the
//! manager, and nothing acts on it but people and tests.

use serde::{Deserialize, Serialize};

use super::{Descriptors, Role};

/// The cluster as the manager leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every registered node.
    pub nodes: Vec<NodeStatus>,
    /// Every replica group.
    pub groups: Vec<GroupStatus>,
    /// How many volumes exist.
    pub volumes: u64,
}

/// One registered node, as the manager leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node_id: u64,
    /// Its zone, as registered.
    pub zone: String,
    /// Its rack, as registered.
    pub rack: String,
    /// Its data-plane address, as registered.
    pub addr: String,
    /// `up`, `suspect` or `down`.
    pub state: String,
    /// Size in bytes of its data filesystem: from its last heartbeat, or from its
    /// registration before one reached this manager.
    pub capacity_bytes: u64,
    /// Bytes its chunk files take, from the same report.
    pub used_bytes: u64,
    /// Milliseconds since its last heartbeat reached this manager (`None`: none since
    /// the node registered or this manager became leader).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Replicas placed on it.
    pub replicas: u64,
    /// Groups it leads, as far as the manager knows.
    pub leaders: u64,
    /// Being drained: receives nothing new, everything moves off it.
    #[serde(default)]
    pub draining: bool,
    /// As last reported by the node.
    #[serde(default)]
    pub descriptors: Option<Descriptors>,
}

/// One replica group, as the manager leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Its id.
    pub group_id: u64,
    /// The node believed to lead it (`None`: none known).
    pub leader: Option<u64>,
    /// Its members, one entry each.
    pub replicas: Vec<ReplicaStatus>,
    /// Chunks of every volume mapped to it.
    pub chunks: u64,
    /// Fewer than three healthy replicas.
    #[serde(default)]
    pub degraded: bool,
    /// A membership change under way: the replicas the group is moving to.
    #[serde(default)]
    pub moving_to: Vec<u64>,
}

/// One member of a group, as the manager leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The hosting node.
    pub node_id: u64,
    /// The hosting node's rack (empty if the node is unknown).
    pub rack: String,
    /// The hosting node's health: `up`, `suspect` or `down`.
    #[serde(default)]
    pub node_state: String,
    /// Its role as last reported (`None`: not reported since the node registered or this
    /// manager became leader).
    pub role: Option<Role>,
    /// Its commit index as last reported (0: no report).
    pub commit: u64,
    /// Its applied index as last reported (0: no report).
    pub applied: u64,
    /// Why the replica cannot serve (see `GroupState::stuck`); it is being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode};

    fn node(node_id: u64, last: Option<u64>, descriptors: Option<Descriptors>) -> NodeStatus {
        NodeStatus {
            node_id,
            zone: "zone1".into(),
            rack: format!("rack{node_id}"),
            addr: format!("n{node_id}:7500"),
            state: if last.is_some() { "up" } else { "down" }.into(),
            capacity_bytes: 1 << 40,
            used_bytes: 1 << 30,
            last_heartbeat_ms_ago: last,
            replicas: 100,
            leaders: 33,
            draining: last.is_none(),
            descriptors,
        }
    }

    fn replica(node_id: u64, role: Option<Role>, stuck: Option<&str>) -> ReplicaStatus {
        ReplicaStatus {
            node_id,
            rack: format!("rack{node_id}"),
            node_state: "up".into(),
            role,
            commit: 10,
            applied: 9,
            stuck: stuck.map(str::to_string),
        }
    }

    #[test]
    fn a_cluster_status_round_trips() {
        assert_round_trips(&ClusterStatus {
            nodes: vec![
                node(1, Some(250), Some(Descriptors::default())),
                node(2, None, None),
            ],
            groups: vec![GroupStatus {
                group_id: 3,
                leader: Some(1),
                replicas: vec![
                    replica(1, Some(Role::Leader), None),
                    replica(2, None, None),
                    replica(3, Some(Role::Follower), Some("quarantined at start")),
                ],
                chunks: 17,
                degraded: true,
                moving_to: vec![1, 3, 4],
            }],
            volumes: 2,
        });
        assert_round_trips(&ClusterStatus {
            nodes: Vec::new(),
            groups: Vec::new(),
            volumes: 0,
        });
    }

    /// A manager from before draining, descriptors, degraded groups, moves, node health
    /// per replica and stuck replicas sends none of them: each reads as its empty value.
    #[test]
    fn a_status_from_an_older_manager_still_decodes() {
        let old = br#"{"nodes":[{"node_id":1,"zone":"z","rack":"r","addr":"a","state":"up",
            "capacity_bytes":1,"used_bytes":0,"last_heartbeat_ms_ago":null,"replicas":0,
            "leaders":0}],"groups":[{"group_id":1,"leader":null,"replicas":[{"node_id":1,
            "rack":"r","role":null,"commit":0,"applied":0}],"chunks":0}],"volumes":0}"#;
        let got: ClusterStatus = decode(old).unwrap();
        assert_eq!(
            (got.nodes[0].draining, got.nodes[0].descriptors),
            (false, None)
        );
        assert_eq!(
            (got.groups[0].degraded, got.groups[0].moving_to.len()),
            (false, 0)
        );
        let r = &got.groups[0].replicas[0];
        assert_eq!((r.node_state.as_str(), r.stuck.as_deref()), ("", None));
    }
}
