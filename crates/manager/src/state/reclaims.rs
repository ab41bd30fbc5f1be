//! Reclaiming a deleted snapshot's space in the state: the [`Reclaim`] a deletion records,
//! its progress, and which reclaims the leading manager may work on now ([`ReclaimStep`])
//! (the group ops of one chunk are in `pieces`).
//!
//! A volume's retention points are its remaining snapshots. Deleting snapshot S leaves the
//! layers `low = S_prev + 1 ..` up to the next retention point `top` (the next remaining
//! snapshot at or above `low`, or the live sequence N) read by nobody strictly inside:
//! each chunk's layers there can be merged into one without changing a read as of any
//! sequence `>= top` or `< low`. A reclaim stores `low` only; its `top` is found from the
//! snapshots each time, so a snapshot taken later becomes the top of a live range.
//!
//! Must never: let two reclaims of a volume overlap (a deletion absorbs those inside its
//! range and restarts at chunk 0); plan work while a snapshot is `Creating` (its fences may
//! not be applied), a rollback runs, or a clone is still linking; move progress back but
//! in an explicit retry; take progress from a job planned for a reclaim since replaced.

use std::collections::BTreeMap;

use tessera_proto::control::{ReclaimInfo, SnapshotState};

use super::{Mutation, Reclaim, ReclaimOf, State, VolumeRecord};

/// One reclaim the leading manager may work on now, as the replicated state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimStep {
    pub volume_id: u64,
    /// The range: `low..=top`, or `low..=seq` for the live range (`top` None).
    pub low: u64,
    pub top: Option<u64>,
    /// The volume's sequence N (the live layer).
    pub seq: u64,
    pub next_chunk: u64,
    pub chunk_size: u64,
    /// group id → the volume's chunks it holds, ascending.
    pub groups: BTreeMap<u64, Vec<u64>>,
}

/// The top of the range starting at `low`: the lowest snapshot at or above it (`None`: the
/// live range).
pub fn range_top(rec: &VolumeRecord, low: u64) -> Option<u64> {
    rec.snapshots
        .iter()
        .map(|s| s.seq)
        .filter(|s| *s >= low)
        .min()
}

/// Records the reclaim of the snapshot at `seq` just removed from `rec.snapshots`.
pub(super) fn snapshot_deleted(rec: &mut VolumeRecord, seq: u64) {
    let below = rec
        .snapshots
        .iter()
        .map(|s| s.seq)
        .filter(|s| *s < seq)
        .max();
    let low = below.map_or(1, |s| s.saturating_add(1));
    let top = range_top(rec, low);
    rec.reclaims
        .retain(|r| r.low < low || top.is_some_and(|t| r.low > t));
    rec.reclaims.push(Reclaim { low, next_chunk: 0 });
    rec.reclaims.sort_by_key(|r| r.low);
}

/// [`Mutation::ReclaimProgress`] and [`Mutation::ReclaimDone`] on the record, if the
/// reclaim is still the one they were planned for.
pub(super) fn change(rec: &mut VolumeRecord, m: &Mutation) {
    match m {
        Mutation::ReclaimProgress {
            low,
            next_chunk,
            of,
            retry,
            ..
        } if is_current(rec, *low, *of) => {
            if let Some(r) = rec.reclaims.iter_mut().find(|r| r.low == *low) {
                r.next_chunk = if *retry {
                    *next_chunk
                } else {
                    r.next_chunk.max(*next_chunk)
                };
            }
        }
        Mutation::ReclaimDone { low, of, .. } if is_current(rec, *low, *of) => {
            rec.reclaims.retain(|r| r.low != *low);
        }
        _ => {}
    }
}

/// Whether the reclaim at `low` exists and is the one `of` names: same top, and for the
/// live range the same live layer (the job merged into layer `of.seq`; a volume that
/// moved on since has a new live layer the job never merged into). `of.seq` 0: entries
/// from before this check, taken as they were then.
fn is_current(rec: &VolumeRecord, low: u64, of: ReclaimOf) -> bool {
    if !rec.reclaims.iter().any(|r| r.low == low) {
        return false;
    }
    if of.seq == 0 {
        return true;
    }
    let top = range_top(rec, low);
    top == of.top && (top.is_some() || rec.seq() == of.seq)
}

/// The reclaims as reported.
pub(super) fn infos(rec: &VolumeRecord) -> Vec<ReclaimInfo> {
    rec.reclaims
        .iter()
        .map(|r| ReclaimInfo {
            low: r.low,
            next_chunk: r.next_chunk,
        })
        .collect()
}

impl State {
    /// Every reclaim that may be worked on now: of volumes with no `Creating` snapshot,
    /// no rollback under way and no links pending, whose range's top snapshot is `Ready`.
    pub fn reclaim_steps(&self) -> Vec<ReclaimStep> {
        let mut out = Vec::new();
        for v in self.volumes.values() {
            let rec = &v.rec;
            let busy = rec.rolling_back.is_some()
                || rec.linking()
                || rec
                    .snapshots
                    .iter()
                    .any(|s| s.state == SnapshotState::Creating);
            if busy || rec.reclaims.is_empty() {
                continue;
            }
            let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (g, c) in &v.by_group {
                groups.entry(*g).or_default().push(*c);
            }
            for r in &rec.reclaims {
                let top = range_top(rec, r.low);
                let ready = top.is_none_or(|t| {
                    rec.snapshots
                        .iter()
                        .any(|s| s.seq == t && s.state == SnapshotState::Ready)
                });
                if ready {
                    out.push(ReclaimStep {
                        volume_id: rec.id,
                        low: r.low,
                        top,
                        seq: rec.seq(),
                        next_chunk: r.next_chunk,
                        chunk_size: rec.chunk_size,
                        groups: groups.clone(),
                    });
                }
            }
        }
        out
    }

    /// The reclaim of `volume_id` starting at `low` as it stands: its `next_chunk`, if it
    /// is still the one `of` names (see [`ReclaimOf`]; `None`: gone, replaced, or no such
    /// volume).
    pub fn reclaim_of(&self, volume_id: u64, low: u64, of: ReclaimOf) -> Option<u64> {
        let rec = &self.volumes.get(&volume_id)?.rec;
        let r = rec.reclaims.iter().find(|r| r.low == low)?;
        is_current(rec, low, of).then_some(r.next_chunk)
    }
}
