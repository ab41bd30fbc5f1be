//! Layers, parents and the catch-up's raw access: the API of snapshots and clones in the
//! chunk store.
//!
//! A chunk's blocks live in layers, one per snapshot sequence written (see
//! `tessera_proto::command`): layer `layer_of(seq) = max(seq, 1)`; the chunk's original
//! files are layer 1, layer `L > 1` a pair of files of the same format beside them (see
//! `layout`). A block is *present* in a layer when its stored checksum is not 0; present as
//! zero ("written as zero": a hole in the data file with the checksum of a zero block) hides
//! the layers and parent below it. Live reads take, per block, the newest layer holding it;
//! a read as of snapshot `s` the newest layer `<= s`; a block no layer holds reads through
//! to the chunk's parent (see [`ChunkStore::link`]) as of its sequence, or as zeroes.
//! Which chunks have layers above 1 or a parent is kept in memory (`layer_map`): a plain
//! chunk costs what it cost before layers (no extra system call on any path).
//!
//! Owns the semantics of the operations; the block placement is `place`'s, reading through
//! `resolve`'s, the link file `link`'s. Never writes a layer other than the one an
//! operation names (`layer_of(seq)`, or the catch-up's layer), and never writes a parent.
//!
//! # For the callers
//!
//! - Volume writes go through [`ChunkStore::write_seq`], [`ChunkStore::write_zeroes_seq`],
//!   [`ChunkStore::discard_seq`] (a `seq` of 0 is layer 1). `write`, `write_zeroes` and
//!   `discard` stay the raw layer-1 operations (what the catch-up of a plain store used);
//!   for a chunk without a parent they are the `_seq` ones with seq 1.
//! - [`ChunkStore::read`] is the live image (layers, then parent), as `read_as_of(.., 0)`.
//! - `checksums`, `verify_blocks`, `chunk_blocks` are layer 1's (the `_in` ones with layer
//!   1); a layer of 0 given to an `_in` operation means layer 1. `list_chunks` lists every
//!   chunk with a data file of any layer or a link.
//! - Refused input is an error, never a panic: ranges past the chunk limit and partial
//!   blocks given to `write_in`/`clear_in` are [`Error::OutOfRange`]; a link to the chunk
//!   itself or to another parent than the chunk's, and a rollback with `to` 0 or not below
//!   `layer_of(seq)`, are an [`Error::Refused`] (deterministic: every
//!   replica refuses the same entry, so check them before proposing); reading through more
//!   than 64 links (a cycle) is [`Error::Corrupt`].
//! - A restored chunk is linked to [`RESTORED`] (`link(volume, chunk, RESTORED, backup
//!   id)`, on a chunk with or without blocks; unlinked by the same `unlink` once filled).
//!   While linked it is not plain, and the backup it stands for is never read here: a
//!   block no layer holds is [`BlockKind::Unfilled`] in [`ChunkStore::block_status`];
//!   [`ChunkStore::read_as_of`] of a range with any is [`Error::Unfilled`] (the read,
//!   zeroes in their place, and their indexes); whole-block zeroes and discards over them
//!   are "written as zero" markers (a trim stays one: [`ChunkStore::hydrate`] skips held
//!   blocks); a write, zeroes or discard whose partial block would complete from one is
//!   [`Error::Unfilled`] (no data, every such block named) and changes nothing, also
//!   while replaying: the caller fills the block first ([`ChunkStore::hydrate`], which
//!   fills only chunks linked to RESTORED), never from zeroes. Like a clone's, a restored
//!   chunk is linked before anything writes it. Its Unlink is eager (the link file gone,
//!   durably, when it returns; no parent kept for a replay: see `link`).
//!   Flatten, merge and rollback treat Unfilled as a hole (they never meet a restoring
//!   chunk: the manager refuses them).
//! - A deleted snapshot's space: [`ChunkStore::merge_layers`] joins the layers `low..=top`
//!   that nobody reads as of a sequence in `low..top` any more (frozen: `top` a kept
//!   snapshot, into the lowest of them; live: `top` the layer clients write, into it), in
//!   pieces; [`ChunkStore::drop_merged`] after all of them forgets the others. A merge
//!   never changes a read as of a sequence `>= top` or `< low`, and never reads or writes
//!   the parent or a layer outside the range. A chunk with fewer than two layers in the
//!   range costs a lookup in memory. A dropped layer is invisible at once to every
//!   operation here (reads, statuses, listings, changed blocks, layer bytes, the raw
//!   access) but the `served_` ones a peer copying the store reads, which serve it while
//!   its files exist (the copy may have listed it before the drop); its files go at the next [`ChunkStore::sync`], or the first one
//!   after the last [`ChunkStore::pin_dropped`] pin is released (see `dropped`). A drop that finds a block of the range not in the target as its
//!   newest holder has it, or torn, is an [`Error::Refused`] that changes nothing.
//!
//! # Crash and replay
//!
//! After a crash the log re-applies, in order, every entry after the last sync over
//! whatever subset of the unsynced writes reached the disk. What makes every operation here
//! give the same result when applied again over such a state:
//! - Layers below the one written, and a parent's layers up to the link's sequence, are
//!   *frozen*: the group's log never holds a write of sequence `s - 1` after one of `s` for
//!   a volume, and a parent's snapshot sequence is below its volume's current one. Whatever
//!   an operation reads there (to complete a partial block, to decide between a marker and
//!   a hole, to copy for flatten or rollback) is, at replay, what it was the first time,
//!   once the earlier entries of the replay have rewritten their own torn blocks.
//! - The only state an operation reads in the layer it writes is a partial block's own
//!   previous bytes (and, for flatten, which blocks the chunk's layers hold). Those may
//!   carry a later entry's write that reached the disk; that later entry is re-applied
//!   after this one and overwrites them, so every byte ends as the last entry covering it
//!   left it, as for layer 1 before layers existed. Flatten skipping a block a later write
//!   holds is right for the same reason: the later write wins anyway. Flatten is the one
//!   operation that skips blocks, so while replaying it also copies again the blocks of
//!   its layer whose checksum reached the disk without their data, that no lower layer
//!   holds and whose checksum is the parent block's (its own copies, torn by the crash);
//!   every other operation rewrites every block it covers.
//! - Rollback rewrites exactly the blocks some layer in `to + 1..=L` holds, from layers
//!   `<= to` (frozen): the set and their content are the same each time (the blocks it
//!   writes were already in the set). Neither it nor flatten looks at layers above `L`:
//!   only later entries write there, and a replay may meet their results.
//! - Link and unlink are idempotent (the same link again is a no-op; unlink of an unlinked
//!   chunk too). The link file is durable before `link` returns, so entries after the Link
//!   always replay over a linked chunk; a clone's chunk is linked before anything writes
//!   it. Unlink deletes the file only in the next [`ChunkStore::sync`], after that sync
//!   made the chunk files durable (see `link`): entries before the Unlink replay either
//!   over a chunk still linked, or over their own durable results; a RESTORED one at
//!   once, its layers made durable first (see `link`). Dropping a layer or a chunk is
//!   idempotent (the link goes first).
//! - A partial write refused as [`Error::Unfilled`] changes nothing, and a replay refuses
//!   only what the first run refused: while a chunk is linked to [`RESTORED`] no
//!   operation makes a block absent (trims over Unfilled are markers; a hydrate fills only
//!   unheld blocks), so a block its layer held at the first run is held at the replay
//!   (durably, or again by an earlier entry of the replay). Hence the rule that a
//!   restored chunk is linked before anything writes it: a write from before the Link,
//!   replayed over the linked chunk, would be refused where it once completed from zeroes.
//! - A frozen merge reads only frozen layers (the group's seq floor is above `top`, so no
//!   entry writes any layer of its range) and rewrites whole every block some layer above
//!   its target holds: the set and the content are the same each time, whatever of the
//!   first run reached the disk. A live merge is flatten with the range's lower layers for
//!   parent: it skips what layer `top` holds (a later write wins anyway) and, while
//!   replaying, copies again its own copies torn by the crash (checksum on disk equal to
//!   the newest source block's, data not); a merge retried after a full disk does the same
//!   for the blocks the store knows torn. A drop hides the other layers at once but their
//!   files are deleted only by the next sync, after its fdatasyncs made the target
//!   durable: the entries before the drop replay over their sources (the store, opening,
//!   finds them as layers again and the replayed drop hides them again), the entries after
//!   it, once that sync is done, never need them. That deletion may stop part way (a
//!   crash, a failed unlink): it goes in ascending layer order per chunk, each deletion
//!   durable before the next, so a replay finds a live merge's target holding everything
//!   (whichever sources are left), or a frozen merge's newest sources over its target,
//!   which already holds what the deleted older ones held unless a newer source holds it
//!   too: the replayed merge rewrites exactly what the first one left there. A drop while replaying also refuses a
//!   target block failing its checksum: the merge's own were copied again, so it is a
//!   later write's, whose replay must complete it from the sources (a partial write after
//!   the drop would otherwise complete it from below the range). Then the sources stay
//!   (more layers than needed, the same reads) until the range is merged again.
//!
//! Blocks of layer `L` torn by a full disk or a crash are handled as in layer 1: reads
//! report them (Exhausted or Corrupt), a partial write into them uses their bytes only
//! while replaying or when the store knows them torn (never a block bearing a poisoned
//! checksum: rot, see `write`). One difference: in layer 1 of a chunk without a parent a
//! hole is its true former content (zeroes), above it (or with a parent) a hole may mean
//! "not held, see below". So a replayed partial write meeting its block's checksum on disk
//! over a hole (the checksum page reached the disk, the data page did not) completes the
//! block from below, as the first write of a block after a snapshot did. Had the layer
//! held that block "written as zero" before, that state cannot arise: a partial write over
//! such a block makes its data durable before its checksum (see `place`).
//!
//! # Reported kinds
//!
//! [`ChunkStore::block_status`] looks at checksums only: a block whose stored checksum is
//! that of a zero block is [`BlockKind::Zero`], whether written as zero or written with
//! all-zero data; a block of layer 1 provisioned by `write_zeroes` (checksum 0) is a
//! [`BlockKind::Hole`]. Both read as zeroes.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::layout::{BLOCK_SIZE, stored_crc};
pub use super::layout::{BlockKind, LayerKey, RESTORED, layer_of};
use super::place::Op;
use super::resolve::{Need, Resolved, Scope};
use super::sys::Zeroing;
use super::{ChunkStore, check_range};
use crate::{Error, Result};

