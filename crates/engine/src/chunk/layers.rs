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
//!   `layer_of(seq)`, are an [`Error::Io`] of kind `InvalidInput` (deterministic: every
//!   replica refuses the same entry, so check them before proposing); reading through more
//!   than 64 links (a cycle) is [`Error::Corrupt`].
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
//!   over a chunk still linked, or over their own durable results. Dropping a layer or a
//!   chunk is idempotent.
//!
//! Blocks of layer `L` torn by a full disk or a crash are handled as in layer 1: reads
//! report them (Exhausted or Corrupt), a partial write into them uses their bytes only
//! while replaying or when the store knows them torn. One difference: in layer 1 of a
//! chunk without a parent a hole is its true former content (zeroes), above it (or with a
//! parent) a hole may mean "not held, see below". So a replayed partial write meeting its
//! block's checksum on disk over a hole (the checksum page reached the disk, the data page
//! did not) completes the block from below, as the first write of a block after a snapshot
//! did. Had the layer held that block "written as zero" before, that state cannot arise:
//! a partial write over such a block makes its data durable before its checksum (see
//! `place`).
//!
//! # Reported kinds
//!
//! [`ChunkStore::block_status`] looks at checksums only: a block whose stored checksum is
//! that of a zero block is [`BlockKind::Zero`], whether written as zero or written with
//! all-zero data; a block of layer 1 provisioned by `write_zeroes` (checksum 0) is a
//! [`BlockKind::Hole`]. Both read as zeroes.

use std::collections::BTreeSet;
use std::io;

use bytes::Bytes;

use super::layout::{BLOCK_SIZE, CRC_LEN, FileKind, block_ok, stored_crc};
use super::place::Op;
use super::resolve::{Need, Resolved, Scope};
use super::sys::{Zeroing, read_full_at};
use super::{ChunkStore, check_range, corrupt};
use crate::{Error, Result};

/// Blocks handled at a time by the whole-chunk operations (16 MiB of data at most).
const PIECE: u64 = 4096;

/// The layer a write of snapshot sequence `seq` goes to.
pub fn layer_of(seq: u64) -> u64 {
    seq.max(1)
}

/// What one block holds, as [`ChunkStore::block_status`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// No layer of the chunk (nor of a parent it reads through to) holds it.
    Hole,
    /// Written as zeroes (or written with all-zero data).
    Zero,
    /// Holds data.
    Data,
}

/// One layer of one chunk, as the catch-up lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerKey {
    /// The volume's id.
    pub volume: u64,
    /// The chunk's index.
    pub chunk: u64,
    /// The layer (at least 1).
    pub layer: u64,
}

