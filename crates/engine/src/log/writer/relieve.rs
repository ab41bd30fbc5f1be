//! What the writer does while a batch waits for a full disk (or for a descriptor): write
//! what frees space into the reserve of the current segment, and recycle what it freed.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::super::Msg;
use super::super::record::{self, Record};
use super::{Done, Room, Writer, finish, slot_records};
use crate::{Error, Result};

impl Writer {
    /// While a batch waits for disk space: takes from the queue, in order, the checkpoints
    /// and removals that fit and the compaction notes, and writes them, the pending marks
    /// and the re-appends that unpin old segments into the current segment's remaining room
    /// (its reserve included: no new file is needed), then recycles what became obsolete,
    /// so that the waiting batch can roll into a recycled file. Returns whether a segment
    /// was recycled. Only a failed write or fdatasync is an error.
    ///
    /// What it takes overtakes the waiting batch (`stalled`) and the appends queued before
    /// it. That keeps "latest queued wins": the records they supersede (a value of a slot a
    /// checkpoint writes, every record of a removed group) are dropped from `stalled` and
    /// from those appends, so they never land after what overrides them. A compaction note
    /// may overtake appends too: the raft layer sends one only once what makes the
    /// compacted entries unnecessary (the applied index, an installed snapshot) is
    /// durable, so its mark never depends on a waiting batch; a checkpoint carries that
    /// applied index itself and writes it before its mark.
    pub(super) fn relieve(&mut self, stalled: &mut Vec<Record>) -> Result<bool> {
        let mut room = self.current.as_ref().map_or(0, |c| c.len - c.offset);
        room = room.saturating_sub(record::BATCH_END_LEN as u64);
        let mut taken: Vec<Record> = Vec::new();
        let mut dones: Vec<(Done, Option<Error>)> = Vec::new();
        let mut compacts: Vec<(u64, u64)> = Vec::new();
        // Slots written and groups removed by what is taken.
        let mut superseded: BTreeSet<(u64, u8)> = BTreeSet::new();
        let mut removed: BTreeSet<u64> = BTreeSet::new();
        // A group the waiting batch removes keeps its later writes behind that tombstone.
        let removed_by_stalled: BTreeSet<u64> = stalled
            .iter()
            .filter_map(|r| match r {
                Record::Tombstone { group } => Some(*group),
                _ => None,
            })
            .collect();
        {
            let mut q = self.shared.lock_queue();
            let mut blocked = false;
            let mut keep = vec![true; q.msgs.len()];
            for (i, m) in q.msgs.iter().enumerate() {
                let need = match m {
                    Msg::Compact { group, index } => {
                        compacts.push((*group, *index));
                        keep[i] = false;
                        continue;
                    }
                    // Order among these matters (a group removed, then hosted anew): stop
                    // at the first that does not fit.
                    Msg::Checkpoint { group, .. } if removed_by_stalled.contains(group) => {
                        blocked = true;
                        continue;
                    }
                    Msg::Checkpoint { slots, .. } if !blocked => {
                        slots
                            .iter()
                            .map(|(_, v)| (record::HEADER_LEN + v.len()) as u64)
                            .sum::<u64>()
                            + record::HEADER_LEN as u64
                    }
                    Msg::Remove { .. } if !blocked => record::HEADER_LEN as u64,
                    _ => continue,
                };
                if need > room {
                    blocked = true;
                    continue;
                }
                room -= need;
                keep[i] = false;
            }
            let mut msgs = std::mem::take(&mut q.msgs)
                .into_iter()
                .zip(keep)
                .collect::<Vec<_>>();
            // Appends queued before a taken message lose what it supersedes.
            let mut later_slots: BTreeSet<(u64, u8)> = BTreeSet::new();
            let mut later_removed: BTreeSet<u64> = BTreeSet::new();
            for (m, keep) in msgs.iter_mut().rev() {
                match m {
                    Msg::Checkpoint { group, slots, .. } if !*keep => {
                        later_slots.extend(slots.iter().map(|(slot, _)| (*group, *slot)));
                    }
                    Msg::Remove { group, .. } if !*keep => {
                        later_removed.insert(*group);
                    }
                    Msg::Append { writes, .. } => {
                        writes.retain(|w| !later_removed.contains(&w.group));
                        for w in writes.iter_mut() {
                            w.slots
                                .retain(|(slot, _)| !later_slots.contains(&(w.group, *slot)));
                        }
                    }
                    _ => {}
                }
            }
            for (m, keep) in msgs {
                if keep {
                    q.msgs.push(m);
                    continue;
                }
                match m {
                    Msg::Checkpoint {
                        group,
                        slots,
                        index,
                        done,
                    } => {
                        superseded.extend(slots.iter().map(|(slot, _)| (group, *slot)));
                        taken.extend(slot_records(group, slots));
                        self.book.groups.entry(group).or_default();
                        self.book.compact(group, index);
                        let index = self.book.groups.get(&group).map_or(index, |g| g.noted);
                        taken.push(Record::CompactMark { group, index });
                        dones.push((done, None));
                    }
                    Msg::Remove { group, done } => {
                        removed.insert(group);
                        taken.push(Record::Tombstone { group });
                        dones.push((done, None));
                    }
                    _ => {}
                }
            }
        }
        for (group, index) in compacts {
            if self.book.compact(group, index) {
                self.pending_marks.insert(group);
            }
        }
        let gone = |r: &Record| match r {
            Record::Slot { group, slot, .. } => {
                removed.contains(group) || superseded.contains(&(*group, *slot))
            }
            // A waiting checkpoint's mark, whose slots a taken one supersedes, is dropped
            // with them: it must not land without them (the taken one's mark covers it).
            Record::CompactMark { group, .. } => {
                removed.contains(group)
                    || superseded
                        .range((*group, 0)..=(*group, u8::MAX))
                        .next()
                        .is_some()
            }
            r => removed.contains(&r.group()),
        };
        stalled.retain(|r| !gone(r));
        // Then, as far as they fit, re-appends (none a taken record overrides) and marks
        // (none of a group removed here). Every one stands alone (a latest value, a mark):
        // any prefix of them is a whole batch.
        let mut optional: Vec<Record> = self.reappends();
        optional.retain(|r| !gone(r));
        optional.extend(self.pending_marks.iter().filter_map(|&group| {
            if removed.contains(&group) {
                return None;
            }
            let index = self.book.groups.get(&group)?.noted;
            Some(Record::CompactMark { group, index })
        }));
        let fit = optional
            .iter()
            .take_while(|r| {
                let len = r.encoded_len() as u64;
                let ok = len <= room;
                room = room.saturating_sub(len);
                ok
            })
            .count();
        optional.truncate(fit);
        let mut records = taken;
        records.extend(optional);
        if !records.is_empty() {
            if let Err(e) = self.write_batch(&records, Room::Reserve) {
                let reason = e.to_string();
                finish(dones, || Err(Error::Fatal(reason.clone())));
                return Err(e);
            }
            finish(dones, || Ok(()));
        }
        let before = self.book.segments.len();
        self.recycle();
        self.shared
            .stats
            .segments
            .store(self.book.segments.len() as u64, Ordering::Relaxed);
        Ok(self.book.segments.len() < before)
    }
}
