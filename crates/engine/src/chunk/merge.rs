//! Joining the layers of a deleted snapshot: [`ChunkStore::merge_layers`] writes every
//! block of a range of layers `low..=top` (that nobody reads as of a sequence in `low..top`
//! any more) into one target layer, [`ChunkStore::drop_merged`] then forgets the others
//! (hidden at once, their files deleted by the next sync: see `dropped`).
//!
//! Owns the choice of the target and the check before a drop; copies with `flatten`'s step
//! (`copy_runs`), reads through `resolve` limited to the range (never the parent, never a
//! layer outside `low..=top`). Replay-safe for the reasons the `layers` module doc gives.
//! A source block failing its checksum is copied poisoned (see `copy_runs`): the merge
//! applies, the block keeps failing in the target, and the drop is refused (the target's
//! checksum is not the source's) until a scrub has repaired both and the range is merged
//! again.

use super::layers::{MergeRange, PIECE, invalid, touched};
use super::layout::{BLOCK_SIZE, BlockKind, FileKey, poisoned_crc, stored_crc, zero_crc};
use super::resolve::{Need, Scope};
use super::{ChunkStore, check_range};
use crate::Result;

/// What a merge of one chunk does: the layers it reads and the one it writes.
struct Plan {
    low: u64,
    top: u64,
    live: bool,
    /// The layer written: `top` when live, else the lowest layer of the range.
    target: u64,
    /// The range's other layers the chunk has, newest first.
    sources: Vec<u64>,
}

impl Plan {
    /// Where the blocks copied into the target are resolved: the layers above it in the
    /// range (frozen), or below it (live).
    fn source_scope(&self) -> Scope {
        if self.live {
            Scope::layers(self.low, self.top - 1)
        } else {
            Scope::layers(self.target + 1, self.top)
        }
    }
}

impl ChunkStore {
    /// Merges the chunk's layers `range.low..=range.top` in `offset..offset + len` (whole blocks
    /// touched) into one target: every block whose newest holder in the range is not the
    /// target is written into it as that holder has it (data, or written as zero). The
    /// target is layer `top` when `live` (blocks it holds are left alone: they are the
    /// clients'), else the lowest layer of the range the chunk has. A chunk with fewer than
    /// two layers in the range, or without layer `top` when live, has nothing to merge. Reads as of any sequence `>= top` or
    /// `< low` are unchanged. Idempotent and replay-safe (see the `layers` module doc).
    /// `low` 0 is 1; `low > top` is [`crate::Error::Refused`]. A full disk is
    /// [`crate::Error::DiskFull`]; the blocks it left torn keep a drop refused until a
    /// merge of the same range rewrites them.
    pub fn merge_layers(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        range: MergeRange,
    ) -> Result<()> {
        check_range(volume, chunk, offset, len)?;
        let Some(plan) = self.merge_plan(volume, chunk, range)? else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        let (first, n) = touched(offset, len);
        let end = (first + n).min(self.sources_blocks(volume, chunk, &plan)?);
        let key = (volume, chunk, plan.target);
        let sources = plan.source_scope();
        let mut at = first;
        while at < end {
            let count = PIECE.min(end - at);
            let marked = if plan.live {
                self.live_missing(key, &plan, at, count)?
            } else {
                // Every block a layer above the target holds, rewritten whole each time:
                // the sources are frozen, so the set and the content are the same.
                let above = self.resolve(volume, chunk, at, count, sources, Need::Status)?;
                above.kind.iter().map(|k| *k != BlockKind::Hole).collect()
            };
            self.copy_runs(key, at, &marked, sources, false)?;
            at += count;
        }
        Ok(())
    }

