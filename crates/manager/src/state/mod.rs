//! The manager's durable state and the pure logic that changes it: no I/O, no clocks.
//!
//! Every change is a [`Mutation`]. A `plan_*` method validates a request against the current
//! state and returns the mutation that carries it out, with every id and timestamp already
//! chosen; the database makes it durable; then [`State::apply`], which cannot fail, changes the
//! memory. A Raft-replicated manager puts the mutation in its log between planning and
//! applying, so `apply` must stay deterministic: it never picks ids, reads clocks or looks at
//! node health.
//!
//! Ids of nodes, groups and volumes are handed out in increasing order and never reused, even
//! after a delete: chunk data a node still holds for a deleted volume can never surface in a
//! new one.
//!
//! One idea per file: `records` (the persisted rows), `mutation` (the one kind of change),
//! `apply` (restore and apply: the only code that changes a [`State`]), then the plans and
//! queries of each entity: `nodes` (nodes and groups), `volumes`, `routes` (chunk → group),
//! `snapshots` (the cut, readiness, deletion, and the record changes of snapshots and
//! clones), `clones` (cloning, flatten steps, rollback), `reclaims` (the space of deleted
//! snapshots: what a deletion records, its progress, the work it plans), `pieces` (the
//! ops of a flatten's and a reclaim's chunk, piece by piece), `backups` (backup and copy
//! plans and queries), `restores` (a restore's plan, links, fill order, progress, source
//! and refusals), `backup_refs` (each store's reference counts, garbage,
//! claims and `gc_gen`, and the [`BackupDelta`] a backup mutation makes, which both
//! `apply` and the database write), `backup_records`, `backup_image` (the backup rows).

use std::collections::{BTreeMap, BTreeSet};

mod apply;
mod backup_image;
mod backup_records;
mod backup_refs;
mod backups;
mod clones;
mod mutation;
mod nodes;
mod pieces;
mod reclaims;
mod records;
mod restores;
mod routes;
mod snapshots;
mod volumes;

#[cfg(any(test, feature = "fuzzing"))]
mod check;

#[cfg(test)]
mod backup_fix_tests;
#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod reclaim_tests;
#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

#[allow(
    unused_imports,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
pub use backup_image::{BackupImage, StoreImage};
#[allow(
    unused_imports,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
pub use backup_records::{BackupRecord, BackupStats, BadKey, ChunkSegment, GcKey, RestoreRecord};
pub use backup_refs::BackupDelta;
#[allow(
    unused_imports,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
pub use backups::{CopyPlan, StoreCounts};
pub use clones::{ClonePlan, FlattenStep};
pub use mutation::{Mutation, NextIds, ReclaimOf};
pub use pieces::{FLATTEN_PIECE, flatten_pieces, reclaim_ops};
#[cfg(test)]
use reclaims::{ReclaimStep, range_top};
pub use records::{
    Attachment, CrlRecord, GroupRecord, NodeRecord, ParentLink, Reclaim, SnapshotRecord,
    VolumeRecord,
};
pub use snapshots::{SnapshotPlan, change_record, linking, record_change_of, rolling_back};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    rec: GroupRecord,
    /// Chunks of all volumes mapped to this group (derived).
    chunks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Volume {
    rec: VolumeRecord,
    /// chunk index → group id.
    chunks: BTreeMap<u64, u64>,
    /// `(group id, chunk index)` of every mapped chunk (derived): the groups holding the
    /// volume, each with a chunk to address it by, found without a scan of the chunks.
    by_group: BTreeSet<(u64, u64)>,
}

/// What a delete leaves for the storage nodes to clean up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedChunks {
    pub volume_id: u64,
    /// group id → chunk indexes of the deleted volume held by that group.
    pub by_group: BTreeMap<u64, Vec<u64>>,
}

/// Everything the manager persists, held in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    nodes: BTreeMap<u64, NodeRecord>,
    groups: BTreeMap<u64, Group>,
    /// node id → ids of the groups it hosts a replica of (derived; heartbeats ask it).
    groups_by_node: BTreeMap<u64, BTreeSet<u64>>,
    volumes: BTreeMap<u64, Volume>,
    by_name: BTreeMap<String, u64>,
    /// (parent volume id, snapshot name) → ids of its clones (derived from the clones'
    /// parent links).
    clones: BTreeMap<(u64, String), BTreeSet<u64>>,
    /// Backups, their chunk maps, and every store's reference counts.
    backups: backup_refs::Backups,
    next: NextIds,
    /// The revocation lists in force (`None`: none published).
    crl: Option<CrlRecord>,
}

/// The state read back from disk is inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);
