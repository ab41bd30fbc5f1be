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

/// Most chunks one [`StorageRequest::DropChunks`] names (about 1.4 MiB of JSON at most): a
/// deleted volume's chunks in a group are dropped in as many requests as needed.
pub const MAX_DROP_CHUNKS: usize = 64 * 1024;

/// Most routes one answer carries ([`RoutePage`], and the routes of [`ManagerReply::Opened`]
/// and [`ManagerReply::Attached`]). No answer grows with a volume's size: a route is about
/// 200 bytes of JSON with three peers and under 2 KB with six peers (a group moving) named
/// by the longest host names, so a full page stays near 2 MiB at worst: a quarter of
/// [`crate::frame::MAX_BODY`] (a test holds it there).
pub const MAX_ROUTES_PER_PAGE: u32 = 1024;

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
    /// The volume, for reading (no attachment). Answered with one route for each replica
    /// group holding the volume's chunks, at most [`MAX_ROUTES_PER_PAGE`] of them: the
    /// groups a new writer fences; the routes of other chunks come from
    /// [`ManagerRequest::Routes`].
    ///
    /// `paged`: the caller pages the groups with [`ManagerRequest::VolumeGroups`] when
    /// there are more. A client from before paging (the field absent) takes the answer for
    /// every group it must fence, so a volume spanning more groups than one answer is
    /// refused to it ([`ControlError::Invalid`]) rather than given a partial list.
    OpenVolume {
        name: String,
        #[serde(default)]
        paged: bool,
    },
    /// Attach the volume read-write for `client` (a name saying who and where, unique to
    /// the process): granted with a new writer epoch and a lease when nobody holds it, or
    /// when the holder's lease ran out; the same client attaching again keeps its epoch.
    /// Refused with [`ControlError::Conflict`] naming the holder otherwise. The new holder
    /// must fence every group of the volume with its epoch before its first write.
    /// The answer's routes and `paged` as for [`ManagerRequest::OpenVolume`].
    AttachVolume {
        name: String,
        client: String,
        #[serde(default)]
        paged: bool,
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
    /// The routes of the volume's mapped chunks from `first_chunk` on, in chunk order: at
    /// most `limit` of them (0, or more than [`MAX_ROUTES_PER_PAGE`]: that many). Unmapped
    /// chunks have none (they read as zeroes). `epoch` as for [`ManagerRequest::Route`].
    Routes {
        volume_id: u64,
        first_chunk: u64,
        #[serde(default)]
        limit: u32,
        #[serde(default)]
        epoch: u64,
    },
    /// One route for each replica group holding chunks of the volume, addressing the group
    /// through one of its chunks of the volume: the groups with ids above `after_group`, in
    /// id order, at most [`MAX_ROUTES_PER_PAGE`]. A new writer fences every one of them.
    VolumeGroups {
        volume_id: u64,
        #[serde(default)]
        after_group: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// Map every unmapped chunk of `first_chunk..first_chunk + count` to a group at once, in
    /// one change (allocating chunk by chunk costs one change each): at most
    /// [`MAX_ROUTES_PER_PAGE`] chunks, and only for the holder of the current writer epoch.
    /// Answered with the routes of the range.
    ProvisionChunks {
        volume_id: u64,
        first_chunk: u64,
        count: u32,
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
    /// The managers' group as the asked manager knows it, leader or not (answered with
    /// [`ManagerReply::Managers`]; empty from a manager with no membership yet). A manager
    /// about to found a group asks its peers first.
    Managers,
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
    /// `chunks`: one route per replica group holding the volume's chunks (see
    /// [`ManagerRequest::OpenVolume`]); `more_groups`: there are more groups than these.
    Opened {
        volume: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        #[serde(default)]
        more_groups: bool,
    },
    Attached {
        volume: VolumeInfo,
        /// As for [`ManagerReply::Opened`].
        chunks: Vec<ChunkRoute>,
        #[serde(default)]
        more_groups: bool,
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
    /// The answer to [`ManagerRequest::Routes`] and [`ManagerRequest::ProvisionChunks`]:
    /// `next` is the `first_chunk` to ask for next.
    Routes(RoutePage),
    /// The answer to [`ManagerRequest::VolumeGroups`]: `next` is the `after_group` to ask
    /// with next.
    Groups(RoutePage),
    Status(ClusterStatus),
    /// The managers' group: voters and learners (being added, not counted for majorities
    /// until promoted), with their addresses (empty when unknown).
    Managers {
        voters: Vec<(u64, String)>,
        learners: Vec<(u64, String)>,
    },
}

/// A bounded page of routes ([`MAX_ROUTES_PER_PAGE`] at most) and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePage {
    pub routes: Vec<ChunkRoute>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Drop these chunks of a deleted volume (proposed through the group's log): at most
    /// [`MAX_DROP_CHUNKS`] in one request.
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
    #[serde(default)]
    pub descriptors: Descriptors,
}

/// A storage node's descriptors: its limit, and its open chunks (two descriptors each)
/// against the share of that limit they may hold; past it, idle chunks are closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptors {
    /// The process's open-file limit (raised to the hard limit at start).
    pub limit: u64,
    pub chunks_open: u64,
    pub chunks_budget: u64,
    /// Idle chunks closed to make room since the node started.
    pub chunks_closed: u64,
    /// Of `chunks_open`, the dirty ones waiting for the next chunk sync to close them.
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
    /// Why this replica cannot serve its group, if it cannot: its apply has been stalled
    /// (a full disk, a corrupt block) for longer than the node tolerates, or the node
    /// quarantined it at start. It still holds the group's log (and may still count
    /// towards commits) until it is removed through a membership change; the manager
    /// replaces it as it would a lost replica, then has it destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
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
    /// As last reported by the node.
    #[serde(default)]
    pub descriptors: Option<Descriptors>,
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
    /// Why the replica cannot serve (see `GroupState::stuck`); it is being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
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

    /// The longest route a manager can send: the largest numbers, six peers (a group
    /// moving) named by the longest host names.
    fn largest_route() -> ChunkRoute {
        ChunkRoute {
            chunk: u64::MAX,
            group_id: u64::MAX,
            peers: (0..6)
                .map(|i| PeerInfo {
                    node_id: u64::MAX - i,
                    addr: format!("{}:65535", "h".repeat(253)),
                })
                .collect(),
            leader: Some(u64::MAX),
        }
    }

    #[test]
    fn paged_route_messages_round_trip() {
        let reqs = [
            ManagerRequest::Routes {
                volume_id: 3,
                first_chunk: 131_071,
                limit: 17,
                epoch: 9,
            },
            ManagerRequest::VolumeGroups {
                volume_id: 3,
                after_group: 40,
                epoch: 0,
            },
            ManagerRequest::ProvisionChunks {
                volume_id: 3,
                first_chunk: 1024,
                count: 1024,
                epoch: 2,
            },
            ManagerRequest::OpenVolume {
                name: "db1".into(),
                paged: true,
            },
            ManagerRequest::AttachVolume {
                name: "db1".into(),
                client: "nbd".into(),
                paged: true,
            },
        ];
        for req in reqs {
            assert_eq!(decode::<ManagerRequest>(&encode(&req)).unwrap(), req);
        }
        let page = RoutePage {
            routes: vec![largest_route(), largest_route()],
            next: Some(77),
        };
        for reply in [
            ManagerReply::Routes(page.clone()),
            ManagerReply::Groups(RoutePage::default()),
        ] {
            let res: Result<ManagerReply, ControlError> = Ok(reply);
            assert_eq!(
                decode::<Result<ManagerReply, ControlError>>(&encode(&res)).unwrap(),
                res
            );
        }
    }

    /// Old clients send no `paged` and read no `more_groups`; old managers send no
    /// `more_groups`: each side reads the other's messages.
    #[test]
    fn messages_of_clients_and_managers_from_before_paging_still_decode() {
        let old_open = br#"{"OpenVolume":{"name":"db1"}}"#;
        assert_eq!(
            decode::<ManagerRequest>(old_open).unwrap(),
            ManagerRequest::OpenVolume {
                name: "db1".into(),
                paged: false
            }
        );
        let old_attach = br#"{"AttachVolume":{"name":"db1","client":"c"}}"#;
        assert!(matches!(
            decode::<ManagerRequest>(old_attach).unwrap(),
            ManagerRequest::AttachVolume { paged: false, .. }
        ));
        let old_opened = br#"{"Ok":{"Opened":{"volume":{"id":1,"name":"db1","size":4096,
            "chunk_size":4096,"mapped_chunks":0,"created_unix":0},"chunks":[]}}}"#;
        let got = decode::<Result<ManagerReply, ControlError>>(old_opened).unwrap();
        assert!(matches!(
            got,
            Ok(ManagerReply::Opened {
                more_groups: false,
                ..
            })
        ));
    }

    /// Every answer that carries routes carries at most a page of them, and a page of the
    /// longest routes fits a frame with room to spare, whatever the volume's size.
    #[test]
    fn a_full_page_of_the_longest_routes_fits_a_quarter_frame() {
        let page = RoutePage {
            routes: vec![largest_route(); MAX_ROUTES_PER_PAGE as usize],
            next: Some(u64::MAX),
        };
        let res: Result<ManagerReply, ControlError> = Ok(ManagerReply::Routes(page.clone()));
        let len = encode(&res).len();
        assert!(
            len <= crate::frame::MAX_BODY as usize / 4 + (64 << 10),
            "a page of routes is {len} bytes"
        );
        let res: Result<ManagerReply, ControlError> = Ok(ManagerReply::Attached {
            volume: VolumeInfo {
                id: u64::MAX,
                name: "v".repeat(255),
                size: u64::MAX,
                chunk_size: u64::MAX,
                mapped_chunks: u64::MAX,
                created_unix: u64::MAX,
                attachment: None,
            },
            chunks: page.routes,
            more_groups: true,
            epoch: u64::MAX,
            lease_ms: u64::MAX,
        });
        assert!(encode(&res).len() <= crate::frame::MAX_BODY as usize / 4 + (64 << 10));
    }
}