/// The layers a merge joins (see [`ChunkStore::merge_layers`]): `low..=top`, into `top`
/// when `live`, else into the lowest of them the chunk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeRange {
    /// The lowest layer merged (0 is 1).
    pub low: u64,
    /// The highest layer merged.
    pub top: u64,
    /// The range is the volume's live one: `top` is the layer clients write.
    pub live: bool,
}

/// Blocks handled at a time by the whole-chunk operations (16 MiB of data at most).
pub(super) const PIECE: u64 = 4096;

pub(super) fn invalid(msg: String) -> Error {
    Error::Refused(msg)
}

/// [`Error::Unfilled`] of `blocks` (ascending), with `data` (a read's, else empty).
fn unfilled_error(data: Bytes, blocks: Vec<u32>) -> Error {
    Error::Unfilled(Box::new(crate::Unfilled { data, blocks }))
}

/// The blocks a byte range touches: the first and how many.
pub(super) fn touched(offset: u64, len: u64) -> (u64, u64) {
    let first = offset / BLOCK_SIZE;
    let last = (offset + len - 1) / BLOCK_SIZE;
    (first, last - first + 1)
}

/// Runs of equal values in `items`: `(start, end, value)`.
pub(super) fn runs<T: Copy + PartialEq>(items: &[T]) -> Vec<(usize, usize, T)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let start = i;
        while i < items.len() && items[i] == items[start] {
            i += 1;
        }
        out.push((start, i, items[start]));
    }
    out
}

