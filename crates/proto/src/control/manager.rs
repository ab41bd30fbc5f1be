//! The manager API: what clients, the CLI and storage nodes ask a manager
//! ([`ManagerRequest`]) and what it answers ([`ManagerReply`]), including the managers' own
//! membership requests ([`ManagerRequest::AddManager`], [`ManagerRequest::Managers`]).
//!
//! Owns the two enums and their compatibility rules only: the records they carry live in
//! their own files. Never add a field without `#[serde(default)]`: managers, nodes and
//! clients of different versions talk to each other during an upgrade.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::SnapshotState;
#[cfg(doc)]
use super::{
    AttachmentInfo, ControlError, DEFAULT_CHUNK_SIZE, MAX_ROUTES_PER_PAGE, StorageRequest,
};
use super::{
    BackupInfo, ChunkRoute, ClusterStatus, GroupSpec, NodeHeartbeat, NodeRegistration, NodeScrub,
    RestoreSource, RoutePage, ScrubAction, SnapshotInfo, StoreInfo, VolumeInfo, VolumeUsage,
};

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
        /// The caller's certificate name, set by the manager (whatever a caller sends is
        /// replaced; empty when insecure): only it gets capabilities to write at the epoch
        /// granted ([`ManagerRequest::Capability`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        holder: String,
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
    /// A signed capability for the caller's I/O to the volume, presented to storage nodes
    /// ([`crate::capability`]): reads with `epoch` 0 (the caller may open the volume),
    /// reads and writes with the volume's current writer epoch (the caller's attachment;
    /// [`ControlError::Conflict`] once the volume has a newer one). Answered with
    /// [`ManagerReply::Capability`]; an insecure manager has none to give.
    Capability {
        /// The volume ([`VolumeInfo::id`]).
        volume_id: u64,
        /// The caller's writer epoch (0: a reader).
        epoch: u64,
        /// The caller's certificate name, set by the manager (as for
        /// [`ManagerRequest::AttachVolume`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        holder: String,
    },
    /// Put certificate revocation lists in force across the cluster (admins only; `tessera
    /// cert revoke` sends it): PEM, one list per CA, each signed by a CA the managers trust
    /// and newer (by its CRL number) than the one it replaces, or
    /// [`ControlError::Invalid`]. Managers apply it as they apply their log, storage nodes
    /// at their next heartbeat ([`ManagerReply::HeartbeatAck::crl_version`]). Answered with
    /// [`ManagerReply::Crl`].
    PublishCrl {
        /// The lists, PEM.
        pem: String,
    },
    /// The revocation lists in force, answered with [`ManagerReply::Crl`]; anyone.
    Crl,
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
    /// Take a snapshot of the volume now, answered with [`ManagerReply::Snapshot`] once it
    /// is [`SnapshotState::Ready`]: the volume's sequence moves on and every group of the
    /// volume is fenced with the new one, so the snapshot holds every write acknowledged
    /// before the request and none sent after the answer; an attached writer is not
    /// asked to pause (its writes in flight are refused with the new sequence and resent).
    /// [`ControlError::AlreadyExists`] if the volume has a snapshot of that name (a
    /// `Creating` one is finished instead), [`ControlError::Unavailable`] if a group cannot
    /// be fenced in time (the snapshot stays `Creating`; asking again finishes it).
    CreateSnapshot {
        /// The volume.
        volume: String,
        /// The snapshot's name: the rules of a volume name.
        name: String,
    },
    /// The snapshots of one volume, or of every volume (`None`), oldest first per volume,
    /// answered with [`ManagerReply::Snapshots`].
    ListSnapshots {
        /// The volume (`None`: all).
        #[serde(default)]
        volume: Option<String>,
    },
    /// One snapshot, answered with [`ManagerReply::Snapshot`].
    SnapshotInfo {
        /// The volume.
        volume: String,
        /// The snapshot.
        name: String,
    },
    /// Bytes each snapshot of the volume holds and the live image holds, asked of a
    /// replica of each of the volume's groups; answered with [`ManagerReply::Usage`].
    VolumeUsage {
        /// The volume.
        name: String,
    },
    /// Delete a snapshot (answered [`ManagerReply::Deleted`]); the space only it held is
    /// reclaimed in the background (`volume info` shows it while it runs). Refused with
    /// [`ControlError::Conflict`] naming its clones while it has any.
    DeleteSnapshot {
        /// The volume.
        volume: String,
        /// The snapshot.
        name: String,
    },
    /// Make volume `name` from snapshot `volume@snapshot`: usable at once, reading through
    /// to the snapshot until written or flattened. Answered with [`ManagerReply::Volume`];
    /// [`ControlError::AlreadyExists`] if the name is taken.
    CloneVolume {
        /// The parent volume.
        volume: String,
        /// The parent's snapshot (it must be `Ready`).
        snapshot: String,
        /// The clone's name.
        name: String,
    },
    /// Make the volume's live content its snapshot's again (its other snapshots are kept).
    /// Refused with [`ControlError::Conflict`] while a client holds it read-write.
    /// Answered with [`ManagerReply::Volume`] once done.
    RollbackVolume {
        /// The volume.
        volume: String,
        /// The snapshot to return to.
        snapshot: String,
    },
    /// Copy every block a clone still reads from its parent into the clone, in the
    /// background and rate limited, then cut the link (`volume info` shows progress).
    /// Answered with [`ManagerReply::Volume`] once started; a volume that is no clone is
    /// [`ControlError::Invalid`].
    FlattenVolume {
        /// The clone.
        name: String,
    },
    /// Back up a ready snapshot to a store (`None`: the default store): the blocks changed
    /// since the volume's newest backup there whose snapshot is still kept, else every
    /// block. Answered at once with [`ManagerReply::Backup`] (`Uploading`); the leading
    /// manager uploads in the background and resumes after a failover.
    CreateBackup {
        /// The volume.
        volume: String,
        /// The snapshot (ready).
        snapshot: String,
        /// The store's name (absent: the default store).
        #[serde(default)]
        store: Option<String>,
    },
    /// Backups, newest first, of one volume or of all ([`ManagerReply::Backups`]).
    ListBackups {
        /// The volume's name (absent: every volume, deleted ones included).
        #[serde(default)]
        volume: Option<String>,
    },
    /// One backup ([`ManagerReply::Backup`]).
    BackupInfo {
        /// The backup's id.
        id: u64,
    },
    /// Forget a backup (refused while a restoring volume or a running copy reads it, or
    /// while it uploads): the collector deletes the objects no other backup references
    /// after a grace period. Answered with [`ManagerReply::Deleted`].
    DeleteBackup {
        /// The backup's id.
        id: u64,
    },
    /// Copy a ready backup to another store (the objects it lacks, then segments, root
    /// last), as a new backup record there, answered at once with it (`Uploading`); asking
    /// again for the same backup and store answers the existing copy.
    CopyBackup {
        /// The backup to copy.
        id: u64,
        /// The store to copy it to.
        to_store: String,
    },
    /// Create volume `name` from a ready backup, answered with [`ManagerReply::Volume`]
    /// once its chunks are placed; its blocks are filled from the store in the background
    /// (see [`VolumeInfo`]'s `restore`).
    RestoreVolume {
        /// The new volume's name.
        name: String,
        /// The backup's id.
        backup: u64,
        /// The store to read (absent: a ready copy of the backup in the manager's own
        /// zone, else the backup's own store).
        #[serde(default)]
        store: Option<String>,
    },
    /// Fill a restored volume now (resumes a restore that stopped on errors); answered
    /// with [`ManagerReply::Volume`].
    PrewarmVolume {
        /// The restored volume.
        name: String,
    },
    /// The configured object stores ([`ManagerReply::Stores`]).
    ListStores,
    /// Where the leader of a restored chunk's group reads the blocks it has not filled yet
    /// ([`ManagerReply::RestoreSource`]): asked by storage nodes serving a lazy restore.
    /// `NotFound` once the volume is no longer restoring (every chunk is filled).
    RestoreSource {
        /// The restoring volume's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
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
    /// Every registered node's scrubbing as its last heartbeat reported it, answered with
    /// [`ManagerReply::Scrub`] (by the leader).
    ScrubStatus,
    /// Start (or resume) or pause one node's scrubbing: forwarded to the node
    /// ([`StorageRequest::Scrub`]), answered with [`ManagerReply::Scrub`] holding that
    /// node's state after the action; an unknown node is [`ControlError::NotFound`], one
    /// that cannot be reached [`ControlError::Unavailable`].
    ScrubControl {
        /// The node.
        node_id: u64,
        /// What to do.
        action: ScrubAction,
    },
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
        /// The version of the revocation lists in force ([`ManagerRequest::Crl`]): a node
        /// that applied an older one fetches them (absent from older managers: 0, none).
        #[serde(default)]
        crl_version: u64,
    },
    /// The answer to [`ManagerRequest::VolumeUsage`].
    Usage(VolumeUsage),
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
    /// One snapshot: the answer to [`ManagerRequest::CreateSnapshot`] and
    /// [`ManagerRequest::SnapshotInfo`].
    Snapshot(SnapshotInfo),
    /// The answer to [`ManagerRequest::ListSnapshots`].
    Snapshots(Vec<SnapshotInfo>),
    /// One backup: the answer to [`ManagerRequest::CreateBackup`],
    /// [`ManagerRequest::BackupInfo`] and [`ManagerRequest::CopyBackup`].
    Backup(Box<BackupInfo>),
    /// The answer to [`ManagerRequest::ListBackups`].
    Backups(Vec<BackupInfo>),
    /// The answer to [`ManagerRequest::ListStores`].
    Stores(Vec<StoreInfo>),
    /// The answer to [`ManagerRequest::RestoreSource`].
    RestoreSource(Box<RestoreSource>),
    /// The answer to [`ManagerRequest::PublishCrl`] and [`ManagerRequest::Crl`].
    Crl {
        /// How many times lists were published (0: never); moves with every change.
        version: u64,
        /// The newest list of each CA, PEM (empty: none).
        pem: String,
    },
    /// The answer to [`ManagerRequest::Capability`].
    Capability {
        /// [`crate::capability::Signed::to_hex`] of the signed capability.
        signed: String,
        /// When it expires (Unix milliseconds, the manager's clock).
        expires_ms: u64,
        /// How long it lasts from now, in milliseconds: fetch the next one well before
        /// (counted on the caller's clock, whatever its time of day).
        #[serde(default)]
        lifetime_ms: u64,
    },
    /// The managers' group: voters and learners (being added, not counted for majorities
    /// until promoted), with their addresses (empty when unknown).
    Managers {
        /// Voters, as (manager id, address).
        voters: Vec<(u64, String)>,
        /// Learners, as (manager id, address).
        learners: Vec<(u64, String)>,
    },
    /// The answer to [`ManagerRequest::ScrubStatus`] and [`ManagerRequest::ScrubControl`],
    /// by node id.
    Scrub(Vec<NodeScrub>),
}

#[cfg(test)]
mod tests;
