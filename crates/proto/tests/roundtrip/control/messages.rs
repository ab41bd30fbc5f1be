//! Strategies for the four control-plane conversations' enums, each with its guard (an
//! exhaustive `match` numbering its variants): a variant added to the crate does not
//! compile here until its strategy is added too.

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tessera_proto::control::*;

use super::backups::*;
use super::nodes::*;
use super::records::*;
use crate::{u32s, u64s};

/// Variants of [`ManagerRequest`], numbered by [`manager_request_index`].
pub const MANAGER_REQUESTS: usize = 41;

pub fn manager_request() -> BoxedStrategy<ManagerRequest> {
    use ManagerRequest as R;
    let t = text;
    prop_oneof![
        node_registration().prop_map(R::RegisterNode),
        node_heartbeat().prop_map(R::Heartbeat),
        (t(), u64s(), of(u64s())).prop_map(|(name, size, chunk_size)| R::CreateVolume {
            name,
            size,
            chunk_size
        }),
        Just(R::ListVolumes),
        t().prop_map(|name| R::VolumeInfo { name }),
        (t(), u64s()).prop_map(|(name, size)| R::ResizeVolume { name, size }),
        t().prop_map(|name| R::DeleteVolume { name }),
        (t(), any::<bool>()).prop_map(|(name, paged)| R::OpenVolume { name, paged }),
        (t(), t(), any::<bool>(), t()).prop_map(|(name, client, paged, holder)| {
            R::AttachVolume {
                name,
                client,
                paged,
                holder,
            }
        }),
        (u64s(), u64s()).prop_map(|(volume_id, epoch)| R::RenewAttachment { volume_id, epoch }),
        (u64s(), u64s(), t()).prop_map(|(volume_id, epoch, holder)| R::Capability {
            volume_id,
            epoch,
            holder
        }),
        (t(), u64s(), any::<bool>()).prop_map(|(name, epoch, force)| R::DetachVolume {
            name,
            epoch,
            force
        }),
        (u64s(), u64s(), any::<bool>(), u64s()).prop_map(|(volume_id, chunk, allocate, epoch)| {
            R::Route {
                volume_id,
                chunk,
                allocate,
                epoch,
            }
        }),
        (u64s(), u64s(), u32s(), u64s()).prop_map(|(volume_id, first_chunk, limit, epoch)| {
            R::Routes {
                volume_id,
                first_chunk,
                limit,
                epoch,
            }
        }),
        (u64s(), u64s(), u64s()).prop_map(|(volume_id, after_group, epoch)| R::VolumeGroups {
            volume_id,
            after_group,
            epoch
        }),
        (u64s(), u64s(), u32s(), u64s()).prop_map(|(volume_id, first_chunk, count, epoch)| {
            R::ProvisionChunks {
                volume_id,
                first_chunk,
                count,
                epoch,
            }
        }),
        (t(), t()).prop_map(|(volume, name)| R::CreateSnapshot { volume, name }),
        of(t()).prop_map(|volume| R::ListSnapshots { volume }),
        (t(), t()).prop_map(|(volume, name)| R::SnapshotInfo { volume, name }),
        t().prop_map(|name| R::VolumeUsage { name }),
        (t(), t()).prop_map(|(volume, name)| R::DeleteSnapshot { volume, name }),
        (t(), t(), t()).prop_map(|(volume, snapshot, name)| R::CloneVolume {
            volume,
            snapshot,
            name
        }),
        (t(), t()).prop_map(|(volume, snapshot)| R::RollbackVolume { volume, snapshot }),
        t().prop_map(|name| R::FlattenVolume { name }),
        (t(), t(), of(t())).prop_map(|(volume, snapshot, store)| R::CreateBackup {
            volume,
            snapshot,
            store
        }),
        of(t()).prop_map(|volume| R::ListBackups { volume }),
        u64s().prop_map(|id| R::BackupInfo { id }),
        u64s().prop_map(|id| R::DeleteBackup { id }),
        (u64s(), t()).prop_map(|(id, to_store)| R::CopyBackup { id, to_store }),
        (t(), u64s(), of(t())).prop_map(|(name, backup, store)| R::RestoreVolume {
            name,
            backup,
            store
        }),
        t().prop_map(|name| R::PrewarmVolume { name }),
        Just(R::ListStores),
        (u64s(), u64s()).prop_map(|(volume_id, chunk)| R::RestoreSource { volume_id, chunk }),
        Just(R::ClusterStatus),
        (u64s(), any::<bool>()).prop_map(|(node_id, undo)| R::DrainNode { node_id, undo }),
        (u64s(), t()).prop_map(|(id, addr)| R::AddManager { id, addr }),
        Just(R::Managers),
        Just(R::ScrubStatus),
        (u64s(), scrub_action()).prop_map(|(node_id, action)| R::ScrubControl { node_id, action }),
        t().prop_map(|pem| R::PublishCrl { pem }),
        Just(R::Crl),
    ]
    .boxed()
}