/// The ops placing resolved blocks `run_first..` as they are (bad ones poisoned); holes
/// are either left alone (`hole_as_zero` false) or written as zero.
pub(super) fn resolved_ops<'a>(
    run_first: u64,
    r: &'a Resolved,
    hole_as_zero: bool,
    ops: &mut Vec<(u64, Op<'a>)>,
) {
    let bs = BLOCK_SIZE as usize;
    let tagged: Vec<_> = r.kind.iter().copied().zip(r.bad.iter().copied()).collect();
    for (s, e, (kind, bad)) in runs(&tagged) {
        let at = run_first + s as u64;
        match kind {
            BlockKind::Data if bad => ops.push((at, Op::Poisoned(&r.data[s * bs..e * bs]))),
            BlockKind::Data => ops.push((at, Op::Data(&r.data[s * bs..e * bs]))),
            BlockKind::Zero => ops.push((at, Op::Zero((e - s) as u64))),
            // Unfilled as a hole: flatten, merge and rollback never meet a restoring chunk
            // (the manager refuses them), and the backup's bytes are not the engine's.
            BlockKind::Hole | BlockKind::Unfilled if hole_as_zero => {
                ops.push((at, Op::Zero((e - s) as u64)))
            }
            BlockKind::Hole | BlockKind::Unfilled => {}
        }
    }
}

