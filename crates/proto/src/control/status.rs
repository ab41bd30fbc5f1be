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
