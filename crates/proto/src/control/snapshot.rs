//! Volume snapshots and clones as the control plane describes them: [`SnapshotInfo`], the
//! parent of a clone ([`ParentInfo`]), and the operations a manager asks of a replica group
//! to take, clone, flatten and roll back ([`GroupOp`], carried by
//! [`super::StorageRequest::Apply`]).
//!
//! A user-facing snapshot (`VOL@SNAP`) is a point in a volume's snapshot sequence: it reads,
//! per block, the newest layer at or below its sequence (see [`crate::command`]). It is not
//! a Raft snapshot (a replica's catch-up copy), which the data plane calls a catch-up.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::ManagerRequest;

/// Where a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Recorded, its sequence cut, not yet fenced into every group of the volume: not
    /// readable. A manager that finds one after a failover finishes it (or a retry of the
    /// same create does).
    Creating,
    /// Complete: readable, clonable, never changes.
    Ready,
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The volume's name.
    pub volume: String,
    /// The volume's id.
    pub volume_id: u64,
    /// The snapshot's name, unique within its volume (the same rules as a volume name).
    pub name: String,
    /// Its sequence: it reads every write of a sequence up to this one.
    pub seq: u64,
    /// When it was taken (Unix seconds).
    pub created_unix: u64,
    /// Whether it is complete.
    pub state: SnapshotState,
    /// The volumes cloned from it (it cannot be deleted while any exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clones: Vec<String>,
    /// The volume's size when it was taken.
    #[serde(default)]
    pub size: u64,
}

/// What a volume's snapshots and live image hold on disk (one replica's count): the
/// answer to [`super::ManagerRequest::VolumeUsage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUsage {
    /// The volume's name.
    pub volume: String,
    /// Per snapshot, oldest first: the bytes written while it was the volume's newest
    /// (its sequence's layers since the snapshot before it), which deleting it frees
    /// unless a later image still reads them.
    pub snapshots: Vec<SnapshotUsage>,
    /// Bytes written since the newest snapshot (the whole volume if it has none).
    pub live_bytes: u64,
    /// Groups no replica of which answered in time: their bytes are missing above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreported_groups: Vec<u64>,
}

/// One snapshot's bytes in a [`VolumeUsage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUsage {
    /// The snapshot's name.
    pub name: String,
    /// Its sequence.
    pub seq: u64,
    /// Bytes allocated for the layers it reads that no older snapshot reads.
    pub bytes: u64,
}

/// A deleted snapshot's space being reclaimed: the layers `low..` up to the next
/// snapshot (or the live one) are merged chunk by chunk, in chunk order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimInfo {
    /// The lowest layer of the range merged.
    pub low: u64,
    /// Chunks below this index are done.
    pub next_chunk: u64,
}

/// A clone's parent: the snapshot it reads through to until flattened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentInfo {
    /// The parent volume's name.
    pub volume: String,
    /// The parent volume's id.
    pub volume_id: u64,
    /// The snapshot's name.
    pub snapshot: String,
    /// The snapshot's sequence.
    pub seq: u64,
    /// Chunks of the clone still reading through to the parent (0 once flattened).
    #[serde(default)]
    pub linked_chunks: u64,
    /// A flatten is running: the clone's remaining chunks are being copied.
    #[serde(default)]
    pub flattening: bool,
}