impl ChunkStore {
    /// Whether a write of `layer` to the chunk is a plain layer-1 write (layer 1 of a chunk
    /// without a parent): today's write path, at today's cost.
    /// While replaying, a chunk unlinked during the replay is not plain: its partial writes
    /// complete from the parent (see `link`).
    fn plain_write(&self, volume: u64, chunk: u64, layer: u64) -> bool {
        layer == 1
            && !self.layer_map.is_linked((volume, chunk))
            && (!self.replaying() || self.replay_link((volume, chunk)).is_none())
    }

    /// One block as the layers below `layer` and the parent read it, for a partial write
    /// into `layer`. A restored block not filled yet that `layer` does not hold either
    /// (the write would complete it from the backup's bytes) goes to `unfilled` instead.
    ///
    /// A block below failing its checksum is zeroes to merge over, the merge poisoned
    /// (`true`, see `write`): the write applies, the block keeps failing. Any other
    /// corruption (a cycle of links) is an error, as for a read.
    fn block_below(
        &self,
        (volume, chunk, layer): (u64, u64, u64),
        block: u64,
        unfilled: &mut Vec<u32>,
    ) -> Result<(Vec<u8>, bool)> {
        let below = match self.resolve(volume, chunk, block, 1, Scope::below(layer), Need::Below) {
            Ok(below) => below,
            // Only a block failing its checksum (this replica's rot) is merged over poisoned,
            // not a cycle of links (on every replica: unrepairable if poisoned). Told apart by
            // the checksums alone resolving. (Counted by `place` unless the layer holds it.)
            Err(Error::Corrupt(_)) => {
                let scope = Scope::below(layer);
                self.resolve(volume, chunk, block, 1, scope, Need::Status)?;
                return Ok((vec![0u8; BLOCK_SIZE as usize], true));
            }
            Err(e) => return Err(e),
        };
        if below.kind[0] == BlockKind::Unfilled {
            let own = Scope::layers(layer, layer);
            let own = self.resolve(volume, chunk, block, 1, own, Need::Status)?;
            if own.kind[0] == BlockKind::Hole {
                unfilled.push(block as u32);
            }
        }
        Ok((below.data, false))
    }

