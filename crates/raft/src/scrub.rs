//! Scrub marks and repairs in a group's log (`CmdOp::ScrubMark`, `CmdOp::Repair`): the
//! node's [`Watches`], which let a replica tell, long after it applied a mark and off the
//! apply path, which blocks of the marked region still hold what they held at the mark.
//!
//! Owns: the watches (in memory only: none survive a restart, none are started while the
//! chunk store replays its log), their dirty blocks, marked by apply *before* an entry
//! changes them (a Repair's, after it rewrote them: see `repair`), their expiry ([`WATCH_TTL`], [`MAX_WATCHES_PER_GROUP`]), and applying a
//! Repair entry (a block is rewritten only where the replica watches the mark, the block is
//! unchanged since, and it differs from the wanted state).
//!
//! Must never: let a repair overwrite a block written after its mark; repair a block on a
//! replica without the mark's watch; block the poller on anything but the few block reads
//! a Repair entry needs to compare (rare: only where a scrub found a difference).
//!
//! A reader (the storage node's scrubber) reads blocks from the chunk files, then asks
//! [`Watches::dirty`]: a block not dirty after the read was read as of the mark.
//!
//! Fills outside the log (a stalled apply's, from the storage node) change blocks too: the
//! filler marks them with [`Watches::touched`] before it writes.
//!
//! This file holds the watches and apply's marking (`Watches::before_apply`, one atomic
//! load when no watch exists); `repair` applies the two entries; proposing them is
//! `group/scrub.rs`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tessera_engine::chunk::{BLOCK_SIZE, MAX_CHUNK};
use tessera_proto::command::{CmdOp, Command};

mod repair;

pub(crate) use repair::{apply_mark, apply_repair};

/// How long a watch lives after its mark was applied.
pub const WATCH_TTL: Duration = Duration::from_secs(120);
/// Most watches one group keeps (the oldest is dropped for a new one).
pub const MAX_WATCHES_PER_GROUP: usize = 16;

/// Blocks of the largest chunk: no watch covers more.
const CHUNK_BLOCKS: u64 = MAX_CHUNK / BLOCK_SIZE;

/// The region a watch covers, as its mark named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// The volume.
    pub volume: u64,
    /// The chunk.
    pub chunk: u64,
    /// The first block.
    pub first: u64,
    /// Blocks covered.
    pub count: u64,
}

/// What changed in a watched region since its mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtySince {
    /// These blocks (indexes in the chunk, sorted; empty: none).
    Blocks(Vec<u64>),
    /// The whole region (a whole-chunk operation, e.g. a merge or a link, was applied).
    All,
}

/// One group's watch of one mark.
struct Watch {
    mark: u64,
    region: Watched,
    started: Instant,
    /// One bit per block of the region.
    dirty: Vec<u64>,
    all: bool,
}

