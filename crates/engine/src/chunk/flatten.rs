//! Copies inside a chunk's family, applied from the log like writes: a clone's flatten
//! (its parent's blocks into the layer it writes, see [`ChunkStore::flatten`]) and a
//! rollback (a snapshot's content into the live layer, see [`ChunkStore::rollback`]).
//! Both are idempotent and replay-safe for the reasons the `layers` module doc gives. A
//! block failing its checksum in what they copy from is carried across poisoned (see
//! `copy_runs`), never stalling the apply.

use super::layers::{PIECE, invalid, resolved_ops, runs, touched};
use super::layout::{BLOCK_SIZE, BlockKind, layer_of, poisoned_crc, stored_crc};
use super::resolve::{Need, Scope};
use super::sys::Zeroing;
use super::{ChunkStore, check_range};
use crate::Result;

impl ChunkStore {
    /// Copies into layer `layer_of(seq)` every block of `offset..offset + len` (whole
    /// blocks touched) that no layer of the chunk up to that one holds and its parent does (as of the
    /// link's sequence): data as data, zeroes as "written as zero"; blocks the parent does
    /// not hold either stay holes. Idempotent; the chunk reads the same before and after.
    /// A chunk without a parent has nothing to copy.
    pub fn flatten(&self, volume: u64, chunk: u64, offset: u64, len: u64, seq: u64) -> Result<()> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 || !self.layer_map.is_linked((volume, chunk)) {
            return Ok(());
        }
        let layer = layer_of(seq);
        let (first, n) = touched(offset, len);
        // Layers above the one written can only be later entries' (met again by a replay):
        // what they hold is not looked at, or a replay would skip what the first run copied.
        let own_only = Scope::layers(0, layer);
        let parent_only = Scope::parent_only();
        let mut at = first;
        while at < first + n {
            let count = PIECE.min(first + n - at);
            let own = self.resolve(volume, chunk, at, count, own_only, Need::Status)?;
            let mut missing: Vec<bool> = own.kind.iter().map(|k| *k == BlockKind::Hole).collect();
            if self.replaying() {
                self.torn_copies(volume, chunk, layer, at, &mut missing)?;
            }
            self.copy_runs((volume, chunk, layer), at, &missing, parent_only, false)?;
            at += count;
        }
        Ok(())
    }

    /// During replay, marks `missing` the blocks from `at` that are this flatten's own
    /// copies torn by the crash: their checksum in `layer` is on disk without their data,
    /// no lower layer holds them, and that checksum is the one of the parent's block (what
    /// the copy stored). A block torn otherwise is a later write's, applied again after
    /// this entry over what it found: left as it is.
    fn torn_copies(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        at: u64,
        missing: &mut [bool],
    ) -> Result<()> {
        let count = missing.len() as u64;
        let ok = self.layer_verify_blocks((volume, chunk, layer), at, count)?;
        if ok.iter().all(|&ok| ok) {
            return Ok(());
        }
        let others = Scope::layers(0, layer - 1);
        let below = self.resolve(volume, chunk, at, count, others, Need::Status)?;
        let stored = self.layer_checksums((volume, chunk, layer), at, count)?;
        let parent_only = Scope::parent_only();
        let bs = BLOCK_SIZE as usize;
        for (i, m) in missing.iter_mut().enumerate() {
            if ok[i] || below.kind[i] != BlockKind::Hole {
                continue;
            }
            let b = at + i as u64;
            let parent = self.resolve(volume, chunk, b, 1, parent_only, Need::Salvage)?;
            let copied = match parent.kind[0] {
                BlockKind::Hole | BlockKind::Unfilled => continue,
                BlockKind::Zero => super::layout::zero_crc(),
                BlockKind::Data if parent.bad[0] => poisoned_crc(&parent.data[..bs]),
                BlockKind::Data => crc32c::crc32c(&parent.data[..bs]),
            };
            if stored_crc(&stored, i) == copied {
                *m = true;
            }
        }
        Ok(())
    }

    /// Makes the chunk's live image its image as of snapshot sequence `to`, writing into
    /// layer `layer_of(seq)` (`seq > to >= 1`) every block a layer above `to` (up to that
    /// one) holds: its
    /// content as of `to` (through the parent if need be), or "written as zero" where the
    /// snapshot holds nothing. Layers `<= to` are untouched, so every snapshot stays
    /// intact. Idempotent.
    pub fn rollback(&self, volume: u64, chunk: u64, to: u64, seq: u64) -> Result<()> {
        let layer = layer_of(seq);
        if to == 0 || layer <= to {
            return Err(invalid(format!(
                "chunk {volume:016x}/{chunk:08x}: rollback to {to} written as of {seq}"
            )));
        }
        let above: Vec<u64> = self
            .layer_map
            .get((volume, chunk))
            .upper
            .into_iter()
            // Not above the layer written: those are later entries' (see `flatten`).
            .filter(|&l| l > to && l <= layer)
            .collect();
        let mut blocks = 0;
        for &l in &above {
            blocks = blocks.max(self.layer_blocks((volume, chunk, l))?);
        }
        let mut at = 0;
        while at < blocks {
            let count = PIECE.min(blocks - at);
            let mut held = vec![false; count as usize];
            for &l in &above {
                let crcs = self.layer_checksums((volume, chunk, l), at, count)?;
                for (i, h) in held.iter_mut().enumerate() {
                    *h |= stored_crc(&crcs, i) != 0;
                }
            }
            self.copy_runs((volume, chunk, layer), at, &held, Scope::as_of(to), true)?;
            at += count;
        }
        Ok(())
    }

    /// Writes into layer `key.2`, for every block from `at` that `marked` says, its
    /// content as resolved in `scope` (holes left alone, or written as zero with
    /// `hole_as_zero`): the step flatten, rollback and merge share. A block failing its
    /// checksum where it is resolved is copied as it is with a poisoned checksum, so that
    /// it keeps failing (a scrub repairs both copies) and the copy never stalls the apply.
    pub(super) fn copy_runs(
        &self,
        key: (u64, u64, u64),
        at: u64,
        marked: &[bool],
        scope: Scope,
        hole_as_zero: bool,
    ) -> Result<()> {
        let (volume, chunk, _) = key;
        let mut resolved = Vec::new();
        for (s, e, marked) in runs(marked) {
            if marked {
                let run_first = at + s as u64;
                // A bad source block is carried across poisoned (see `Need::Salvage`).
                let n = (e - s) as u64;
                let r = self.resolve(volume, chunk, run_first, n, scope, Need::Salvage)?;
                resolved.push((run_first, r));
            }
        }
        let mut ops = Vec::new();
        for (run_first, r) in &resolved {
            resolved_ops(*run_first, r, hole_as_zero, &mut ops);
        }
        self.place(key, &ops, Zeroing::Punch)
    }
}
