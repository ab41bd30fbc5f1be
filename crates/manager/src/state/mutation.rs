//! One durable change, [`Mutation`], and the id high-water marks it moves, [`NextIds`].
//!
//! The vocabulary between planning, the Raft log, the database and
//! [`State::apply`](super::State::apply). Must never carry anything `apply` would have to
//! decide: ids and timestamps are chosen when planning.

use serde::{Deserialize, Serialize};

use tessera_proto::control::Hash;

use super::backup_records::{BackupRecord, BackupStats, ChunkSegment, GcKey};
use super::records::{CrlRecord, GroupRecord, NodeRecord, SnapshotRecord, VolumeRecord};

/// One durable change. Row-shaped on purpose: the database writes exactly these rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Register a node or update its address, location or capacity.
    PutNode(NodeRecord),
    AddGroups(Vec<GroupRecord>),
    /// Create a volume or change its size.
    PutVolume(VolumeRecord),
    /// Forget a volume and its whole chunk map.
    DeleteVolume {
        id: u64,
    },
    MapChunk {
        volume_id: u64,
        chunk: u64,
        group_id: u64,
    },
    /// Many [`Mutation::MapChunk`]s of one volume at once: `(chunk, group id)` pairs.
    MapChunks {
        volume_id: u64,
        chunks: Vec<(u64, u64)>,
    },
    /// Start (or re-aim) a membership change of a group; an empty `target` abandons it.
    SetGroupTarget {
        group_id: u64,
        target: Vec<u64>,
    },
    /// A membership change finished: the group's voters are now `members`; clears the
    /// target. `term`: the term of the leader that said so (raises `GroupRecord::term`).
    SetGroupMembers {
        group_id: u64,
        members: Vec<u64>,
        #[serde(default)]
        term: u64,
    },
    SetNodeDraining {
        node_id: u64,
        draining: bool,
    },
    /// Revocation lists published (they replace those in force whole).
    SetCrl(CrlRecord),
    /// Heartbeats showed these groups with a leader: see [`GroupRecord::established`].
    SetGroupsEstablished {
        group_ids: Vec<u64>,
    },
    /// The cut of a snapshot: `snapshot` (`Creating`, at sequence S) is recorded and the
    /// volume's sequence becomes S + 1. Ignored if the volume has a snapshot of that name.
    CutSnapshot {
        volume_id: u64,
        snapshot: SnapshotRecord,
    },
    /// Every group of the volume is fenced past the snapshot: it is `Ready`. Only the
    /// snapshot of that name cut at `seq` (0, from a log before it was recorded: any):
    /// a finish of one deleted and cut again under its name must not mark the new one.
    SnapshotReady {
        volume_id: u64,
        name: String,
        #[serde(default)]
        seq: u64,
    },
    /// Every group applied the rollback started with writer epoch `epoch`: the volume is
    /// usable again (ignored if another epoch was granted since).
    RollbackDone {
        volume_id: u64,
        epoch: u64,
    },
    /// Forget a snapshot (one without clones), and record its space to reclaim: the
    /// layers from the snapshot before it (plus one) up to the next one, which replaces
    /// any reclaim pending inside that range (see `reclaims`).
    DeleteSnapshot {
        volume_id: u64,
        name: String,
    },
    /// Create a clone: its record (with its parent link, `linking`) and its chunk map,
    /// `(chunk, group id)` pairs, each chunk in its parent's group.
    CloneVolume {
        volume: VolumeRecord,
        chunks: Vec<(u64, u64)>,
    },
    /// Every link of the clone is committed in its group: the clone is usable.
    CloneLinked {
        volume_id: u64,
    },
    /// Start or stop flattening a clone.
    SetFlattening {
        volume_id: u64,
        flattening: bool,
    },
    /// A clone's chunk is flattened and unlinked in its group: it no longer reads through.
    ChunkUnlinked {
        volume_id: u64,
        chunk: u64,
    },
    /// A flattened clone (no chunk linked any more) forgets its parent.
    ParentCleared {
        volume_id: u64,
    },
    /// The chunks below `next_chunk` of the reclaim starting at layer `low` are merged in
    /// their groups (ignored without such a reclaim, or if it is no longer the one the job
    /// was planned for: see [`ReclaimOf`]); never moves it back, but in a `retry` (some
    /// replica still holds a chunk there unmerged: it is merged again from there).
    ReclaimProgress {
        volume_id: u64,
        low: u64,
        next_chunk: u64,
        #[serde(flatten)]
        of: ReclaimOf,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
    },
    /// Every chunk of the reclaim starting at layer `low` is merged: it is forgotten (if
    /// it is still the one the job was planned for).
    ReclaimDone {
        volume_id: u64,
        low: u64,
        #[serde(flatten)]
        of: ReclaimOf,
    },
    /// Record a backup (or a copy, `copied_from`), `Uploading`. Ignored if its id exists.
    CreateBackup(BackupRecord),
    /// Segments of chunks of an uploading backup are stored: record them and count their
    /// references (see `backup_refs` for the rules, and which entries are skipped: those
    /// the job must redo with `force`). `stats` are added in any case.
    BackupChunks {
        id: u64,
        /// The store's `gc_gen` when the job started uploading these chunks, or a later
        /// one the leader vouched for (no key of theirs collected since:
        /// `service::collected`).
        gc_gen: u64,
        chunks: Vec<ChunkSegment>,
        #[serde(default)]
        stats: BackupStats,
    },
    /// The root is stored: the backup is restorable (if it is still uploading).
    BackupReady {
        id: u64,
        root: Hash,
        finished_unix: u64,
    },
    /// The job gave up (if it is still uploading).
    BackupFailed {
        id: u64,
        error: String,
        finished_unix: u64,
    },
    /// The last error a job is retrying after (shown by `backup info`).
    BackupError {
        id: u64,
        error: String,
    },
    /// Forget a backup: its segments lose a reference, its root becomes garbage.
    DeleteBackup {
        id: u64,
        now_unix: u64,
    },
    /// Segments no backup references any more, with the objects each names (read from the
    /// store; empty if it could not be read): they and the objects left unreferenced
    /// become garbage.
    SegmentsReleased {
        store: String,
        segs: Vec<(Hash, Vec<Hash>)>,
        now_unix: u64,
    },
    /// The collector is about to delete these garbage keys: they become claimed (those
    /// still garbage and unreferenced) and the store's `gc_gen` moves on.
    GcClaim {
        store: String,
        keys: Vec<GcKey>,
    },
    /// Claimed keys are deleted from the store: forgotten; the store's `gc_gen` moves on.
    GcDeleted {
        store: String,
        keys: Vec<GcKey>,
    },
    /// Create a volume from a backup: its record (with `restore` set) and its chunk map,
    /// `(chunk, group id)` pairs for every chunk the backup holds data of.
    RestoreVolume {
        volume: VolumeRecord,
        chunks: Vec<(u64, u64)>,
    },
    /// Every chunk of the restore at a position below `next_position` in its order is
    /// filled and unlinked (never moves back). `next_chunk`: legacy (the lowest chunk not
    /// filled, in index order), kept for entries written before; no longer acted on.
    RestoreProgress {
        volume_id: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        next_chunk: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        next_position: u64,
    },
    /// Every placed chunk of the restore is linked to its backup in its group: the volume
    /// may be attached (ignored if it is no longer restoring).
    RestoreLinked {
        volume_id: u64,
    },
    /// Every chunk is filled and unlinked: the volume forgets its restore.
    RestoreDone {
        volume_id: u64,
    },
}