pub fn manager_request_index(r: &ManagerRequest) -> usize {
    use ManagerRequest as R;
    match r {
        R::RegisterNode(_) => 0,
        R::Heartbeat(_) => 1,
        R::CreateVolume { .. } => 2,
        R::ListVolumes => 3,
        R::VolumeInfo { .. } => 4,
        R::ResizeVolume { .. } => 5,
        R::DeleteVolume { .. } => 6,
        R::OpenVolume { .. } => 7,
        R::AttachVolume { .. } => 8,
        R::RenewAttachment { .. } => 9,
        R::Capability { .. } => 10,
        R::DetachVolume { .. } => 11,
        R::Route { .. } => 12,
        R::Routes { .. } => 13,
        R::VolumeGroups { .. } => 14,
        R::ProvisionChunks { .. } => 15,
        R::CreateSnapshot { .. } => 16,
        R::ListSnapshots { .. } => 17,
        R::SnapshotInfo { .. } => 18,
        R::VolumeUsage { .. } => 19,
        R::DeleteSnapshot { .. } => 20,
        R::CloneVolume { .. } => 21,
        R::RollbackVolume { .. } => 22,
        R::FlattenVolume { .. } => 23,
        R::CreateBackup { .. } => 24,
        R::ListBackups { .. } => 25,
        R::BackupInfo { .. } => 26,
        R::DeleteBackup { .. } => 27,
        R::CopyBackup { .. } => 28,
        R::RestoreVolume { .. } => 29,
        R::PrewarmVolume { .. } => 30,
        R::ListStores => 31,
        R::RestoreSource { .. } => 32,
        R::ClusterStatus => 33,
        R::DrainNode { .. } => 34,
        R::AddManager { .. } => 35,
        R::Managers => 36,
        R::ScrubStatus => 37,
        R::ScrubControl { .. } => 38,
        R::PublishCrl { .. } => 39,
        R::Crl => 40,
    }
}

/// Variants of [`ManagerReply`], numbered by [`manager_reply_index`].
pub const MANAGER_REPLIES: usize = 24;

fn few_volumes() -> impl Strategy<Value = Vec<VolumeInfo>> + Clone {
    vec(volume_info(), 0..2)
}

pub fn manager_reply() -> BoxedStrategy<ManagerReply> {
    use ManagerReply as R;
    let members = || few((u64s(), text()));
    prop_oneof![
        u64s().prop_map(|node_id| R::Registered { node_id }),
        (few(group_spec()), few(u64s()), u64s()).prop_map(
            |(create_groups, remove_groups, crl_version)| R::HeartbeatAck {
                create_groups,
                remove_groups,
                crl_version,
            }
        ),
        volume_usage().prop_map(R::Usage),
        volume_info().prop_map(R::Volume),
        few_volumes().prop_map(R::Volumes),
        Just(R::Deleted),
        (volume_info(), few(chunk_route()), any::<bool>()).prop_map(
            |(volume, chunks, more_groups)| R::Opened {
                volume,
                chunks,
                more_groups
            }
        ),
        (
            volume_info(),
            few(chunk_route()),
            any::<bool>(),
            u64s(),
            u64s()
        )
            .prop_map(
                |(volume, chunks, more_groups, epoch, lease_ms)| R::Attached {
                    volume,
                    chunks,
                    more_groups,
                    epoch,
                    lease_ms
                }
            ),
        u64s().prop_map(|lease_ms| R::Renewed { lease_ms }),
        u64s().prop_map(|fence_epoch| R::Detached { fence_epoch }),
        of(chunk_route()).prop_map(R::Route),
        route_page().prop_map(R::Routes),
        route_page().prop_map(R::Groups),
        cluster_status().prop_map(R::Status),
        snapshot_info().prop_map(R::Snapshot),
        few(snapshot_info()).prop_map(R::Snapshots),
        backup_info().prop_map(|b| R::Backup(Box::new(b))),
        few(backup_info()).prop_map(R::Backups),
        few(store_info()).prop_map(R::Stores),
        restore_source().prop_map(|s| R::RestoreSource(Box::new(s))),
        (text(), u64s(), u64s()).prop_map(|(signed, expires_ms, lifetime_ms)| {
            R::Capability {
                signed,
                expires_ms,
                lifetime_ms,
            }
        }),
        (members(), members()).prop_map(|(voters, learners)| R::Managers { voters, learners }),
        few(node_scrub()).prop_map(R::Scrub),
        (u64s(), text()).prop_map(|(version, pem)| R::Crl { version, pem }),
    ]
    .boxed()
}

