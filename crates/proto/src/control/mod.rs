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

/// A request to a manager: the JSON body of a [`crate::frame::Kind::Rpc`] frame, answered
/// with `Result<ManagerReply, ControlError>`. Only the leader of the managers' group serves
/// it; another manager answers [`ControlError::NotLeader`] (all but
/// [`ManagerRequest::Managers`], which any manager answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// A storage node announces itself (at every start). `node_id` is the id it was given
    /// before, if its data directory has one.
    RegisterNode(NodeRegistration),
    /// A storage node's periodic report (every `heartbeat_ms` of its config, 1 s by default):
    /// its usage and the state of every replica it hosts. Answered with
    /// [`ManagerReply::HeartbeatAck`]; a node the manager does not know is answered
    /// [`ControlError::NotFound`] and registers again. The age of the last word from a node
    /// decides its health (`up`, `suspect`, `down`).
    Heartbeat(NodeHeartbeat),
    /// Create a thin-provisioned volume (no chunk mapped yet), answered with
    /// [`ManagerReply::Volume`]; [`ControlError::AlreadyExists`] if the name is taken.
    CreateVolume {
        /// Unique name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
        name: String,
        /// Size in bytes: a positive multiple of [`crate::BLOCK_SIZE`].
        size: u64,
        /// Chunk size in bytes, fixed for the volume's life: a power of two from 1 MiB to
        /// 1 GiB (`None`: [`DEFAULT_CHUNK_SIZE`]).
        chunk_size: Option<u64>,
    },
    /// Every volume, answered with [`ManagerReply::Volumes`].
    ListVolumes,
    /// One volume by name, answered with [`ManagerReply::Volume`]
    /// ([`ControlError::NotFound`] if there is none).
    VolumeInfo {
        /// The volume to describe.
        name: String,
    },
    /// Grow a volume; shrinking is refused.
    ResizeVolume {
        /// The volume to grow.
        name: String,
        /// The new size in bytes: a positive multiple of [`crate::BLOCK_SIZE`], at least the
        /// current size (the same size changes nothing). Answered with
        /// [`ManagerReply::Volume`].
        size: u64,
    },
    /// Delete a volume: its record goes at once (answered [`ManagerReply::Deleted`]) and
    /// its chunks are dropped from their groups afterwards ([`StorageRequest::DropChunks`]).
    /// Refused with [`ControlError::Conflict`] while a client's read-write lease runs.
    DeleteVolume {
        /// The volume to delete.
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
        /// The volume to open.
        name: String,
        /// The caller pages the groups (see above); absent from clients before paging.
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
        /// The volume to attach.
        name: String,
        /// Who attaches: the client library sends a label, the host, the pid and a random
        /// instance id, so two processes never share a name. Shown as the holder in
        /// [`AttachmentInfo::client`] and in conflicts.
        client: String,
        /// As for [`ManagerRequest::OpenVolume`].
        #[serde(default)]
        paged: bool,
    },
    /// The holder of epoch `epoch` renews its lease ([`ControlError::Conflict`]: it no longer
    /// holds the volume).
    RenewAttachment {
        /// The attached volume ([`VolumeInfo::id`]).
        volume_id: u64,
        /// The writer epoch the holder was granted ([`ManagerReply::Attached`]). Answered
        /// with [`ManagerReply::Renewed`].
        epoch: u64,
    },
    /// End an attachment: the holder's own (`epoch`), or, with `force`, whoever holds it;
    /// a forced detach moves the volume to a new epoch that the caller fences the volume's
    /// groups with, so the old holder's writes are refused from then on.
    DetachVolume {
        /// The volume to detach. Answered with [`ManagerReply::Detached`].
        name: String,
        /// The caller's own epoch: ends its attachment if it still holds it, changes
        /// nothing if it does not. 0 (or absent): end whoever holds it, which needs `force`
        /// while the holder's lease runs and moves the volume to a new epoch.
        #[serde(default)]
        epoch: u64,
        /// End another client's attachment even though its lease still runs (absent:
        /// `false`).
        #[serde(default)]
        force: bool,
    },
    /// The route of one chunk; with `allocate`, map the chunk to a group if it is unmapped.
    /// `epoch`: the caller's writer epoch (0: a reader); refused once the volume has a newer
    /// one ([`ControlError::Conflict`]), and `allocate` needs the current one.
    Route {
        /// The volume ([`VolumeInfo::id`]).
        volume_id: u64,
        /// The chunk's index in the volume (its byte offset divided by the chunk size); past
        /// the volume's last chunk is [`ControlError::Invalid`].
        chunk: u64,
        /// Map the chunk to a group if it has none (a writer about to write it); otherwise
        /// an unmapped chunk is answered `Route(None)`.
        allocate: bool,
        /// The caller's writer epoch (0, or absent: a reader).
        #[serde(default)]
        epoch: u64,
    },
    /// The routes of the volume's mapped chunks from `first_chunk` on, in chunk order: at
    /// most `limit` of them (0, or more than [`MAX_ROUTES_PER_PAGE`]: that many). Unmapped
    /// chunks have none (they read as zeroes). `epoch` as for [`ManagerRequest::Route`].
    Routes {
        /// The volume ([`VolumeInfo::id`]).
        volume_id: u64,
        /// The chunk index the page starts from (mapped or not).
        first_chunk: u64,
        /// The most routes wanted (0, or absent: [`MAX_ROUTES_PER_PAGE`]).
        #[serde(default)]
        limit: u32,
        /// As for [`ManagerRequest::Route`].
        #[serde(default)]
        epoch: u64,
    },
    /// One route for each replica group holding chunks of the volume, addressing the group
    /// through one of its chunks of the volume: the groups with ids above `after_group`, in
    /// id order, at most [`MAX_ROUTES_PER_PAGE`]. A new writer fences every one of them.
    VolumeGroups {
        /// The volume ([`VolumeInfo::id`]). Answered with [`ManagerReply::Groups`].
        volume_id: u64,
        /// The cursor: only groups with a larger id (0, or absent: from the first).
        #[serde(default)]
        after_group: u64,
        /// As for [`ManagerRequest::Route`].
        #[serde(default)]
        epoch: u64,
    },
    /// Map every unmapped chunk of `first_chunk..first_chunk + count` to a group at once, in
    /// one change (allocating chunk by chunk costs one change each): at most
    /// [`MAX_ROUTES_PER_PAGE`] chunks, and only for the holder of the current writer epoch.
    /// Answered with the routes of the range.
    ProvisionChunks {
        /// The volume ([`VolumeInfo::id`]).
        volume_id: u64,
        /// The first chunk index of the range.
        first_chunk: u64,
        /// How many chunks the range holds (at most [`MAX_ROUTES_PER_PAGE`]).
        count: u32,
        /// The caller's writer epoch: it must be the volume's current one.
        epoch: u64,
    },
    /// Nodes, groups and volume count as the manager leader sees them, answered with
    /// [`ManagerReply::Status`].
    ClusterStatus,
    /// Move every replica and leader off this node (before maintenance); it ends with none.
    /// The node stays registered and serving until then. `undo` stops draining.
    DrainNode {
        /// The node to drain. Answered with [`ManagerReply::Status`].
        node_id: u64,
        /// Stop draining instead (absent: `false`, start).
        #[serde(default)]
        undo: bool,
    },
    /// Add manager `id`, serving on `addr`, to the managers' Raft group (it must be running
    /// with `join`): first as a learner, which catches up from a snapshot, then promoted to
    /// voter by the leader once caught up. Asking again only reports the members.
    AddManager {
        /// The new manager's id: at least 1, unique among the managers.
        id: u64,
        /// Its address (`host:port`): where it takes requests and the managers' Raft
        /// traffic. Answered with [`ManagerReply::Managers`].
        addr: String,
    },
    /// The managers' group as the asked manager knows it, leader or not (answered with
    /// [`ManagerReply::Managers`]; empty from a manager with no membership yet). A manager
    /// about to found a group asks its peers first.
    Managers,
}