/// Which reclaim a job worked on: the top of its range and the volume's sequence N it was
/// planned at. A reclaim at the same `low` may have been replaced meanwhile (a snapshot
/// taken at N and deleted again restarts the live range at chunk 0, with N + 1 live): its
/// progress must not be taken from a job that merged into layer N. `seq` 0 (entries from
/// before this existed): not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimOf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The next id of each kind: the high-water marks that make ids never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIds {
    pub node: u64,
    pub group: u64,
    pub volume: u64,
    /// Backups (and copies); absent in marks written before backups.
    #[serde(default = "one")]
    pub backup: u64,
}

fn one() -> u64 {
    1
}

impl Default for NextIds {
    fn default() -> Self {
        NextIds {
            node: 1,
            group: 1,
            volume: 1,
            backup: 1,
        }
    }
}

impl NextIds {
    /// The marks once `m` is applied. Shared by [`State::apply`](super::State::apply) and
    /// the database, so memory and disk agree.
    pub fn after(self, m: &Mutation) -> NextIds {
        let mut n = self;
        match m {
            Mutation::PutNode(r) => n.node = n.node.max(r.id.saturating_add(1)),
            Mutation::AddGroups(gs) => {
                for g in gs {
                    n.group = n.group.max(g.id.saturating_add(1));
                }
            }
            Mutation::PutVolume(v)
            | Mutation::CloneVolume { volume: v, .. }
            | Mutation::RestoreVolume { volume: v, .. } => {
                n.volume = n.volume.max(v.id.saturating_add(1))
            }
            Mutation::CreateBackup(b) => n.backup = n.backup.max(b.id.saturating_add(1)),
            Mutation::DeleteVolume { .. }
            | Mutation::MapChunk { .. }
            | Mutation::MapChunks { .. }
            | Mutation::SetGroupTarget { .. }
            | Mutation::SetGroupMembers { .. }
            | Mutation::SetNodeDraining { .. }
            | Mutation::SetCrl(_)
            | Mutation::SetGroupsEstablished { .. }
            | Mutation::CutSnapshot { .. }
            | Mutation::RollbackDone { .. }
            | Mutation::SnapshotReady { .. }
            | Mutation::DeleteSnapshot { .. }
            | Mutation::CloneLinked { .. }
            | Mutation::SetFlattening { .. }
            | Mutation::ChunkUnlinked { .. }
            | Mutation::ParentCleared { .. }
            | Mutation::ReclaimProgress { .. }
            | Mutation::ReclaimDone { .. }
            | Mutation::BackupChunks { .. }
            | Mutation::BackupReady { .. }
            | Mutation::BackupFailed { .. }
            | Mutation::BackupError { .. }
            | Mutation::DeleteBackup { .. }
            | Mutation::SegmentsReleased { .. }
            | Mutation::GcClaim { .. }
            | Mutation::GcDeleted { .. }
            | Mutation::RestoreProgress { .. }
            | Mutation::RestoreLinked { .. }
            | Mutation::RestoreDone { .. } => {}
        }
        n
    }
}
