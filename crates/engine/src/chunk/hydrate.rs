//! Filling a restored chunk from its backup ([`ChunkStore::hydrate`]), applied from the log
//! like a write (`CmdOp::Hydrate`): the backup's bytes go only where nothing was ever
//! written, so a client's writes, zeroes and trims always win, in whatever order the
//! entries meet.
//!
//! Must never: overwrite or hide a block any layer of the chunk holds (data or "written as
//! zero"); write anywhere but layer 1 (every snapshot reads layer 1, and a restored
//! volume's snapshots must read the backup's bytes where the chunk had nothing); write
//! anything into a chunk not linked to [`super::RESTORED`].
//!
//! A restored chunk is linked to [`super::RESTORED`] (the backup's id as the link's
//! sequence) before anything writes it, and unlinked once every block the backup holds is
//! filled. While linked it is not plain: a block no layer holds is
//! [`BlockKind::Unfilled`] (a read of it is [`crate::Error::Unfilled`]); a client's
//! whole-block discard or zeroes over such a block store a "written as zero" marker
//! (checksum of a zero block, see `layers`), never checksum 0, so a trim stays a trim and
//! a later hydrate skips it; a partial write that would complete from it is
//! [`crate::Error::Unfilled`] and changes nothing (the storage node fills it first).
//!
//! A block "held" is one whose stored checksum is not 0 in some layer of the chunk (the
//! link is not looked at). A hydrate of a chunk not linked to RESTORED is a no-op: once
//! unlinked (filled), a late or repeated hydrate (a pre-warm redone after a manager
//! failover, a lazy fill proposed before the unlink) meets a chunk whose trims, in layer 1
//! of a plain chunk, store checksum 0 again, indistinguishable from "never written".
//!
//! # Replay
//!
//! Hydrate is the one layer-1 operation that skips blocks, and a later entry may tear a
//! block it filled (a partial write's checksum on disk, its data not, over the fill's
//! lost data): replayed, the fill would see the block held and skip it, and the write
//! would complete from what is under the fill. So a hydrate that filled anything makes
//! layer 1 durable (data, then checksums) before it returns: every later entry then
//! starts from the fill on disk, and a replay finds each filled block held (skipped: the
//! later entries are applied again over it, as over any durable write). Only a crash
//! during the hydrate itself leaves its own fills torn: while replaying, a block of
//! layer 1 failing its checksum whose checksum is the one this entry stores is filled
//! again. Blocks it skipped are never touched, so their replay is the other entries'.
//! The cost: two fdatasyncs per hydrate entry that fills a block (a restore proposes whole
//! regions, up to four per entry: two per 4 MiB). They run on the Raft poller's thread,
//! and under the store's `sync_failure` lock (`sync_layer`), which the flusher's
//! whole-store [`ChunkStore::sync`] holds across every dirty file's fdatasyncs: an entry
//! applied while that sync runs waits for all of it. Not avoided: the lock is what keeps a
//! failed fdatasync (whose error the kernel reports once per open file) from being
//! followed by another sync of the same file that finds it clean and reports it durable.
//!
//! # Fills outside the log
//!
//! A partial write committed over an Unfilled block stalls its group's apply for good
//! unless the block is filled outside the log (an entry behind it can never apply first):
//! the storage node then calls [`ChunkStore::hydrate`] from a thread of its own, with the
//! backup's verified bytes, while the Raft poller may retry the apply and serve reads. A
//! hydrate decides which blocks are missing and then fills them: an entry applied in
//! between (a client's write of a block it found missing, or an Unlink and a trim) would be
//! overwritten with the backup's bytes. So a hydrate holds the store's `fills` lock from
//! start to end, and the applier holds it around its entries ([`ChunkStore::try_exclude_fills`],
//! never waiting: it applies later). Reads need no lock: a layer's files are read under
//! their read lock and written (`place`) under their write lock, so a read sees a block
//! filled or not, never half. Such a fill is what a Hydrate entry of the same bytes would
//! do, on every replica alike (it fills only blocks no layer holds, whose value is the
//! backup's), and is durable when it returns (`sync_layer`), so a replay needs no entry
//! of it: every entry after the stalled one applied over the fill on disk.
//!
//! Links: a RESTORED link's Unlink is eager (the link file deleted, durably, before it
//! returns, see `link`). A hydrate after the Unlink is a no-op at the first run and at the
//! replay. One before it ran over the linked chunk, but replays over the unlinked one
//! (unless the replay starts at the Link): a no-op then, which is harmless, because each
//! hydrate's fills were made durable by its own `sync_layer` before it returned (and any
//! later entry covering a filled block is replayed too). A discard in a layer above
//! 1 of a linked restored chunk never makes a block absent that layer 1 lacks (the
//! Unfilled block below counts as held: a marker), so the set of blocks a replayed
//! hydrate finds held is the first run's. (A restoring volume takes no snapshot anyway.)

use std::sync::{MutexGuard, PoisonError, TryLockError};

use super::ChunkStore;
use super::layer_copy::check_whole;
use super::layers::{PIECE, runs};
use super::layout::{BLOCK_SIZE, BlockKind, stored_crc};
use super::place::Op;
use super::resolve::{Need, Scope};
use super::sys::Zeroing;
use crate::Result;

/// Held by the applier of the store's log entries while it applies them (see
/// [`ChunkStore::try_exclude_fills`]): no hydrate runs meanwhile.
pub struct FillsExcluded<'a> {
    _held: MutexGuard<'a, ()>,
}