    /// Forgets every layer of `range.low..=range.top` but the merge's target (as
    /// [`ChunkStore::merge_layers`] picks it), once every block they hold is in the target
    /// as their newest holder in the range has it (same checksum, and not torn); otherwise
    /// [`crate::Error::Refused`] and nothing changes. Reads stop seeing the dropped layers
    /// at once; their files are deleted by the next [`ChunkStore::sync`], after it made the
    /// target durable (as an unlink's link file is). Idempotent.
    pub fn drop_merged(&self, volume: u64, chunk: u64, range: MergeRange) -> Result<()> {
        let Some(plan) = self.merge_plan(volume, chunk, range)? else {
            return Ok(());
        };
        let blocks = self.sources_blocks(volume, chunk, &plan)?;
        let target = (volume, chunk, plan.target);
        let mut at = 0;
        while at < blocks {
            let count = PIECE.min(blocks - at);
            // Per block, the newest source holding it: (its checksum, that layer).
            let mut newest = vec![(0u32, 0u64); count as usize];
            for &layer in &plan.sources {
                let crcs = self.layer_checksums((volume, chunk, layer), at, count)?;
                for (i, n) in newest.iter_mut().enumerate() {
                    if n.0 == 0 {
                        *n = (stored_crc(&crcs, i), layer);
                    }
                }
            }
            let have = self.layer_checksums(target, at, count)?;
            // While replaying, a block of the target torn by the crash is a later write's
            // (the merge's own were copied again): kept, so that its replay completes it
            // from the sources (see the `layers` module doc).
            let verified = if self.replaying() {
                self.layer_verify_blocks(target, at, count)?
            } else {
                vec![true; count as usize]
            };
            for (i, &(want, layer)) in newest.iter().enumerate() {
                let b = at + i as u64;
                let got = stored_crc(&have, i);
                // Live, a block the target holds is newer than the sources': theirs.
                let same = got == want || (plan.live && got != 0);
                let why = if want == 0 {
                    continue;
                } else if !same {
                    format!("holds with checksum {got:#010x}, not {want:#010x}")
                } else if self.torn.contains(target, b) {
                    "holds torn by a full disk".to_string()
                } else if !verified[i] {
                    "holds torn by a crash".to_string()
                } else {
                    continue;
                };
                return Err(invalid(format!(
                    "chunk {volume:016x}/{chunk:08x}: layer {layer} holds block {b}, which the merge's target layer {} {why}; layers {}..={} not dropped",
                    plan.target, plan.low, plan.top
                )));
            }
            at += count;
        }
        self.hide_layers(volume, chunk, &plan.sources);
        Ok(())
    }

    /// The merge of the chunk over `range`, if it has at least two layers there, layer
    /// `top` among them when live (looked up in the layer map alone: no system call).
    fn merge_plan(&self, volume: u64, chunk: u64, range: MergeRange) -> Result<Option<Plan>> {
        let (low, top) = (range.low.max(1), range.top);
        if low > top {
            return Err(invalid(format!(
                "chunk {volume:016x}/{chunk:08x}: merge of layers {low}..={top} is not a range"
            )));
        }
        let held: Vec<u64> = self
            .layer_map
            .get((volume, chunk))
            .layers_upto(top)
            .filter(|&l| l >= low)
            .collect();
        let (target, sources, layers) = if range.live {
            // Without the live layer there is nothing to merge into: copying the whole
            // range into a new layer `top` would only add one.
            if held.first() != Some(&top) {
                return Ok(None);
            }
            (top, held[1..].to_vec(), held.len())
        } else {
            let Some((&lowest, above)) = held.split_last() else {
                return Ok(None);
            };
            (lowest, above.to_vec(), held.len())
        };
        Ok((layers >= 2).then_some(Plan {
            low,
            top,
            live: range.live,
            target,
            sources,
        }))
    }

    /// Blocks as far as the sources' files reach.
    fn sources_blocks(&self, volume: u64, chunk: u64, plan: &Plan) -> Result<u64> {
        let mut blocks = 0;
        for &layer in &plan.sources {
            blocks = blocks.max(self.layer_blocks((volume, chunk, layer))?);
        }
        Ok(blocks)
    }

    /// For a live merge, the blocks from `at` the target lacks, and those of its own
    /// copies a crash (while replaying) or a full disk (the store knows them torn) left
    /// torn: the target's block fails its checksum, or is known torn, and that checksum is
    /// the one of the newest source's block (what the copy stored). A block torn otherwise
    /// is a later write's, applied again after this entry over what it found: left as it
    /// is (see `flatten`).
    fn live_missing(&self, key: FileKey, plan: &Plan, at: u64, count: u64) -> Result<Vec<bool>> {
        let (volume, chunk, top) = key;
        let own = Scope::layers(top, top);
        let own = self.resolve(volume, chunk, at, count, own, Need::Status)?;
        let mut missing: Vec<bool> = own.kind.iter().map(|k| *k == BlockKind::Hole).collect();
        let ok = if self.replaying() {
            self.layer_verify_blocks(key, at, count)?
        } else {
            vec![true; count as usize]
        };
        let suspect = |i: usize| !ok[i] || self.torn.contains(key, at + i as u64);
        if !(0..missing.len()).any(|i| !missing[i] && suspect(i)) {
            return Ok(missing);
        }
        let stored = self.layer_checksums(key, at, count)?;
        let bs = BLOCK_SIZE as usize;
        for (i, m) in missing.iter_mut().enumerate() {
            if *m || !suspect(i) {
                continue;
            }
            let b = at + i as u64;
            let below = self.resolve(volume, chunk, b, 1, plan.source_scope(), Need::Salvage)?;
            let copied = match below.kind[0] {
                BlockKind::Hole | BlockKind::Unfilled => continue,
                BlockKind::Zero => zero_crc(),
                // Copied poisoned (see `copy_runs`).
                BlockKind::Data if below.bad[0] => poisoned_crc(&below.data[..bs]),
                BlockKind::Data => crc32c::crc32c(&below.data[..bs]),
            };
            if stored_crc(&stored, i) == copied {
                *m = true;
            }
        }
        Ok(missing)
    }
}
