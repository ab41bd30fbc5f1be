//! Control-plane messages. Bodies of [`crate::frame::Kind::Rpc`] frames are JSON encodings of
//! [`ManagerRequest`] (to a manager) or [`StorageRequest`] (to a storage node); the answer, in
//! a [`crate::frame::Kind::RpcReply`] frame with the same request id, is the JSON of
//! `Result<ManagerReply, ControlError>` or `Result<StorageReply, ControlError>`.
//!
//! JSON keeps the control plane debuggable and its evolution easy; it carries no bulk data.
//!
//! One idea per file; every item is used as `tessera_proto::control::X`, whichever file
//! holds it:
//! - `backup`: backups in object storage: stores, backup records, restores, and what a
//!   manager asks a group's leader to upload or hydrate ([`BackupInfo`], [`StoreSpec`]).
//! - `manager`: the manager API, [`ManagerRequest`] and [`ManagerReply`], the managers'
//!   own membership requests included.
//! - `storage`: the storage admin RPCs a manager sends a node, [`StorageRequest`] and
//!   [`StorageReply`], with the membership state they answer with.
//! - `heartbeat`: what a node reports about itself: [`NodeRegistration`],
//!   [`NodeHeartbeat`] and the replica states inside.
//! - `status`: the cluster status report, [`ClusterStatus`].
//! - `volume`: a volume's record, [`VolumeInfo`].
//! - `snapshot`: a volume's snapshots and a clone's parent, [`SnapshotInfo`] and
//!   [`ParentInfo`], and the [`GroupOp`]s that take, clone, flatten and roll back.
//! - `route`: where a chunk lives, [`ChunkRoute`], and the bounded [`RoutePage`].
//! - `scrub`: a node's scrubbing: its [`ScrubStats`], a replica's [`RegionScan`] for
//!   the group leader, [`ScrubAction`].
//! - `group`: a replica group's placement, [`GroupSpec`] and [`PeerInfo`].
//! - `error`: how a request fails, [`ControlError`].
//! - `codec`: [`encode`] and [`decode`], the JSON of every body.
//!
//! A new message goes in the file of the conversation it belongs to; a record shared by
//! several conversations gets its own file. Every field added to a message needs
//! `#[serde(default)]`: peers of different versions meet during every upgrade.

mod backup;
mod codec;
mod error;
mod group;
mod heartbeat;
mod manager;
mod route;
mod scrub;
mod snapshot;
mod status;
mod storage;
mod volume;

pub use backup::{
    BackupChunkRequest, BackupInfo, BackupState, BadHash, ChunkUpload, Hash, HydrateChunkRequest,
    MAX_CHUNK_REGIONS, REGION_BLOCKS, REGION_BYTES, RESTORED_PARENT, RegionRef, RestoreInfo,
    RestoreSource, Secret, StoreInfo, StoreKind, StoreSpec,
};
pub use codec::{decode, encode};
pub use error::ControlError;
pub use group::{GroupSpec, PeerInfo};
pub use heartbeat::{
    Descriptors, GroupState, MAX_NODE_ID, NodeHeartbeat, NodeRegistration, RecoveryStats, Role,
};
pub use manager::{ManagerReply, ManagerRequest};
pub use route::{ChunkRoute, MAX_ROUTES_PER_PAGE, RoutePage};
pub use scrub::{
    BlockCheck, NodeScrub, RegionScan, RegionScanRequest, SCRUB_REGION_BLOCKS, ScannedBlock,
    ScrubAction, ScrubCursor, ScrubStats,
};
pub use snapshot::{
    GroupOp, ParentInfo, ReclaimInfo, SnapshotInfo, SnapshotState, SnapshotUsage, VolumeUsage,
};
pub use status::{ClusterStatus, GroupStatus, NodeStatus, ReplicaStatus};
pub use storage::{
    LayerBytes, MAX_DROP_CHUNKS, MAX_GROUP_OPS, MembershipState, PeerProgress, StorageReply,
    StorageRequest,
};
pub use volume::{AttachmentInfo, DEFAULT_CHUNK_SIZE, VolumeInfo};