impl ChunkStore {
    /// For the applier of the log (the Raft poller, which must not block): excludes every
    /// [`ChunkStore::hydrate`] until the guard is dropped, or `None` if one is running now
    /// (apply later). Entries applied under it fill with [`ChunkStore::hydrate_excluded`].
    pub fn try_exclude_fills(&self) -> Option<FillsExcluded<'_>> {
        match self.fills.try_lock() {
            Ok(g) => Some(FillsExcluded { _held: g }),
            Err(TryLockError::Poisoned(p)) => Some(FillsExcluded {
                _held: p.into_inner(),
            }),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// [`ChunkStore::hydrate`] by the applier holding `_excluded` (of this store).
    pub fn hydrate_excluded(
        &self,
        _excluded: &FillsExcluded<'_>,
        volume: u64,
        chunk: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.fill(volume, chunk, offset, data)
    }

    /// Writes each whole block of `data` (at `offset`, both block-aligned) into layer 1
    /// where no layer of the chunk holds that block (a hole or [`BlockKind::Unfilled`]);
    /// leaves every other block as it is. Does nothing (Ok) to a chunk not linked to
    /// [`super::RESTORED`]. Idempotent; replay-safe; durable after the next
    /// [`ChunkStore::sync`]. An all-zero block of `data` is written as zero (the backup
    /// said so). Ranges past the chunk limit and partial blocks are
    /// [`crate::Error::OutOfRange`].
    ///
    /// Safe from any thread, beside the applier of the store's log and its reads (see the
    /// module doc, "Fills outside the log"); waits for the applier's
    /// [`ChunkStore::try_exclude_fills`] guard, and for another hydrate of the store.
    pub fn hydrate(&self, volume: u64, chunk: u64, offset: u64, data: &[u8]) -> Result<()> {
        let _fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        self.fill(volume, chunk, offset, data)
    }

    fn fill(&self, volume: u64, chunk: u64, offset: u64, data: &[u8]) -> Result<()> {
        check_whole(volume, chunk, offset, data.len() as u64)?;
        if !self.restoring(volume, chunk) {
            // Filled and unlinked (or never restored): its trims are holes again, which a
            // fill would turn into the backup's bytes (see the module doc).
            return Ok(());
        }
        let bs = BLOCK_SIZE as usize;
        let first = offset / BLOCK_SIZE;
        let n = data.len() as u64 / BLOCK_SIZE;
        let mut at = first;
        let mut filled = false;
        while at < first + n {
            let count = PIECE.min(first + n - at);
            let from = ((at - first) * BLOCK_SIZE) as usize;
            let piece = &data[from..from + count as usize * bs];
            let every = Scope::layers(0, u64::MAX);
            let held = self.resolve(volume, chunk, at, count, every, Need::Status)?;
            let mut missing: Vec<bool> = (held.kind.iter())
                .map(|k| matches!(k, BlockKind::Hole | BlockKind::Unfilled))
                .collect();
            if self.replaying() {
                self.torn_fills(volume, chunk, at, piece, &mut missing)?;
            }
            let ops = fill_ops(at, piece, &missing);
            self.place((volume, chunk, 1), &ops, Zeroing::Punch)?;
            filled |= !ops.is_empty();
            at += count;
        }
        if filled && let Some(files) = self.layer_files(volume, chunk, 1, false)? {
            self.sync_layer(&files, (volume, chunk, 1), true)?;
        }
        Ok(())
    }

    /// While replaying, marks `missing` the blocks from `at` of layer 1 that fail their
    /// checksum and whose checksum is the one this entry stores: its own fills, torn by a
    /// crash during it (see the module doc).
    fn torn_fills(
        &self,
        volume: u64,
        chunk: u64,
        at: u64,
        piece: &[u8],
        missing: &mut [bool],
    ) -> Result<()> {
        let count = missing.len() as u64;
        let key = (volume, chunk, 1);
        let ok = self.layer_verify_blocks(key, at, count)?;
        if ok.iter().all(|&ok| ok) {
            return Ok(());
        }
        let stored = self.layer_checksums(key, at, count)?;
        let bs = BLOCK_SIZE as usize;
        for (i, m) in missing.iter_mut().enumerate() {
            if !ok[i] && stored_crc(&stored, i) == crc32c::crc32c(&piece[i * bs..(i + 1) * bs]) {
                *m = true;
            }
        }
        Ok(())
    }
}

/// The ops filling the blocks `missing` says from `at`: data as data, all-zero blocks as
/// zero.
fn fill_ops<'a>(at: u64, piece: &'a [u8], missing: &[bool]) -> Vec<(u64, Op<'a>)> {
    let bs = BLOCK_SIZE as usize;
    // 0: leave, 1: data, 2: zero.
    let what: Vec<u8> = piece
        .chunks_exact(bs)
        .zip(missing)
        .map(|(block, &m)| match (m, block.iter().all(|&x| x == 0)) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        })
        .collect();
    let mut ops = Vec::new();
    for (s, e, w) in runs(&what) {
        let block = at + s as u64;
        match w {
            1 => ops.push((block, Op::Data(&piece[s * bs..e * bs]))),
            2 => ops.push((block, Op::Zero((e - s) as u64))),
            _ => {}
        }
    }
    ops
}

#[cfg(test)]
#[path = "hydrate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "restored_tests.rs"]
mod restored_tests;