impl Watch {
    fn is_dirty(&self, block: u64) -> bool {
        if self.all {
            return true;
        }
        let Some(i) = block.checked_sub(self.region.first) else {
            return false;
        };
        i < self.region.count && self.dirty[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks the blocks `first..first + count` of the chunk that the region covers.
    fn touch(&mut self, first: u64, count: u64) {
        let lo = first.max(self.region.first);
        let hi = first
            .saturating_add(count)
            .min(self.region.first + self.region.count);
        for b in lo..hi {
            let i = b - self.region.first;
            self.dirty[(i / 64) as usize] |= 1 << (i % 64);
        }
    }
}

/// The node's watches, shared by the poller (which starts them and marks them dirty) and
/// the storage node (which reads them). `Send + Sync`; cheap when no watch exists (one
/// atomic load per applied entry).
#[derive(Default)]
pub struct Watches {
    groups: Mutex<HashMap<u64, Vec<Watch>>>,
    /// Watches held (expired ones included until they are noticed): 0 lets apply skip
    /// the lock.
    live: AtomicUsize,
    repaired: AtomicU64,
}

impl Watches {
    /// An empty set.
    pub fn new() -> Arc<Watches> {
        Arc::new(Watches::default())
    }

    /// The region `group`'s watch of `mark` covers; `None` if this replica does not watch
    /// it (never applied it, restarted since, expired or evicted, or dropped by a
    /// catch-up).
    pub fn watch(&self, group: u64, mark: u64) -> Option<Watched> {
        let mut groups = self.lock();
        let w = self.find(&mut groups, group, mark)?;
        Some(w.region)
    }

    /// What changed in the watched region since the mark; `None` as for
    /// [`Watches::watch`]. Ask after reading the blocks.
    pub fn dirty(&self, group: u64, mark: u64) -> Option<DirtySince> {
        let mut groups = self.lock();
        let w = self.find(&mut groups, group, mark)?;
        if w.all {
            return Some(DirtySince::All);
        }
        let first = w.region.first;
        let blocks = (0..w.region.count)
            .filter(|i| w.dirty[(i / 64) as usize] & (1 << (i % 64)) != 0)
            .map(|i| first + i)
            .collect();
        Some(DirtySince::Blocks(blocks))
    }

    /// Blocks Repair entries rewrote in this node's replicas since it started.
    pub fn repair_blocks_applied(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// `group` applied the mark `mark` over `watched`: a new watch (an older one of the
    /// same mark is replaced; the group's oldest goes if it holds
    /// [`MAX_WATCHES_PER_GROUP`]). A region past the largest chunk is cut at its end.
    pub(crate) fn start(&self, group: u64, mark: u64, watched: Watched) {
        let mut region = watched;
        region.first = region.first.min(CHUNK_BLOCKS);
        region.count = region.count.min(CHUNK_BLOCKS - region.first);
        let now = crate::clock::now();
        let mut groups = self.lock();
        let list = groups.entry(group).or_default();
        list.retain(|w| w.mark != mark && now.saturating_duration_since(w.started) < WATCH_TTL);
        while list.len() >= MAX_WATCHES_PER_GROUP {
            // Kept in the order started: the first is the oldest.
            list.remove(0);
        }
        list.push(Watch {
            mark,
            region,
            started: now,
            dirty: vec![0; region.count.div_ceil(64) as usize],
            all: false,
        });
        self.recount(&groups);
    }

    /// An entry of `group` is about to change blocks `first..first + count` of the chunk;
    /// or a fill outside the log (the storage node's `ChunkStore::hydrate` for a stalled
    /// apply), which must call it before it writes, or a scan after it would report the
    /// filled blocks as they were at the mark and a repair could undo the fill.
    pub fn touched(&self, group: u64, volume: u64, chunk: u64, first: u64, count: u64) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut groups = self.lock();
        for w in groups.get_mut(&group).into_iter().flatten() {
            if (w.region.volume, w.region.chunk) == (volume, chunk) {
                w.touch(first, count);
            }
        }
    }

    /// An entry of `group` is about to change the chunk as a whole (its layers or link).
    pub(crate) fn touched_chunk(&self, group: u64, volume: u64, chunk: u64) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut groups = self.lock();
        for w in groups.get_mut(&group).into_iter().flatten() {
            if (w.region.volume, w.region.chunk) == (volume, chunk) {
                w.all = true;
            }
        }
    }

    /// Called by apply before it applies `cmd` in `group`: the blocks it will change are
    /// dirty in every watch covering them (whole-chunk operations: the whole watch).
    pub(crate) fn before_apply(&self, group: u64, cmd: &Command) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let (v, c) = (cmd.volume, cmd.chunk);
        match cmd.op {
            CmdOp::Write | CmdOp::WriteZeroes | CmdOp::Discard => {
                let (offset, len) = (u64::from(cmd.offset), u64::from(cmd.len));
                let first = offset / BLOCK_SIZE;
                let end = (offset + len).div_ceil(BLOCK_SIZE);
                self.touched(group, v, c, first, end - first);
            }
            // A fill changes only blocks of its range (in layer 1, never the link).
            CmdOp::Hydrate => {
                let offset = u64::from(cmd.offset);
                let first = offset / BLOCK_SIZE;
                let end = (offset + cmd.data.len() as u64).div_ceil(BLOCK_SIZE);
                self.touched(group, v, c, first, end - first);
            }
            CmdOp::DropChunk
            | CmdOp::Link
            | CmdOp::Flatten
            | CmdOp::Unlink
            | CmdOp::Rollback
            | CmdOp::Merge
            | CmdOp::DropMerged => self.touched_chunk(group, v, c),
            // A repair marks the blocks it rewrites itself.
            CmdOp::Fence | CmdOp::ScrubMark | CmdOp::Repair => {}
        }
    }

    /// The replica of `group` was replaced wholesale (a catch-up installed) or removed:
    /// none of its watches holds.
    pub(crate) fn drop_group(&self, group: u64) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut groups = self.lock();
        groups.remove(&group);
        self.recount(&groups);
    }

    /// Which of `count` blocks from `first` are dirty in `group`'s watch of `mark` (`None`:
    /// not watched).
    pub(crate) fn dirty_of(
        &self,
        group: u64,
        mark: u64,
        first: u64,
        count: u64,
    ) -> Option<Vec<bool>> {
        let mut groups = self.lock();
        let w = self.find(&mut groups, group, mark)?;
        Some((first..first + count).map(|b| w.is_dirty(b)).collect())
    }

    /// A Repair entry rewrote `n` blocks here (each marked dirty once written).
    pub(crate) fn repaired(&self, n: u64) {
        self.repaired.fetch_add(n, Ordering::Relaxed);
        crate::metrics::REPAIR_BLOCKS.add(n);
    }

    /// The live watch of `mark` in `group`, dropping the group's expired ones.
    fn find<'a>(
        &self,
        groups: &'a mut HashMap<u64, Vec<Watch>>,
        group: u64,
        mark: u64,
    ) -> Option<&'a mut Watch> {
        let now = crate::clock::now();
        let list = groups.get_mut(&group)?;
        let before = list.len();
        list.retain(|w| now.saturating_duration_since(w.started) < WATCH_TTL);
        if list.len() != before {
            self.live.fetch_sub(before - list.len(), Ordering::AcqRel);
        }
        list.iter_mut().find(|w| w.mark == mark)
    }

    fn recount(&self, groups: &HashMap<u64, Vec<Watch>>) {
        let n = groups.values().map(Vec::len).sum();
        self.live.store(n, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<Watch>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
