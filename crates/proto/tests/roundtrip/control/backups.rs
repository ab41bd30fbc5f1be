//! Strategies for the backup records of `tessera_proto::control` (stores, backups,
//! restores, and the chunk uploads and fills a manager asks of a group's leader).

use proptest::option::of;
use proptest::prelude::*;
use tessera_proto::control::*;

use super::records::{few, text};
use crate::{u32s, u64s};

pub fn hash() -> BoxedStrategy<Hash> {
    any::<[u8; 32]>().prop_map(Hash).boxed()
}

pub fn store_kind() -> BoxedStrategy<StoreKind> {
    prop_oneof![
        text().prop_map(|path| StoreKind::Dir { path }),
        (text(), text(), text(), text(), text(), text()).prop_map(
            |(endpoint, bucket, region, access_key_id, secret, prefix)| StoreKind::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key: Secret(secret),
                prefix,
            }
        ),
    ]
    .boxed()
}

pub fn store_spec() -> BoxedStrategy<StoreSpec> {
    (text(), text(), store_kind())
        .prop_map(|(name, zone, kind)| StoreSpec { name, zone, kind })
        .boxed()
}

pub fn backup_chunk_request() -> BoxedStrategy<BackupChunkRequest> {
    (
        (u64s(), u64s(), u64s(), u64s(), u64s(), u64s()),
        (store_spec(), u32s(), any::<bool>()),
    )
        .prop_map(|(a, (store, window, force))| {
            let (group_id, volume_id, chunk, chunk_bytes, seq, after) = a;
            BackupChunkRequest {
                group_id,
                volume_id,
                chunk,
                chunk_bytes,
                seq,
                after,
                store,
                window,
                force,
            }
        })
        .boxed()
}

pub fn region_ref() -> BoxedStrategy<RegionRef> {
    (u32s(), of(hash()))
        .prop_map(|(region, object)| RegionRef { region, object })
        .boxed()
}

pub fn chunk_upload() -> BoxedStrategy<ChunkUpload> {
    (few(region_ref()), u64s(), u64s(), u64s(), u64s(), u64s())
        .prop_map(
            |(regions, read_bytes, uploaded_bytes, uploaded_objects, present_objects, reads)| {
                ChunkUpload {
                    regions,
                    read_bytes,
                    uploaded_bytes,
                    uploaded_objects,
                    present_objects,
                    reads,
                }
            },
        )
        .boxed()
}

pub fn hydrate_chunk_request() -> BoxedStrategy<HydrateChunkRequest> {
    (
        u64s(),
        u64s(),
        u64s(),
        store_spec(),
        few(region_ref()),
        u32s(),
    )
        .prop_map(
            |(group_id, volume_id, chunk, store, regions, window)| HydrateChunkRequest {
                group_id,
                volume_id,
                chunk,
                store,
                regions,
                window,
            },
        )
        .boxed()
}

pub fn restore_source() -> BoxedStrategy<RestoreSource> {
    (u64s(), of(hash()), few(store_spec()))
        .prop_map(|(backup, segment, stores)| RestoreSource {
            backup,
            segment,
            stores,
        })
        .boxed()
}

pub fn backup_state() -> BoxedStrategy<BackupState> {
    prop::sample::select(vec![
        BackupState::Uploading,
        BackupState::Ready,
        BackupState::Failed,
    ])
    .boxed()
}

pub fn backup_info() -> BoxedStrategy<BackupInfo> {
    (
        (u64s(), text(), text(), text(), text(), backup_state()),
        (of(u64s()), of(u64s()), of(hash()), u64s(), u64s(), u64s()),
        (of(u64s()), u64s(), u64s(), u64s(), u64s(), u64s()),
        (u64s(), u64s(), of(text())),
    )
        .prop_map(|(a, b, c, d)| {
            let (id, volume, snapshot, store, zone, state) = a;
            let (base, copied_from, root, size, chunk_size, created_unix) = b;
            let (finished_unix, chunks_total, chunks_done, read_bytes, uploaded_bytes, objs) = c;
            let (present_objects, objects, error) = d;
            BackupInfo {
                id,
                volume,
                snapshot,
                store,
                zone,
                state,
                base,
                copied_from,
                root,
                size,
                chunk_size,
                created_unix,
                finished_unix,
                chunks_total,
                chunks_done,
                read_bytes,
                uploaded_bytes,
                uploaded_objects: objs,
                present_objects,
                objects,
                error,
            }
        })
        .boxed()
}

pub fn store_info() -> BoxedStrategy<StoreInfo> {
    (
        (text(), text(), text(), text()),
        (any::<bool>(), u64s(), u64s(), u64s()),
    )
        .prop_map(
            |((name, zone, kind, location), (default, backups, objects, garbage))| StoreInfo {
                name,
                zone,
                kind,
                location,
                default,
                backups,
                objects,
                garbage,
            },
        )
        .boxed()
}

pub fn restore_info() -> BoxedStrategy<RestoreInfo> {
    (
        (u64s(), text(), u64s(), u64s()),
        (u64s(), of(u64s()), of(text()), any::<bool>()),
    )
        .prop_map(
            |(
                (backup, store, chunks_total, chunks_done),
                (hydrated_bytes, eta_secs, error, linked),
            )| {
                RestoreInfo {
                    backup,
                    store,
                    chunks_total,
                    chunks_done,
                    hydrated_bytes,
                    eta_secs,
                    error,
                    linked,
                }
            },
        )
        .boxed()
}

/// The guard of [`StoreKind`].
pub fn store_kind_index(k: &StoreKind) -> usize {
    match k {
        StoreKind::Dir { .. } => 0,
        StoreKind::S3 { .. } => 1,
    }
}

/// The guard of [`BackupState`].
pub fn backup_state_index(s: &BackupState) -> usize {
    match s {
        BackupState::Uploading => 0,
        BackupState::Ready => 1,
        BackupState::Failed => 2,
    }
}
