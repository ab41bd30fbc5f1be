//! The log's in-memory bookkeeping: which segments still hold something needed, and the
//! latest value of every (group, slot) and compaction mark.
//!
//! Owns the recycling rule; holds no entry payloads (only, per segment, the highest entry
//! index of each group) and does no I/O. Both replay and the writer feed it the records
//! they see, in log order, through [`Book::apply`].
//!
//! A segment is obsolete when, for every group, every entry it holds is at or below that
//! group's compacted index (or the group was removed since), and no latest slot value or
//! latest compaction mark lives in it. Segments are only ever dropped oldest first: a
//! tombstone or compaction mark then never disappears while an older record it overrides
//! is still on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bytes::Bytes;

use super::record::Record;

#[derive(Debug)]
pub(super) struct SegmentMeta {
    pub path: PathBuf,
    /// File length: the limit for appends into it.
    pub len: u64,
    /// Highest entry index written here, per group.
    pub entries: HashMap<u64, u64>,
    /// How many latest slot values and latest compaction marks live here.
    pub pins: u64,
}

impl SegmentMeta {
    pub fn new(path: PathBuf, len: u64) -> SegmentMeta {
        SegmentMeta {
            path,
            len,
            entries: HashMap::new(),
            pins: 0,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct GroupState {
    /// Compacted index of the latest durable mark: what recycling goes by.
    pub compacted: u64,
    /// Highest compacted index noted (at least `compacted`): what the next mark will say.
    pub noted: u64,
    /// Segment holding the latest compaction mark, if one was written.
    pub mark_seg: Option<u64>,
    /// Latest value of each slot and the segment holding it.
    pub slots: HashMap<u8, (u64, Bytes)>,
}

#[derive(Debug, Default)]
pub(super) struct Book {
    pub segments: BTreeMap<u64, SegmentMeta>,
    pub groups: HashMap<u64, GroupState>,
}

impl Book {
    /// Accounts for `record`, found (or just written) in segment `seq`, which must already
    /// be in `segments`.
    pub fn apply(&mut self, seq: u64, record: &Record) {
        match record {
            Record::Entry { group, entry } => {
                self.groups.entry(*group).or_default();
                if let Some(seg) = self.segments.get_mut(&seq) {
                    let max = seg.entries.entry(*group).or_insert(entry.index);
                    *max = (*max).max(entry.index);
                }
            }
            Record::Slot { group, slot, value } => {
                let gs = self.groups.entry(*group).or_default();
                let old = gs.slots.insert(*slot, (seq, value.clone()));
                if let Some((old_seq, _)) = old {
                    unpin(&mut self.segments, old_seq);
                }
                pin(&mut self.segments, seq);
            }
            Record::CompactMark { group, index } => {
                let gs = self.groups.entry(*group).or_default();
                gs.compacted = gs.compacted.max(*index);
                gs.noted = gs.noted.max(gs.compacted);
                if let Some(old_seq) = gs.mark_seg.replace(seq) {
                    unpin(&mut self.segments, old_seq);
                }
                pin(&mut self.segments, seq);
            }
            Record::Tombstone { group } => {
                if let Some(gs) = self.groups.remove(group) {
                    for (old_seq, _) in gs.slots.into_values() {
                        unpin(&mut self.segments, old_seq);
                    }
                    if let Some(old_seq) = gs.mark_seg {
                        unpin(&mut self.segments, old_seq);
                    }
                }
                for seg in self.segments.values_mut() {
                    seg.entries.remove(group);
                }
            }
        }
    }

    /// Notes a higher compacted index of a known group; true if it moved (a mark is then
    /// due). Nothing is recycled by it until the mark is written ([`Book::apply`]).
    pub fn compact(&mut self, group: u64, index: u64) -> bool {
        match self.groups.get_mut(&group) {
            Some(gs) if index > gs.noted => {
                gs.noted = index;
                true
            }
            _ => false,
        }
    }

    /// Every entry in `seg` is compacted (or its group removed): by durable marks only if
    /// `durable`, else counting the noted indexes whose marks are still to be written.
    pub fn entries_obsolete(&self, seg: &SegmentMeta, durable: bool) -> bool {
        seg.entries.iter().all(|(group, max)| {
            self.groups.get(group).is_none_or(|gs| {
                let index = if durable { gs.compacted } else { gs.noted };
                *max <= index
            })
        })
    }

    /// Nothing in `seg` is needed any more, going by durable records only.
    pub fn is_obsolete(&self, seg: &SegmentMeta) -> bool {
        seg.pins == 0 && self.entries_obsolete(seg, true)
    }

    /// The latest slot values and compaction marks living in segment `seq`, as records to
    /// re-append elsewhere so that the segment can be dropped.
    pub fn pinned_in(&self, seq: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for (&group, gs) in &self.groups {
            if gs.mark_seg == Some(seq) {
                out.push(Record::CompactMark {
                    group,
                    index: gs.compacted,
                });
            }
            for (&slot, (s, value)) in &gs.slots {
                if *s == seq {
                    out.push(Record::Slot {
                        group,
                        slot,
                        value: value.clone(),
                    });
                }
            }
        }
        out
    }
}

fn pin(segments: &mut BTreeMap<u64, SegmentMeta>, seq: u64) {
    if let Some(seg) = segments.get_mut(&seq) {
        seg.pins += 1;
    }
}

fn unpin(segments: &mut BTreeMap<u64, SegmentMeta>, seq: u64) {
    if let Some(seg) = segments.get_mut(&seq) {
        seg.pins = seg.pins.saturating_sub(1);
    }
}