/// One operation on a replica group's chunks, proposed through its log by the leader (the
/// manager's side of snapshots and clones; see [`crate::command::CmdOp`] for each one's
/// effect on the chunk store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOp {
    /// Raise the volume's writer epoch and snapshot sequence in the group (either 0:
    /// unchanged). Taking a snapshot fences every group of the volume with the new
    /// sequence before the snapshot is ready, so no write of an older one is applied after.
    Fence {
        /// The volume's id.
        volume_id: u64,
        /// The writer epoch (0: unchanged).
        epoch: u64,
        /// The snapshot sequence (0: unchanged).
        seq: u64,
    },
    /// The clone's chunk reads through to the same chunk of `parent_volume` as of
    /// `parent_seq`.
    Link {
        /// The clone's id.
        volume_id: u64,
        /// The chunk index (the same in clone and parent).
        chunk: u64,
        /// The parent volume's id.
        parent_volume: u64,
        /// The parent snapshot's sequence.
        parent_seq: u64,
    },
    /// Copy the parent's blocks the clone's chunk lacks in `offset..offset + len` into the
    /// clone's layer `seq`.
    Flatten {
        /// The clone's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
        /// Byte offset in the chunk.
        offset: u32,
        /// Bytes to copy.
        len: u32,
        /// The clone's snapshot sequence (the layer written).
        seq: u64,
    },
    /// The clone's chunk no longer reads through (its flatten is complete).
    Unlink {
        /// The clone's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
    },
    /// The chunk's live image becomes snapshot `to`'s, written into layer `seq`.
    Rollback {
        /// The volume's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
        /// The snapshot's sequence.
        to: u64,
        /// The volume's sequence after the rollback (the layer written).
        seq: u64,
    },
    /// Merge the chunk's layers `low..=top` in `offset..offset + len` into one target
    /// (see `tessera_proto::command::CmdOp::Merge`): reclaiming a deleted snapshot's
    /// space. Sent after a `Fence` at the volume's sequence.
    Merge {
        /// The volume's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
        /// Byte offset in the chunk.
        offset: u32,
        /// Bytes covered.
        len: u32,
        /// The lowest layer merged.
        low: u64,
        /// The highest layer merged.
        top: u64,
        /// The range is the live one: the target is `top` (which clients write), else the
        /// lowest layer the chunk has in the range.
        live: bool,
    },
    /// Forget the layers a merge of the same range emptied (see
    /// `tessera_proto::command::CmdOp::DropMerged`).
    DropMerged {
        /// The volume's id.
        volume_id: u64,
        /// The chunk index.
        chunk: u64,
        /// The lowest layer merged.
        low: u64,
        /// The highest layer merged.
        top: u64,
        /// As for [`GroupOp::Merge`].
        live: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode};

    #[test]
    fn snapshots_parents_and_ops_round_trip() {
        let snap = SnapshotInfo {
            volume: "db1".into(),
            volume_id: 3,
            name: "monday".into(),
            seq: 4,
            created_unix: 1_700_000_000,
            state: SnapshotState::Ready,
            clones: vec!["db1-test".into()],
            size: 1 << 30,
        };
        assert_round_trips(&snap);
        assert_round_trips(&SnapshotInfo {
            state: SnapshotState::Creating,
            clones: Vec::new(),
            ..snap
        });
        assert_round_trips(&ParentInfo {
            volume: "db1".into(),
            volume_id: 3,
            snapshot: "monday".into(),
            seq: 4,
            linked_chunks: 12,
            flattening: true,
        });
        for op in [
            GroupOp::Fence {
                volume_id: 3,
                epoch: 0,
                seq: 5,
            },
            GroupOp::Link {
                volume_id: 9,
                chunk: 2,
                parent_volume: 3,
                parent_seq: 4,
            },
            GroupOp::Flatten {
                volume_id: 9,
                chunk: 2,
                offset: 0,
                len: 1 << 20,
                seq: 1,
            },
            GroupOp::Unlink {
                volume_id: 9,
                chunk: 2,
            },
            GroupOp::Rollback {
                volume_id: 3,
                chunk: 0,
                to: 4,
                seq: 6,
            },
            GroupOp::Merge {
                volume_id: 3,
                chunk: 1,
                offset: 4 << 20,
                len: 4 << 20,
                low: 2,
                top: 5,
                live: false,
            },
            GroupOp::DropMerged {
                volume_id: 3,
                chunk: 1,
                low: 2,
                top: 7,
                live: true,
            },
        ] {
            assert_round_trips(&op);
        }
    }

    #[test]
    fn the_state_is_written_in_snake_case() {
        let got: SnapshotState = decode(br#""creating""#).unwrap();
        assert_eq!(got, SnapshotState::Creating);
    }
}
