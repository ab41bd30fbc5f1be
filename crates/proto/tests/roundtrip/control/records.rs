//! Strategies for the records the control-plane messages carry (volumes, snapshots,
//! routes, groups, errors; the nodes' reports are in `nodes`, backups in `backups`), every
//! field free (text with quotes, escapes, control
//! characters and any Unicode; numbers at their edges; options and lists empty or not).

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use tessera_proto::control::*;

use crate::{u32s, u64s};

/// Any text: quotes, backslashes, control characters, any Unicode scalar.
pub fn text() -> impl Strategy<Value = String> + Clone {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

/// A short list.
pub fn few<S: Strategy + Clone>(s: S) -> impl Strategy<Value = Vec<S::Value>> + Clone {
    vec(s, 0..3)
}

pub fn control_error() -> BoxedStrategy<ControlError> {
    prop_oneof![
        text().prop_map(ControlError::NotFound),
        text().prop_map(ControlError::AlreadyExists),
        text().prop_map(ControlError::Invalid),
        text().prop_map(ControlError::Unavailable),
        text().prop_map(ControlError::Conflict),
        text().prop_map(ControlError::Internal),
        text().prop_map(ControlError::Unauthorized),
        of(text()).prop_map(ControlError::NotLeader),
    ]
    .boxed()
}

/// The guard of [`ControlError`].
pub fn control_error_index(e: &ControlError) -> usize {
    match e {
        ControlError::NotFound(_) => 0,
        ControlError::AlreadyExists(_) => 1,
        ControlError::Invalid(_) => 2,
        ControlError::Unavailable(_) => 3,
        ControlError::Conflict(_) => 4,
        ControlError::Internal(_) => 5,
        ControlError::Unauthorized(_) => 6,
        ControlError::NotLeader(_) => 7,
    }
}

pub fn peer_info() -> BoxedStrategy<PeerInfo> {
    (u64s(), text())
        .prop_map(|(node_id, addr)| PeerInfo { node_id, addr })
        .boxed()
}

pub fn group_spec() -> BoxedStrategy<GroupSpec> {
    (u64s(), few(peer_info()), any::<bool>(), u64s())
        .prop_map(|(group_id, peers, joining, min_term)| GroupSpec {
            group_id,
            peers,
            joining,
            min_term,
        })
        .boxed()
}

pub fn chunk_route() -> BoxedStrategy<ChunkRoute> {
    (u64s(), u64s(), few(peer_info()), of(u64s()), u64s())
        .prop_map(|(chunk, group_id, peers, leader, seq)| ChunkRoute {
            chunk,
            group_id,
            peers,
            leader,
            seq,
        })
        .boxed()
}

pub fn route_page() -> BoxedStrategy<RoutePage> {
    (few(chunk_route()), of(u64s()))
        .prop_map(|(routes, next)| RoutePage { routes, next })
        .boxed()
}

pub fn snapshot_state() -> BoxedStrategy<SnapshotState> {
    prop::sample::select(vec![SnapshotState::Creating, SnapshotState::Ready]).boxed()
}

pub fn snapshot_info() -> BoxedStrategy<SnapshotInfo> {
    (
        text(),
        u64s(),
        text(),
        u64s(),
        u64s(),
        snapshot_state(),
        few(text()),
        u64s(),
    )
        .prop_map(
            |(volume, volume_id, name, seq, created_unix, state, clones, size)| SnapshotInfo {
                volume,
                volume_id,
                name,
                seq,
                created_unix,
                state,
                clones,
                size,
            },
        )
        .boxed()
}

pub fn snapshot_usage() -> BoxedStrategy<SnapshotUsage> {
    (text(), u64s(), u64s())
        .prop_map(|(name, seq, bytes)| SnapshotUsage { name, seq, bytes })
        .boxed()
}

pub fn volume_usage() -> BoxedStrategy<VolumeUsage> {
    (text(), few(snapshot_usage()), u64s(), few(u64s()))
        .prop_map(
            |(volume, snapshots, live_bytes, unreported_groups)| VolumeUsage {
                volume,
                snapshots,
                live_bytes,
                unreported_groups,
            },
        )
        .boxed()
}

pub fn reclaim_info() -> BoxedStrategy<ReclaimInfo> {
    (u64s(), u64s())
        .prop_map(|(low, next_chunk)| ReclaimInfo { low, next_chunk })
        .boxed()
}

pub fn parent_info() -> BoxedStrategy<ParentInfo> {
    (text(), u64s(), text(), u64s(), u64s(), any::<bool>())
        .prop_map(
            |(volume, volume_id, snapshot, seq, linked_chunks, flattening)| ParentInfo {
                volume,
                volume_id,
                snapshot,
                seq,
                linked_chunks,
                flattening,
            },
        )
        .boxed()
}

pub fn group_op() -> BoxedStrategy<GroupOp> {
    prop_oneof![
        (u64s(), u64s(), u64s()).prop_map(|(volume_id, epoch, seq)| GroupOp::Fence {
            volume_id,
            epoch,
            seq
        }),
        (u64s(), u64s(), u64s(), u64s()).prop_map(
            |(volume_id, chunk, parent_volume, parent_seq)| GroupOp::Link {
                volume_id,
                chunk,
                parent_volume,
                parent_seq
            }
        ),
        (u64s(), u64s(), u32s(), u32s(), u64s()).prop_map(
            |(volume_id, chunk, offset, len, seq)| GroupOp::Flatten {
                volume_id,
                chunk,
                offset,
                len,
                seq
            }
        ),
        (u64s(), u64s()).prop_map(|(volume_id, chunk)| GroupOp::Unlink { volume_id, chunk }),
        (u64s(), u64s(), u64s(), u64s()).prop_map(|(volume_id, chunk, to, seq)| {
            GroupOp::Rollback {
                volume_id,
                chunk,
                to,
                seq,
            }
        }),
        (
            u64s(),
            u64s(),
            u32s(),
            u32s(),
            u64s(),
            u64s(),
            any::<bool>()
        )
            .prop_map(
                |(volume_id, chunk, offset, len, low, top, live)| GroupOp::Merge {
                    volume_id,
                    chunk,
                    offset,
                    len,
                    low,
                    top,
                    live
                }
            ),
        (u64s(), u64s(), u64s(), u64s(), any::<bool>()).prop_map(
            |(volume_id, chunk, low, top, live)| GroupOp::DropMerged {
                volume_id,
                chunk,
                low,
                top,
                live
            }
        ),
    ]
    .boxed()
}

/// The guard of [`GroupOp`].
pub fn group_op_index(op: &GroupOp) -> usize {
    match op {
        GroupOp::Fence { .. } => 0,
        GroupOp::Link { .. } => 1,
        GroupOp::Flatten { .. } => 2,
        GroupOp::Unlink { .. } => 3,
        GroupOp::Rollback { .. } => 4,
        GroupOp::Merge { .. } => 5,
        GroupOp::DropMerged { .. } => 6,
    }
}

pub fn attachment_info() -> BoxedStrategy<AttachmentInfo> {
    (text(), u64s(), u64s(), of(u64s()))
        .prop_map(
            |(client, epoch, since_unix, lease_left_ms)| AttachmentInfo {
                client,
                epoch,
                since_unix,
                lease_left_ms,
            },
        )
        .boxed()
}

pub fn volume_info() -> BoxedStrategy<VolumeInfo> {
    (
        (u64s(), text(), u64s(), u64s(), u64s(), u64s()),
        (of(attachment_info()), u64s(), of(parent_info())),
        (
            few(snapshot_info()),
            few(reclaim_info()),
            of(super::backups::restore_info()),
        ),
    )
        .prop_map(|(a, b, c)| {
            let (id, name, size, chunk_size, mapped_chunks, created_unix) = a;
            let (attachment, seq, parent) = b;
            let (snapshots, reclaims, restore) = c;
            VolumeInfo {
                id,
                name,
                size,
                chunk_size,
                mapped_chunks,
                created_unix,
                attachment,
                seq,
                parent,
                snapshots,
                reclaims,
                restore: restore.map(Box::new),
            }
        })
        .boxed()
}

pub fn layer_bytes() -> BoxedStrategy<LayerBytes> {
    (u64s(), u64s(), u64s())
        .prop_map(|(chunk, layer, bytes)| LayerBytes {
            chunk,
            layer,
            bytes,
        })
        .boxed()
}

pub fn peer_progress() -> BoxedStrategy<PeerProgress> {
    (u64s(), u64s(), text())
        .prop_map(|(node_id, matched, state)| PeerProgress {
            node_id,
            matched,
            state,
        })
        .boxed()
}

pub fn membership_state() -> BoxedStrategy<MembershipState> {
    (
        u64s(),
        few(u64s()),
        few(u64s()),
        any::<bool>(),
        any::<bool>(),
        u64s(),
        u64s(),
        few(peer_progress()),
    )
        .prop_map(
            |(group_id, voters, learners, joint, done, last_index, term, progress)| {
                MembershipState {
                    group_id,
                    voters,
                    learners,
                    joint,
                    done,
                    last_index,
                    term,
                    progress,
                }
            },
        )
        .boxed()
}

/// The guard of [`SnapshotState`].
pub fn snapshot_state_index(s: &SnapshotState) -> usize {
    match s {
        SnapshotState::Creating => 0,
        SnapshotState::Ready => 1,
    }
}