/// A manager's answer to a [`ManagerRequest`]: the `Ok` side of the reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerReply {
    /// The answer to [`ManagerRequest::RegisterNode`].
    Registered {
        /// The node's id: the one it asked to keep, or a new one. The node stores it in its
        /// data directory and names itself with it from then on.
        node_id: u64,
    },
    /// The answer to a heartbeat: the replicas the node must start and destroy.
    HeartbeatAck {
        /// Groups this node must host but did not report: it starts a replica of each.
        create_groups: Vec<GroupSpec>,
        /// Replicas this node hosts that are no longer members of their group (moved away,
        /// or replaced while the node was down): destroy them and their data.
        #[serde(default)]
        remove_groups: Vec<u64>,
    },
    /// One volume: the answer to [`ManagerRequest::CreateVolume`],
    /// [`ManagerRequest::VolumeInfo`] and [`ManagerRequest::ResizeVolume`].
    Volume(VolumeInfo),
    /// Every volume: the answer to [`ManagerRequest::ListVolumes`].
    Volumes(Vec<VolumeInfo>),
    /// The volume is deleted; its data is dropped from its groups in the background.
    Deleted,
    /// The volume, for reading: the answer to [`ManagerRequest::OpenVolume`].
    Opened {
        /// The volume, with its attachment if a client holds one.
        volume: VolumeInfo,
        /// One route per replica group holding the volume's chunks (see
        /// [`ManagerRequest::OpenVolume`]).
        chunks: Vec<ChunkRoute>,
        /// There are more groups than these: page them with
        /// [`ManagerRequest::VolumeGroups`] (absent from managers before paging: `false`).
        #[serde(default)]
        more_groups: bool,
    },
    /// The read-write attachment is granted: the answer to
    /// [`ManagerRequest::AttachVolume`].
    Attached {
        /// The volume, its attachment naming the caller.
        volume: VolumeInfo,
        /// As for [`ManagerReply::Opened`].
        chunks: Vec<ChunkRoute>,
        /// As for [`ManagerReply::Opened`].
        #[serde(default)]
        more_groups: bool,
        /// The holder's writer epoch: every data-plane write carries it.
        epoch: u64,
        /// Renew well within this (the client renews every third of it).
        lease_ms: u64,
    },
    /// The lease is renewed: the answer to [`ManagerRequest::RenewAttachment`].
    Renewed {
        /// The lease's length in milliseconds, counted from the renewal.
        lease_ms: u64,
    },
    /// The attachment is ended, or was no longer the caller's: the answer to
    /// [`ManagerRequest::DetachVolume`].
    Detached {
        /// After a forced detach, the epoch to fence the volume's groups with (0: nothing
        /// to fence).
        fence_epoch: u64,
    },
    /// The answer to [`ManagerRequest::Route`]: the chunk's route (`None`: the chunk is
    /// unmapped and reads as zeroes, and `allocate` was not asked).
    Route(Option<ChunkRoute>),
    /// The answer to [`ManagerRequest::Routes`] and [`ManagerRequest::ProvisionChunks`]:
    /// `next` is the `first_chunk` to ask for next.
    Routes(RoutePage),
    /// The answer to [`ManagerRequest::VolumeGroups`]: `next` is the `after_group` to ask
    /// with next.
    Groups(RoutePage),
    /// The answer to [`ManagerRequest::ClusterStatus`] and [`ManagerRequest::DrainNode`].
    Status(ClusterStatus),
    /// The managers' group: voters and learners (being added, not counted for majorities
    /// until promoted), with their addresses (empty when unknown).
    Managers {
        /// Voters, as (manager id, address).
        voters: Vec<(u64, String)>,
        /// Learners, as (manager id, address).
        learners: Vec<(u64, String)>,
    },
}