fn invalid(msg: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// The blocks a byte range touches: the first and how many.
fn touched(offset: u64, len: u64) -> (u64, u64) {
    let first = offset / BLOCK_SIZE;
    let last = (offset + len - 1) / BLOCK_SIZE;
    (first, last - first + 1)
}

/// Runs of equal values in `items`: `(start, end, value)`.
fn runs<T: Copy + PartialEq>(items: &[T]) -> Vec<(usize, usize, T)> {
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

/// The ops placing resolved blocks `run_first..` as they are; holes are either left
/// alone (`hole_as_zero` false) or written as zero.
fn resolved_ops<'a>(
    run_first: u64,
    r: &'a Resolved,
    hole_as_zero: bool,
    ops: &mut Vec<(u64, Op<'a>)>,
) {
    let bs = BLOCK_SIZE as usize;
    for (s, e, kind) in runs(&r.kind) {
        let at = run_first + s as u64;
        match kind {
            BlockKind::Data => ops.push((at, Op::Data(&r.data[s * bs..e * bs]))),
            BlockKind::Zero => ops.push((at, Op::Zero((e - s) as u64))),
            BlockKind::Hole if hole_as_zero => ops.push((at, Op::Zero((e - s) as u64))),
            BlockKind::Hole => {}
        }
    }
}

impl ChunkStore {
    /// Whether a write of `layer` to the chunk is a plain layer-1 write (layer 1 of a chunk
    /// without a parent): today's write path, at today's cost.
    fn plain_write(&self, volume: u64, chunk: u64, layer: u64) -> bool {
        layer == 1 && !self.layer_map.is_linked((volume, chunk))
    }

    /// One block as the layers below `layer` and the parent read it.
    fn block_below(&self, volume: u64, chunk: u64, layer: u64, block: u64) -> Result<Vec<u8>> {
        Ok(self
            .resolve(volume, chunk, block, 1, Scope::below(layer), Need::Data)?
            .data)
    }

    /// The ops writing `data` at `offset` into `layer`: whole blocks as they are, a
    /// partial block completed from the layer's own block or, if it lacks it, from below.
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
        let mut from = 0usize;
        if head_partial {
            let at = (offset - first * BLOCK_SIZE) as usize;
            let n = data.len().min(BLOCK_SIZE as usize - at);
            let below = self.block_below(volume, chunk, layer, first)?;
            ops.push((
                first,
                Op::Patch {
                    below,
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
            let below = self.block_below(volume, chunk, layer, last)?;
            ops.push((
                last,
                Op::Patch {
                    below,
                    at: 0,
                    bytes: &data[to..],
                },
            ));
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
        let mut ops = Vec::new();
        if !head.is_empty() {
            ops.extend(self.write_ops(volume, chunk, layer, offset, &head)?);
        }
        // Whole blocks: a marker where something below would show through, else a hole.
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
        if !tail.is_empty() {
            ops.extend(self.write_ops(volume, chunk, layer, whole_end * BLOCK_SIZE, &tail)?);
        }
        self.place(key, &ops, how)
    }

    /// Reads `len` bytes at `offset`, live (`as_of` 0) or as of snapshot sequence `as_of`,
    /// every block verified.
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
        Ok(Bytes::from(r.data).slice(start..start + len as usize))
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

    /// The chunk no longer reads through to a parent. Idempotent; durable after the next
    /// [`ChunkStore::sync`].
    pub fn unlink(&self, volume: u64, chunk: u64) -> Result<()> {
        self.unlink_chunk(volume, chunk)
    }

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
        let own_only = Scope {
            cap: layer,
            parent: false,
        };
        let parent_only = Scope {
            cap: 0,
            parent: true,
        };
        let mut at = first;
        while at < first + n {
            let count = PIECE.min(first + n - at);
            let own = self.resolve(volume, chunk, at, count, own_only, Need::Status)?;
            let mut missing: Vec<bool> = own.kind.iter().map(|k| *k == BlockKind::Hole).collect();
            if self.replaying() {
                self.torn_copies(volume, chunk, layer, at, &mut missing)?;
            }
            let mut copies = Vec::new();
            for (s, e, missing) in runs(&missing) {
                if missing {
                    let run_first = at + s as u64;
                    let r = self.resolve(
                        volume,
                        chunk,
                        run_first,
                        (e - s) as u64,
                        parent_only,
                        Need::Data,
                    )?;
                    copies.push((run_first, r));
                }
            }
            let mut ops = Vec::new();
            for (run_first, r) in &copies {
                resolved_ops(*run_first, r, false, &mut ops);
            }
            self.place((volume, chunk, layer), &ops, Zeroing::Punch)?;
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
        let others = Scope {
            cap: layer - 1,
            parent: false,
        };
        let below = self.resolve(volume, chunk, at, count, others, Need::Status)?;
        let stored = self.layer_checksums((volume, chunk, layer), at, count)?;
        let parent_only = Scope {
            cap: 0,
            parent: true,
        };
        let bs = BLOCK_SIZE as usize;
        for (i, m) in missing.iter_mut().enumerate() {
            if ok[i] || below.kind[i] != BlockKind::Hole {
                continue;
            }
            let b = at + i as u64;
            let parent = self.resolve(volume, chunk, b, 1, parent_only, Need::Data)?;
            let copied = match parent.kind[0] {
                BlockKind::Hole => continue,
                BlockKind::Zero => super::layout::zero_crc(),
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
            let mut snapshot = Vec::new();
            for (s, e, held) in runs(&held) {
                if held {
                    let run_first = at + s as u64;
                    let r = self.resolve(
                        volume,
                        chunk,
                        run_first,
                        (e - s) as u64,
                        Scope::as_of(to),
                        Need::Data,
                    )?;
                    snapshot.push((run_first, r));
                }
            }
            let mut ops = Vec::new();
            for (run_first, r) in &snapshot {
                resolved_ops(*run_first, r, true, &mut ops);
            }
            self.place((volume, chunk, layer), &ops, Zeroing::Punch)?;
            at += count;
        }
        Ok(())
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

    /// Allocated bytes of each layer of the chunk, as last measured (at open, at each sync,
    /// when closed for room): what each snapshot's layer holds on disk. Sorted by layer.
    pub fn layer_bytes(&self, volume: u64, chunk: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .alloc_map()
            .iter()
            .filter(|((v, c, _), _)| (*v, *c) == (volume, chunk))
            .map(|((_, _, l), b)| (*l, *b))
            .collect();
        out.sort_unstable();
        out
    }

    // The catch-up's raw access: one layer at a time, nothing read through. A layer of 0
    // names layer 1 (as `Request::seq` 0 does).

    /// Every layer of every chunk with files in this store, and every linked chunk (with
    /// its lowest layer, or layer 1 if it has none), sorted.
    pub fn list_layers(&self) -> Result<Vec<LayerKey>> {
        let files = self.listed_files()?;
        let mut with_files = BTreeSet::new();
        let mut linked = Vec::new();
        for ((volume, chunk, layer), kind) in files {
            if kind == FileKind::Link {
                if !self.is_unlinked((volume, chunk)) {
                    linked.push((volume, chunk));
                }
            } else {
                with_files.insert(LayerKey {
                    volume,
                    chunk,
                    layer,
                });
            }
        }
        for (volume, chunk) in linked {
            let has_files = with_files
                .range(
                    LayerKey {
                        volume,
                        chunk,
                        layer: 0,
                    }..,
                )
                .next()
                .is_some_and(|k| (k.volume, k.chunk) == (volume, chunk));
            if !has_files {
                with_files.insert(LayerKey {
                    volume,
                    chunk,
                    layer: 1,
                });
            }
        }
        Ok(with_files.into_iter().collect())
    }

    /// [`ChunkStore::checksums`] of one layer.
    pub fn checksums_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Bytes> {
        self.layer_checksums((volume, chunk, layer_of(layer)), first, count)
    }

    /// [`ChunkStore::verify_blocks`] of one layer.
    pub fn verify_blocks_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<bool>> {
        self.layer_verify_blocks((volume, chunk, layer_of(layer)), first, count)
    }

    /// [`ChunkStore::chunk_blocks`] of one layer.
    pub fn chunk_blocks_in(&self, volume: u64, chunk: u64, layer: u64) -> Result<u64> {
        self.layer_blocks((volume, chunk, layer_of(layer)))
    }

    /// `len` bytes at `offset` of one layer as stored, verified; blocks the layer does not
    /// hold read as zeroes (their checksums say which).
    pub fn read_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let layer = layer_of(layer);
        let Some(files) = self.layer_files(volume, chunk, layer, false)? else {
            return Ok(Bytes::from(vec![0u8; len as usize]));
        };
        let (first, n) = touched(offset, len);
        let bs = BLOCK_SIZE as usize;
        let mut buf = vec![0u8; n as usize * bs];
        let mut crcs = vec![0u8; (n * CRC_LEN) as usize];
        {
            let _guard = files.read_guard();
            read_full_at(&files.data, &mut buf, first * BLOCK_SIZE)?;
            read_full_at(&files.crcs, &mut crcs, first * CRC_LEN)?;
        }
        for (i, block) in buf.chunks_exact_mut(bs).enumerate() {
            let stored = stored_crc(&crcs, i);
            if stored == 0 {
                block.fill(0);
            } else if !block_ok(block, stored) {
                let at = first + i as u64;
                if self.torn.contains((volume, chunk, layer), at) {
                    return Err(Error::Exhausted(format!(
                        "chunk {volume:016x}/{chunk:08x} layer {layer} block {at} is being rewritten after the disk filled"
                    )));
                }
                return Err(corrupt(volume, chunk, at, block, stored));
            }
        }
        let start = (offset - first * BLOCK_SIZE) as usize;
        Ok(Bytes::from(buf).slice(start..start + len as usize))
    }

    /// Stores whole blocks into one layer as they are (a copy of a peer's layer): every
    /// block becomes present, an all-zero one as "written as zero" (a hole with the zero
    /// block's checksum). `offset` and the length must be multiples of the block size.
    pub fn write_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        check_whole(volume, chunk, offset, data.len() as u64)?;
        let bs = BLOCK_SIZE as usize;
        let zero: Vec<bool> = data
            .chunks_exact(bs)
            .map(|b| b.iter().all(|&x| x == 0))
            .collect();
        let first = offset / BLOCK_SIZE;
        let ops: Vec<(u64, Op<'_>)> = runs(&zero)
            .into_iter()
            .map(|(s, e, zero)| {
                let at = first + s as u64;
                if zero {
                    (at, Op::Zero((e - s) as u64))
                } else {
                    (at, Op::Data(&data[s * bs..e * bs]))
                }
            })
            .collect();
        self.place((volume, chunk, layer_of(layer)), &ops, Zeroing::Punch)
    }

    /// Makes whole blocks absent from one layer (checksum 0, a hole): a copy of a peer's
    /// layer that does not hold them. `offset` and `len` must be multiples of the block
    /// size. A layer without files stays without.
    pub fn clear_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        check_whole(volume, chunk, offset, len)?;
        let ops = [(offset / BLOCK_SIZE, Op::Absent(len / BLOCK_SIZE))];
        self.place((volume, chunk, layer_of(layer)), &ops, Zeroing::Punch)
    }

    /// Removes one layer's files (the deletion durable at the next sync). Idempotent.
    pub fn drop_layer(&self, volume: u64, chunk: u64, layer: u64) -> Result<()> {
        self.drop_layer_files(volume, chunk, layer_of(layer))
    }
}

fn check_whole(volume: u64, chunk: u64, offset: u64, len: u64) -> Result<()> {
    check_range(volume, chunk, offset, len)?;
    if !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::OutOfRange(format!(
            "chunk {volume:016x}/{chunk:08x}: {offset}+{len} is not whole blocks"
        )));
    }
    Ok(())
}
