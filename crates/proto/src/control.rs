//! Control-plane messages. Bodies of [`crate::frame::Kind::Rpc`] frames are JSON encodings of
//! [`ManagerRequest`] (to a manager) or [`StorageRequest`] (to a storage node); the answer, in
//! a [`crate::frame::Kind::RpcReply`] frame with the same request id, is the JSON of
//! `Result<ManagerReply, ControlError>` or `Result<StorageReply, ControlError>`.
//!
//! JSON keeps the control plane debuggable and its evolution easy; it carries no bulk data.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// Default chunk size of a volume: 64 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// A storage node announces itself (at every start). `node_id` is the id it was given
    /// before, if its data directory has one.
    RegisterNode(NodeRegistration),
    Heartbeat(NodeHeartbeat),
    CreateVolume {
        name: String,
        size: u64,
        chunk_size: Option<u64>,
    },
    ListVolumes,
    VolumeInfo {
        name: String,
    },
    /// Grow a volume; shrinking is refused.
    ResizeVolume {
        name: String,
        size: u64,
    },
    DeleteVolume {
        name: String,
    },
    /// The volume and the routes of every chunk already mapped.
    OpenVolume {
        name: String,
    },
    /// The route of one chunk; with `allocate`, map the chunk to a group if it is unmapped.
    Route {
        volume_id: u64,
        chunk: u64,
        allocate: bool,
    },
    ClusterStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerReply {
    Registered {
        node_id: u64,
    },
    /// Groups this node must host but did not report in its heartbeat.
    HeartbeatAck {
        create_groups: Vec<GroupSpec>,
    },
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Deleted,
    Opened {
        volume: VolumeInfo,
        chunks: Vec<ChunkRoute>,
    },
    Route(Option<ChunkRoute>),
    Status(ClusterStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Drop these chunks of a deleted volume (proposed through the group's log).
    DropChunks {
        group_id: u64,
        volume_id: u64,
        chunks: Vec<u64>,
    },
    /// This node's current state (the same as its heartbeat).
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageReply {
    Done,
    Status(NodeHeartbeat),
}

/// A control-plane failure, named after what the caller can do about it. Messages name the
/// thing and the value: `volume "db1" not found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    /// Retry later: e.g. not enough racks to place a group yet.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: Option<u64>,
    pub zone: String,
    pub rack: String,
    /// Data-plane address other nodes and clients connect to (`host:port`).
    pub addr: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node_id: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub groups: Vec<GroupState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
}

/// One replica's view of its group, as reported by the node hosting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub group_id: u64,
    pub role: Role,
    pub term: u64,
    /// The leader this replica knows of (0: none).
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node_id: u64,
    pub addr: String,
}

/// A replica group's membership, as the manager placed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub group_id: u64,
    pub peers: Vec<PeerInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub mapped_chunks: u64,
    pub created_unix: u64,
}

/// Where a chunk lives: its group, the group's replicas and the last known leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRoute {
    pub chunk: u64,
    pub group_id: u64,
    pub peers: Vec<PeerInfo>,
    pub leader: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    pub groups: Vec<GroupStatus>,
    pub volumes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub zone: String,
    pub rack: String,
    pub addr: String,
    /// `up`, `suspect` or `down`.
    pub state: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub last_heartbeat_ms_ago: Option<u64>,
    pub replicas: u64,
    pub leaders: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group_id: u64,
    pub leader: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
    pub chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub node_id: u64,
    pub rack: String,
    /// The hosting node's health: `up`, `suspect` or `down`.
    #[serde(default)]
    pub node_state: String,
    pub role: Option<Role>,
    pub commit: u64,
    pub applied: u64,
}

/// Encodes a control message as a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Serializing these plain data types to JSON cannot fail.
    Bytes::from(serde_json::to_vec(msg).unwrap_or_default())
}

/// Decodes a control message from an untrusted frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_results_round_trip() {
        let req = ManagerRequest::CreateVolume {
            name: "db1".into(),
            size: 4 << 30,
            chunk_size: None,
        };
        assert_eq!(decode::<ManagerRequest>(&encode(&req)).unwrap(), req);
        let res: Result<ManagerReply, ControlError> =
            Err(ControlError::NotFound("volume \"x\" not found".into()));
        assert_eq!(
            decode::<Result<ManagerReply, ControlError>>(&encode(&res)).unwrap(),
            res
        );
        assert!(decode::<ManagerRequest>(b"{nonsense").is_err());
    }
}