pub fn manager_reply_index(r: &ManagerReply) -> usize {
    use ManagerReply as R;
    match r {
        R::Registered { .. } => 0,
        R::HeartbeatAck { .. } => 1,
        R::Usage(_) => 2,
        R::Volume(_) => 3,
        R::Volumes(_) => 4,
        R::Deleted => 5,
        R::Opened { .. } => 6,
        R::Attached { .. } => 7,
        R::Renewed { .. } => 8,
        R::Detached { .. } => 9,
        R::Route(_) => 10,
        R::Routes(_) => 11,
        R::Groups(_) => 12,
        R::Status(_) => 13,
        R::Snapshot(_) => 14,
        R::Snapshots(_) => 15,
        R::Backup(_) => 16,
        R::Backups(_) => 17,
        R::Stores(_) => 18,
        R::RestoreSource(_) => 19,
        R::Capability { .. } => 20,
        R::Managers { .. } => 21,
        R::Scrub(_) => 22,
        R::Crl { .. } => 23,
    }
}

/// Variants of [`StorageRequest`], numbered by [`storage_request_index`].
pub const STORAGE_REQUESTS: usize = 11;

pub fn storage_request() -> BoxedStrategy<StorageRequest> {
    use StorageRequest as R;
    prop_oneof![
        (u64s(), u64s(), few(u64s())).prop_map(|(group_id, volume_id, chunks)| {
            R::DropChunks {
                group_id,
                volume_id,
                chunks,
            }
        }),
        Just(R::Status),
        (u64s(), few(peer_info()))
            .prop_map(|(group_id, peers)| R::ChangeMembers { group_id, peers }),
        group_spec().prop_map(|spec| R::HostGroup { spec }),
        (u64s(), few(group_op())).prop_map(|(group_id, ops)| R::Apply { group_id, ops }),
        (u64s(), u64s()).prop_map(|(group_id, volume_id)| R::LayerUsage {
            group_id,
            volume_id
        }),
        (u64s(), u64s()).prop_map(|(group_id, to)| R::TransferLeader { group_id, to }),
        backup_chunk_request().prop_map(R::BackupChunk),
        hydrate_chunk_request().prop_map(R::HydrateChunk),
        region_scan_request().prop_map(R::ScrubRegion),
        scrub_action().prop_map(|action| R::Scrub { action }),
    ]
    .boxed()
}

pub fn storage_request_index(r: &StorageRequest) -> usize {
    use StorageRequest as R;
    match r {
        R::DropChunks { .. } => 0,
        R::Status => 1,
        R::ChangeMembers { .. } => 2,
        R::HostGroup { .. } => 3,
        R::Apply { .. } => 4,
        R::LayerUsage { .. } => 5,
        R::TransferLeader { .. } => 6,
        R::BackupChunk(_) => 7,
        R::HydrateChunk(_) => 8,
        R::ScrubRegion(_) => 9,
        R::Scrub { .. } => 10,
    }
}

/// Variants of [`StorageReply`], numbered by [`storage_reply_index`].
pub const STORAGE_REPLIES: usize = 8;

pub fn storage_reply() -> BoxedStrategy<StorageReply> {
    use StorageReply as R;
    prop_oneof![
        Just(R::Done),
        node_heartbeat().prop_map(R::Status),
        membership_state().prop_map(R::Members),
        few(layer_bytes()).prop_map(R::LayerUsage),
        chunk_upload().prop_map(R::BackupChunk),
        region_scan().prop_map(R::ScrubRegion),
        scrub_stats().prop_map(R::Scrub),
        u64s().prop_map(|hint| R::NotLeader { hint }),
    ]
    .boxed()
}

pub fn storage_reply_index(r: &StorageReply) -> usize {
    use StorageReply as R;
    match r {
        R::Done => 0,
        R::Status(_) => 1,
        R::Members(_) => 2,
        R::LayerUsage(_) => 3,
        R::BackupChunk(_) => 4,
        R::ScrubRegion(_) => 5,
        R::Scrub(_) => 6,
        R::NotLeader { .. } => 7,
    }
}