/// A bounded page of routes ([`MAX_ROUTES_PER_PAGE`] at most) and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePage {
    /// In chunk order ([`ManagerReply::Routes`]) or group id order
    /// ([`ManagerReply::Groups`]).
    pub routes: Vec<ChunkRoute>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<u64>,
}

/// A manager's request to a storage node: the JSON body of a [`crate::frame::Kind::Rpc`]
/// frame, answered with `Result<StorageReply, ControlError>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Drop these chunks of a deleted volume (proposed through the group's log): at most
    /// [`MAX_DROP_CHUNKS`] in one request.
    DropChunks {
        /// The group holding the chunks; the request goes to its leader.
        group_id: u64,
        /// The deleted volume's id.
        volume_id: u64,
        /// Indexes of the chunks to drop. Answered [`StorageReply::Done`] once the drop is
        /// proposed; a node not leading the group answers [`ControlError::Unavailable`].
        chunks: Vec<u64>,
    },
    /// This node's current state (the same as its heartbeat).
    Status,
    /// Leader only: make the group's voters exactly `peers`. Nodes not yet members are added
    /// as learners (they catch up from a snapshot of the chunk files, then the log), and
    /// once every one has caught up a joint-consensus change makes `peers` the voters and
    /// removes the rest. Idempotent: the manager repeats it until the answer says `done`.
    /// The new nodes must already host the group (a `joining` [`GroupSpec`]).
    ChangeMembers {
        /// The group to change; the request goes to its leader.
        group_id: u64,
        /// The voters wanted, with their data-plane addresses. Answered with
        /// [`StorageReply::Members`] (or [`StorageReply::NotLeader`]).
        peers: Vec<PeerInfo>,
    },
    /// Host a replica of this group (the same as a `create_groups` entry of a heartbeat
    /// ack, without waiting for the next heartbeat). No-op if it is already hosted.
    HostGroup {
        /// The group and its members, as the manager placed them.
        spec: GroupSpec,
    },
    /// Leader only: hand the group's leadership to `to` (a voter).
    TransferLeader {
        /// The group; the request goes to its leader.
        group_id: u64,
        /// The node id of the voter to hand leadership to. Answered with
        /// [`StorageReply::Members`] (or [`StorageReply::NotLeader`]).
        to: u64,
    },
}

