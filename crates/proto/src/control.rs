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
    /// The volume and the routes of every chunk already mapped (for reading: no
    /// attachment).
    OpenVolume {
        name: String,
    },
    /// Attach the volume read-write for `client` (a name saying who and where, unique to
    /// the process): granted with a new writer epoch and a lease when nobody holds it, or
    /// when the holder's lease ran out; the same client attaching again keeps its epoch.
    /// Refused with [`ControlError::Conflict`] naming the holder otherwise. The new holder
    /// must fence every group of the volume with its epoch before its first write.
    AttachVolume {
        name: String,
        client: String,
    },
    /// The holder of epoch `epoch` renews its lease ([`ControlError::Conflict`]: it no longer
    /// holds the volume).
    RenewAttachment {
        volume_id: u64,
        epoch: u64,
    },
    /// End an attachment: the holder's own (`epoch`), or, with `force`, whoever holds it;
    /// a forced detach moves the volume to a new epoch that the caller fences the volume's
    /// groups with, so the old holder's writes are refused from then on.
    DetachVolume {
        name: String,
        #[serde(default)]
        epoch: u64,
        #[serde(default)]
        force: bool,
    },
    /// The route of one chunk; with `allocate`, map the chunk to a group if it is unmapped.
    /// `epoch`: the caller's writer epoch (0: a reader); refused once the volume has a newer
    /// one ([`ControlError::Conflict`]), and `allocate` needs the current one.
    Route {
        volume_id: u64,
        chunk: u64,
        allocate: bool,
        #[serde(default)]
        epoch: u64,
    },
    ClusterStatus,
    /// Move every replica and leader off this node (before maintenance); it ends with none.
    /// The node stays registered and serving until then. `undo` stops draining.
    DrainNode {
        node_id: u64,
        #[serde(default)]
        undo: bool,
    },
    /// Add manager `id`, serving on `addr`, to the managers' Raft group (it must be running
    /// with `join`): first as a learner, which catches up from a snapshot, then promoted to
    /// voter by the leader once caught up. Asking again only reports the members.
    AddManager {
        id: u64,
        addr: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerReply {
    Registered {
        node_id: u64,
    },
    /// Groups this node must host but did not report in its heartbeat.
    HeartbeatAck {
        create_groups: Vec<GroupSpec>,
        /// Replicas this node hosts that are no longer members of their group (moved away,
        /// or replaced while the node was down): destroy them and their data.
        #[serde(default)]
        remove_groups: Vec<u64>,
    },
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Deleted,
    Opened {
        volume: VolumeInfo,
        chunks: Vec<ChunkRoute>,
    },
    Attached {
        volume: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        /// The holder's writer epoch: every data-plane write carries it.
        epoch: u64,
        /// Renew well within this (the client renews every third of it).
        lease_ms: u64,
    },
    Renewed {
        lease_ms: u64,
    },
    /// `fence_epoch`: after a forced detach, the epoch to fence the volume's groups with
    /// (0: nothing to fence).
    Detached {
        fence_epoch: u64,
    },
    Route(Option<ChunkRoute>),
    Status(ClusterStatus),
    /// The managers' group: voters and learners (being added, not counted for majorities
    /// until promoted), with their addresses (empty when unknown).
    Managers {
        voters: Vec<(u64, String)>,
        learners: Vec<(u64, String)>,
    },
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
    /// Leader only: make the group's voters exactly `peers`. Nodes not yet members are added
    /// as learners (they catch up from a snapshot of the chunk files, then the log), and
    /// once every one has caught up a joint-consensus change makes `peers` the voters and
    /// removes the rest. Idempotent: the manager repeats it until the answer says `done`.
    /// The new nodes must already host the group (a `joining` [`GroupSpec`]).
    ChangeMembers { group_id: u64, peers: Vec<PeerInfo> },
    /// Host a replica of this group (the same as a `create_groups` entry of a heartbeat
    /// ack, without waiting for the next heartbeat). No-op if it is already hosted.
    HostGroup { spec: GroupSpec },
    /// Leader only: hand the group's leadership to `to` (a voter).
    TransferLeader { group_id: u64, to: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageReply {
    Done,
    Status(NodeHeartbeat),
    Members(MembershipState),
    /// This node does not lead the group; `hint` is the leader it knows of (0: none).
    NotLeader {
        hint: u64,
    },
}

/// A group's membership as its leader sees it, with each peer's replication progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    pub group_id: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// A joint configuration is still being left.
    pub joint: bool,
    /// The voters are exactly the requested peers, with no learner and no joint state left.
    pub done: bool,
    /// The leader's last log index, to compare each peer's `matched` with.
    pub last_index: u64,
    /// The leader's term: the group reached it with this membership.
    #[serde(default)]
    pub term: u64,
    pub progress: Vec<PeerProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    pub node_id: u64,
    pub matched: u64,
    /// `probe`, `replicate` or `snapshot` (installing a copy of the chunk files).
    pub state: String,
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
    /// Another client holds what was asked for (a volume's read-write attachment), or the
    /// caller's attachment was ended: the message names the holder.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// This manager is not the leader of the managers' Raft group: ask the leader, whose
    /// client address is given when known.
    #[error("not the manager leader (leader: {})", .0.as_deref().unwrap_or("unknown"))]
    NotLeader(Option<String>),
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
    #[serde(default)]
    pub recovery: RecoveryStats,
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
    /// The membership this replica has applied (empty while a joining replica waits for
    /// its first snapshot).
    #[serde(default)]
    pub voters: Vec<u64>,
    #[serde(default)]
    pub learners: Vec<u64>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub mapped_chunks: u64,
    pub created_unix: u64,
    /// The read-write attachment, if a client holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentInfo>,
}

/// Who writes a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub client: String,
    pub epoch: u64,
    pub since_unix: u64,
    /// Time left on the holder's lease as the manager leader sees it (`None`: this leader
    /// has not heard from the holder yet, so it counts a whole lease from its election).
    #[serde(default)]
    pub lease_left_ms: Option<u64>,
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
    /// Being drained: receives nothing new, everything moves off it.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group_id: u64,
    pub leader: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
    pub chunks: u64,
    /// Fewer than three healthy replicas.
    #[serde(default)]
    pub degraded: bool,
    /// A membership change under way: the replicas the group is moving to.
    #[serde(default)]
    pub moving_to: Vec<u64>,
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