    /// The ops writing `data` at `offset` into `layer`: whole blocks as they are, a
    /// partial block completed from the layer's own block or, if it lacks it, from below.
    /// A partial block that would complete from a restored block not filled yet is
    /// [`Error::Unfilled`] (no data): the caller places nothing.
    fn write_ops<'a>(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        data: &'a [u8],
    ) -> Result<Vec<(u64, Op<'a>)>> {
        let end = offset + data.len() as u64;
        let (first, n) = touched(offset, data.len() as u64);
        let last = first + n - 1;
        let head_partial = !offset.is_multiple_of(BLOCK_SIZE) || end < (first + 1) * BLOCK_SIZE;
        let tail_partial = last != first && !end.is_multiple_of(BLOCK_SIZE);
        let mut ops = Vec::with_capacity(3);
        let mut unfilled = Vec::new();
        let mut from = 0usize;
        if head_partial {
            let at = (offset - first * BLOCK_SIZE) as usize;
            let n = data.len().min(BLOCK_SIZE as usize - at);
            let (below, poison) = self.block_below((volume, chunk, layer), first, &mut unfilled)?;
            ops.push((
                first,
                Op::Patch {
                    below,
                    poison,
                    at,
                    bytes: &data[..n],
                },
            ));
            from = n;
        }
        let tail_n = if tail_partial {
            (end - last * BLOCK_SIZE) as usize
        } else {
            0
        };
        let to = data.len() - tail_n;
        if from < to {
            ops.push((offset.div_ceil(BLOCK_SIZE), Op::Data(&data[from..to])));
        }
        if tail_partial {
            let (below, poison) = self.block_below((volume, chunk, layer), last, &mut unfilled)?;
            ops.push((
                last,
                Op::Patch {
                    below,
                    poison,
                    at: 0,
                    bytes: &data[to..],
                },
            ));
        }
        if !unfilled.is_empty() {
            return Err(unfilled_error(Bytes::new(), unfilled));
        }
        Ok(ops)
    }

    /// Stores `data` at `offset` of the chunk in layer `layer_of(seq)` (a partial block is
    /// completed from the chunk's content as of that layer: the layer's own block, else the
    /// newest lower layer holding it, else the parent, else zeroes).
    pub fn write_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        data: &[u8],
        seq: u64,
    ) -> Result<()> {
        let layer = layer_of(seq);
        if self.plain_write(volume, chunk, layer) {
            return self.write(volume, chunk, offset, data);
        }
        check_range(volume, chunk, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let ops = self.write_ops(volume, chunk, layer, offset, data)?;
        self.place((volume, chunk, layer), &ops, Zeroing::Punch)
    }

    /// Makes `len` bytes at `offset` read as zeroes, kept allocated, in layer `layer_of(seq)`
    /// (whole blocks that a lower layer or the parent holds become "written as zero").
    pub fn write_zeroes_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        seq: u64,
    ) -> Result<()> {
        let layer = layer_of(seq);
        if self.plain_write(volume, chunk, layer) {
            return self.write_zeroes(volume, chunk, offset, len);
        }
        self.zero_seq(volume, chunk, offset, len, layer, Zeroing::Provision)
    }

    /// Makes `len` bytes at `offset` read as zeroes and frees their space where it can, in
    /// layer `layer_of(seq)`: blocks that a lower layer or a parent holds become "written as
    /// zero" (so they never show the older data again), the others holes.
    pub fn discard_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        seq: u64,
    ) -> Result<()> {
        let layer = layer_of(seq);
        if self.plain_write(volume, chunk, layer) {
            return self.discard(volume, chunk, offset, len);
        }
        self.zero_seq(volume, chunk, offset, len, layer, Zeroing::Punch)
    }

    fn zero_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        layer: u64,
        how: Zeroing,
    ) -> Result<()> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let whole_first = offset.div_ceil(BLOCK_SIZE);
        let whole_end = end / BLOCK_SIZE;
        let key = (volume, chunk, layer);
        if whole_first >= whole_end {
            let zeros = vec![0u8; len as usize];
            let ops = self.write_ops(volume, chunk, layer, offset, &zeros)?;
            return self.place(key, &ops, how);
        }
        let head = vec![0u8; (whole_first * BLOCK_SIZE - offset) as usize];
        let tail = vec![0u8; (end - whole_end * BLOCK_SIZE) as usize];
        let head_ops = match head.is_empty() {
            true => Ok(Vec::new()),
            false => self.write_ops(volume, chunk, layer, offset, &head),
        };
        let tail_ops = match tail.is_empty() {
            true => Ok(Vec::new()),
            false => self.write_ops(volume, chunk, layer, whole_end * BLOCK_SIZE, &tail),
        };
        // Both partial blocks checked before failing: one answer names every block to fill.
        let (mut ops, tail_ops) = match (head_ops, tail_ops) {
            (Err(Error::Unfilled(h)), Err(Error::Unfilled(t))) => {
                return Err(unfilled_error(Bytes::new(), [h.blocks, t.blocks].concat()));
            }
            (head, tail) => (head?, tail?),
        };
        // Whole blocks: a marker where something below would show through (a restored
        // block not filled yet too: a later hydrate must skip it), else a hole.
        let n = whole_end - whole_first;
        let below = self.resolve(
            volume,
            chunk,
            whole_first,
            n,
            Scope::below(layer),
            Need::Status,
        )?;
        let held: Vec<bool> = below.kind.iter().map(|k| *k != BlockKind::Hole).collect();
        for (s, e, held) in runs(&held) {
            let at = whole_first + s as u64;
            let count = (e - s) as u64;
            ops.push((
                at,
                if held {
                    Op::Zero(count)
                } else {
                    Op::Absent(count)
                },
            ));
        }
        ops.extend(tail_ops);
        self.place(key, &ops, how)
    }

    /// Reads `len` bytes at `offset`, live (`as_of` 0) or as of snapshot sequence `as_of`,
    /// every block verified. A range with blocks of a restored chunk not filled yet is
    /// [`Error::Unfilled`]: the read with zeroes in their place, and which they are.
    pub fn read_as_of(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        as_of: u64,
    ) -> Result<Bytes> {
        if self.layer_map.is_plain((volume, chunk)) {
            // Layer 1 is in every snapshot, and there is nothing else.
            return self.read_plain(volume, chunk, offset, len);
        }
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let (first, n) = touched(offset, len);
        let r = self.resolve(volume, chunk, first, n, Scope::as_of(as_of), Need::Data)?;
        let start = (offset - first * BLOCK_SIZE) as usize;
        let data = Bytes::from(r.data).slice(start..start + len as usize);
        let unfilled: Vec<u32> = (r.kind.iter().enumerate())
            .filter(|(_, k)| **k == BlockKind::Unfilled)
            .map(|(i, _)| (first + i as u64) as u32)
            .collect();
        if !unfilled.is_empty() {
            return Err(unfilled_error(data, unfilled));
        }
        Ok(data)
    }

    /// What each block of `offset..offset + len` (whole blocks) holds, live or as of
    /// `as_of` (see the module doc for how zeroes are reported).
    pub fn block_status(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        as_of: u64,
    ) -> Result<Vec<BlockKind>> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let (first, n) = touched(offset, len);
        Ok(self
            .resolve(volume, chunk, first, n, Scope::as_of(as_of), Need::Status)?
            .kind)
    }

    /// The chunk (of a clone) reads through to chunk `chunk` of `parent` as of its snapshot
    /// sequence `parent_seq` (0: the parent's live image). Idempotent; a different parent
    /// for a linked chunk is an error. Durable when it returns.
    pub fn link(&self, volume: u64, chunk: u64, parent: u64, parent_seq: u64) -> Result<()> {
        self.link_chunk(volume, chunk, parent, parent_seq)
    }

    /// The parent the chunk reads through to, if any: `(parent volume, parent_seq)`.
    pub fn link_of(&self, volume: u64, chunk: u64) -> Result<Option<(u64, u64)>> {
        Ok(self.layer_map.get((volume, chunk)).link)
    }

    /// Whether the chunk is restored from a backup and not filled yet: linked to
    /// [`RESTORED`] (in memory, no system call).
    pub fn restoring(&self, volume: u64, chunk: u64) -> bool {
        matches!(
            self.layer_map.get((volume, chunk)).link,
            Some((RESTORED, _))
        )
    }

    /// The chunk no longer reads through to a parent. Idempotent; durable after the next
    /// [`ChunkStore::sync`].
    pub fn unlink(&self, volume: u64, chunk: u64) -> Result<()> {
        self.unlink_chunk(volume, chunk)
    }

    /// Indexes of the blocks written (data, zeroes or discards) by sequences in
    /// `after + 1..=upto` (`upto` 0: up to the live layer): what changed between snapshot
    /// `after` and snapshot `upto` (`after` 0: since the beginning), found from the layers'
    /// checksums alone. Sorted, each once. A parent's blocks are not the chunk's changes.
    pub fn changed_blocks(
        &self,
        volume: u64,
        chunk: u64,
        after: u64,
        upto: u64,
    ) -> Result<Vec<u64>> {
        let shape = self.layer_map.get((volume, chunk));
        let cap = Scope::as_of(upto).cap;
        let mut out = BTreeSet::new();
        for layer in shape.layers_upto(cap).filter(|&l| l > after) {
            let key = (volume, chunk, layer);
            let blocks = self.layer_blocks(key)?;
            let mut at = 0;
            while at < blocks {
                let count = PIECE.min(blocks - at);
                let crcs = self.layer_checksums(key, at, count)?;
                out.extend(
                    (0..count)
                        .filter(|&i| stored_crc(&crcs, i as usize) != 0)
                        .map(|i| at + i),
                );
                at += count;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Allocated bytes of every layer of every chunk of `volume` in this store, as last
    /// measured (see [`ChunkStore::layer_bytes`]), sorted by chunk then layer: `(chunk,
    /// layer, bytes)`. Layers a merge dropped are not counted.
    pub fn volume_layer_bytes(&self, volume: u64) -> Vec<(u64, u64, u64)> {
        let dropped = self.dropped_keys();
        let mut out: Vec<(u64, u64, u64)> = self
            .alloc_map()
            .iter()
            .filter(|(k, _)| k.0 == volume && !dropped.contains(*k))
            .map(|((_, c, l), b)| (*c, *l, *b))
            .collect();
        out.sort_unstable();
        out
    }

    /// Allocated bytes of each layer of the chunk, as last measured (at open, at each sync,
    /// when closed for room): what each snapshot's layer holds on disk. Sorted by layer.
    /// Layers a merge dropped are not counted.
    pub fn layer_bytes(&self, volume: u64, chunk: u64) -> Vec<(u64, u64)> {
        let dropped = self.dropped_keys();
        let mut out: Vec<(u64, u64)> = self
            .alloc_map()
            .iter()
            .filter(|(k, _)| (k.0, k.1) == (volume, chunk) && !dropped.contains(*k))
            .map(|((_, _, l), b)| (*l, *b))
            .collect();
        out.sort_unstable();
        out
    }
}