/// A storage node's answer to a [`StorageRequest`]: the `Ok` side of the reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageReply {
    /// Carried out: the answer to [`StorageRequest::DropChunks`] (the drop is proposed)
    /// and [`StorageRequest::HostGroup`] (the replica is being started).
    Done,
    /// The answer to [`StorageRequest::Status`].
    Status(NodeHeartbeat),
    /// The group's membership after the step taken: the answer to
    /// [`StorageRequest::ChangeMembers`] and to [`StorageRequest::TransferLeader`] (once the
    /// transfer has started; it completes without the caller).
    Members(MembershipState),
    /// This node does not lead the group; `hint` is the leader it knows of (0: none).
    NotLeader {
        /// The node id of the leader it knows of (0: none).
        hint: u64,
    },
}

/// A group's membership as its leader sees it, with each peer's replication progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    /// The group.
    pub group_id: u64,
    /// Node ids of the voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// Node ids of the learners: new replicas catching up before they are made voters.
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
    /// Every voter's and learner's progress as the leader tracks it, by node id.
    pub progress: Vec<PeerProgress>,
}

/// How far one peer of a group has caught up, as its leader tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The peer's node id.
    pub node_id: u64,
    /// The highest log index known to be on the peer (compare with
    /// [`MembershipState::last_index`]).
    pub matched: u64,
    /// `probe`, `replicate` or `snapshot` (installing a copy of the chunk files).
    pub state: String,
}

/// A control-plane failure, named after what the caller can do about it. Messages name the
/// thing and the value: `volume "db1" not found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    /// What the request names does not exist: a volume, a node the manager does not know
    /// (a node then registers again), a group the asked node does not host.
    #[error("{0}")]
    NotFound(String),
    /// A volume of that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed or asks for what is never allowed (a bad name or size, a
    /// shrink, a chunk past the volume's end): the same request fails again.
    #[error("{0}")]
    Invalid(String),
    /// Retry later: e.g. not enough racks to place a group yet.
    #[error("{0}")]
    Unavailable(String),
    /// Another client holds what was asked for (a volume's read-write attachment), or the
    /// caller's attachment was ended: the message names the holder.
    #[error("{0}")]
    Conflict(String),
    /// The server failed in a way the caller cannot fix (an unexpected answer, a handler
    /// that failed, an answer over the frame limit).
    #[error("{0}")]
    Internal(String),
    /// This manager is not the leader of the managers' Raft group: ask the leader, whose
    /// client address is given when known.
    #[error("not the manager leader (leader: {})", .0.as_deref().unwrap_or("unknown"))]
    NotLeader(Option<String>),
}

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
}

/// A storage node's state: its periodic report ([`ManagerRequest::Heartbeat`]) and its
/// answer to [`StorageRequest::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Why this replica cannot serve its group, if it cannot: its apply has been stalled
    /// (a full disk, a corrupt block) for longer than the node tolerates, or the node
    /// quarantined it at start. It still holds the group's log (and may still count
    /// towards commits) until it is removed through a membership change; the manager
    /// replaces it as it would a lost replica, then has it destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

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

/// A volume, as the managers report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its id, given by the manager at creation: every data-plane request names the
    /// volume by it ([`crate::data::ChunkAddr::volume`]).
    pub id: u64,
    /// Its name (unique).
    pub name: String,
    /// Its size in bytes (a multiple of [`crate::BLOCK_SIZE`]).
    pub size: u64,
    /// Its chunk size in bytes: each chunk is stored in one replica group.
    pub chunk_size: u64,
    /// Chunks mapped to a group so far (written or provisioned); the others read as
    /// zeroes and take no space.
    pub mapped_chunks: u64,
    /// When it was created, in Unix seconds.
    pub created_unix: u64,
    /// The read-write attachment, if a client holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentInfo>,
}

/// Who writes a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// The holder, as named in its [`ManagerRequest::AttachVolume`].
    pub client: String,
    /// The holder's writer epoch.
    pub epoch: u64,
    /// When it attached, in Unix seconds.
    pub since_unix: u64,
    /// Time left on the holder's lease as the manager leader sees it (`None`: this leader
    /// has not heard from the holder yet, so it counts a whole lease from its election).
    #[serde(default)]
    pub lease_left_ms: Option<u64>,
}

/// Where a chunk lives: its group, the group's replicas and the last known leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRoute {
    /// The chunk's index in its volume.
    pub chunk: u64,
    /// The replica group holding it.
    pub group_id: u64,
    /// The group's replicas, and during a move the nodes being added too.
    pub peers: Vec<PeerInfo>,
    /// The replica the manager believes leads the group (`None`: none known): the client
    /// sends there first and follows [`crate::data::Reply::NotLeader`] hints.
    pub leader: Option<u64>,
}

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
