//! Reading through layers and parents: what a chunk's blocks hold live or as of a snapshot
//! sequence, found per block in the newest layer holding it, else in its parent (as of the
//! link's sequence, recursively, at most `MAX_DEPTH` links deep), else nowhere (a hole).
//! A chunk linked to [`RESTORED`] has no parent to read: its blocks no layer holds are
//! [`BlockKind::Unfilled`] (zeroes in the data), the backup's, which only the caller can
//! fetch; a RESTORED link kept only for a replay after an Unlink (`replay_links`; none is
//! since that Unlink is eager, see `link`) would give holes. Never reads volume `RESTORED`.
//!
//! Reads checksums first and data only of the blocks a layer holds; every block taken from
//! a layer is verified against its checksum, as a plain read does (a mismatch is
//! [`Error::Corrupt`], or [`Error::Exhausted`] for a block a full disk left torn; a
//! whole-chunk copy's [`Need::Salvage`] takes a bad block as it is, flagged). Takes
//! one layer's read lock at a time, never two, and never writes. Plain chunks (layer 1
//! only, no parent) are read by [`ChunkStore::read_plain`] instead, at no extra cost.

use super::layout::{BLOCK_SIZE, CRC_LEN, Key, block_ok, is_poisoned, stored_crc, zero_crc};
use super::layout::{BlockKind, RESTORED};
use super::link::MAX_DEPTH;
use super::sys::{is_hole, read_full_at};
use super::{ChunkStore, corrupt};
use crate::{Error, Result};

/// What a resolution reads of the blocks it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Their bytes, verified.
    Data,
    /// Only what they are (checksums alone).
    Status,
    /// Their bytes, as the bytes below a partial write: as [`Need::Data`], but while
    /// replaying, a block failing its checksum is taken as it is, or passed over (looked for
    /// further down) if its data is a hole; and a chunk unlinked during the replay still
    /// reads through to its parent. Such a block is a later entry's, torn by the crash
    /// (every earlier one was applied again before): a flatten's copy into the base layer
    /// (a hole or the parent's bytes), or a frozen merge's rewrite of a lower layer (the
    /// old bytes, what the write's first run read, or the merged ones, which only matter
    /// where the write's own layer is the merge's source and then equal its first result).
    Below,
    /// Their bytes, for a whole-chunk copy (flatten, rollback, merge): as [`Need::Data`],
    /// but a block failing its checksum (not one a full disk tore: still
    /// [`Error::Exhausted`]) is taken as it is and flagged in [`Resolved::bad`], for the
    /// copy to carry it across poisoned (see `write`): a rotten block under such a copy
    /// never stalls the group's apply, and stays failing where it lands.
    Salvage,
}

impl Need {
    fn data(self) -> bool {
        self != Need::Status
    }
}

/// Where a resolution looks.
#[derive(Clone, Copy)]
pub(super) struct Scope {
    /// The highest layer looked at (`u64::MAX`: every layer; 0: none).
    pub(super) cap: u64,
    /// The lowest layer looked at (0 or 1: down to layer 1).
    pub(super) floor: u64,
    /// Whether blocks no layer holds are looked for in the parent.
    pub(super) parent: bool,
}

impl Scope {
    /// The chunk as of snapshot sequence `seq` (0: live), parent included.
    pub(super) fn as_of(seq: u64) -> Scope {
        Scope {
            cap: if seq == 0 { u64::MAX } else { seq },
            floor: 0,
            parent: true,
        }
    }

    /// Everything below layer `layer`, parent included.
    pub(super) fn below(layer: u64) -> Scope {
        Scope {
            cap: layer.saturating_sub(1),
            floor: 0,
            parent: true,
        }
    }

    /// Only the chunk's own layers `floor..=cap`, parent excluded.
    pub(super) fn layers(floor: u64, cap: u64) -> Scope {
        Scope {
            cap,
            floor,
            parent: false,
        }
    }

    /// Only the parent (as of the link's sequence), none of the chunk's layers.
    pub(super) fn parent_only() -> Scope {
        Scope {
            cap: 0,
            floor: 0,
            parent: true,
        }
    }
}

/// Blocks as a resolution found them.
pub(super) struct Resolved {
    /// `BLOCK_SIZE` bytes per block (zeroes for holes); empty for [`Need::Status`].
    pub(super) data: Vec<u8>,
    pub(super) kind: Vec<BlockKind>,
    /// Per block, whether it failed its checksum (only with [`Need::Salvage`]; its bytes
    /// are in `data` as found, its kind is [`BlockKind::Data`]).
    pub(super) bad: Vec<bool>,
}

impl ChunkStore {
    /// What blocks `first..first + n` of the chunk hold within `scope`.
    pub(super) fn resolve(
        &self,
        volume: u64,
        chunk: u64,
        first: u64,
        n: u64,
        scope: Scope,
        need: Need,
    ) -> Result<Resolved> {
        let mut out = Resolved {
            data: if need.data() {
                vec![0u8; (n * BLOCK_SIZE) as usize]
            } else {
                Vec::new()
            },
            kind: vec![BlockKind::Hole; n as usize],
            bad: vec![false; n as usize],
        };
        self.resolve_into((volume, chunk), first, scope, need, &mut out, 0)?;
        Ok(out)
    }

    /// Fills the blocks of `out`, `depth` links below the chunk first asked for.
    fn resolve_into(
        &self,
        (volume, chunk): Key,
        first: u64,
        scope: Scope,
        need: Need,
        out: &mut Resolved,
        depth: usize,
    ) -> Result<()> {
        let bs = BLOCK_SIZE as usize;
        let n = out.kind.len();
        let mut done = vec![false; n];
        let mut left = n;
        let shape = self.layer_map.get((volume, chunk));
        let mut crcs = vec![0u8; n * CRC_LEN as usize];
        for layer in shape.layers_upto(scope.cap).filter(|&l| l >= scope.floor) {
            if left == 0 {
                break;
            }
            let Some(files) = self.layer_files(volume, chunk, layer, false)? else {
                continue;
            };
            let _guard = files.read_guard();
            read_full_at(&files.crcs, &mut crcs, first * CRC_LEN)?;
            let wanted = |done: &[bool], i: usize| !done[i] && stored_crc(&crcs, i) != 0;
            let Some(lo) = (0..n).find(|&i| wanted(&done, i)) else {
                continue;
            };
            let hi = (lo..n).rfind(|&i| wanted(&done, i)).unwrap_or(lo);
            let mut span = Vec::new();
            if need.data() {
                span = vec![0u8; (hi - lo + 1) * bs];
                read_full_at(&files.data, &mut span, (first + lo as u64) * BLOCK_SIZE)?;
            }
            for i in lo..=hi {
                if !wanted(&done, i) {
                    continue;
                }
                let stored = stored_crc(&crcs, i);
                if need.data() {
                    let block = &span[(i - lo) * bs..(i - lo + 1) * bs];
                    let b = first + i as u64;
                    if !block_ok(block, stored) {
                        // A poisoned block is rot, never torn: corrupt, also while
                        // replaying (the partial write above merges over it poisoned).
                        if need == Need::Below && self.replaying() && !is_poisoned(block, stored) {
                            // Torn by a later entry (see `Need::Below`): its bytes, or
                            // what is further down if it never had any.
                            let off = b * BLOCK_SIZE;
                            if block.iter().all(|&x| x == 0) && is_hole(&files.data, off)? {
                                continue;
                            }
                            out.data[i * bs..(i + 1) * bs].copy_from_slice(block);
                            out.kind[i] = BlockKind::Data;
                            done[i] = true;
                            left -= 1;
                            continue;
                        }
                        if self.torn.contains((volume, chunk, layer), b) {
                            return Err(Error::Exhausted(format!(
                                "chunk {volume:016x}/{chunk:08x} layer {layer} block {b} is being rewritten after the disk filled"
                            )));
                        }
                        if need == Need::Salvage {
                            out.data[i * bs..(i + 1) * bs].copy_from_slice(block);
                            out.kind[i] = BlockKind::Data;
                            out.bad[i] = true;
                            done[i] = true;
                            left -= 1;
                            continue;
                        }
                        return Err(corrupt(volume, chunk, b, block, stored));
                    }
                    out.data[i * bs..(i + 1) * bs].copy_from_slice(block);
                }
                out.kind[i] = if stored == zero_crc() {
                    BlockKind::Zero
                } else {
                    BlockKind::Data
                };
                done[i] = true;
                left -= 1;
            }
        }
        if !scope.parent || left == 0 {
            return Ok(());
        }
        match shape.link {
            // The backup's blocks: never read here (see `Error::Unfilled`).
            Some((RESTORED, _)) => {
                for (kind, _) in out.kind.iter_mut().zip(&done).filter(|(_, d)| !**d) {
                    *kind = BlockKind::Unfilled;
                }
            }
            Some(link) => {
                self.resolve_parent((volume, chunk), link, first, need, &done, out, depth)?;
            }
            // A parent kept only for the replay's partial writes after an Unlink; a
            // restored one is zeroes there: every block the backup held was filled (and
            // made durable by its hydrate) before the chunk was unlinked.
            None if need == Need::Below && self.replaying() => {
                match self.replay_link((volume, chunk)) {
                    Some((RESTORED, _)) | None => {}
                    Some(link) => {
                        self.resolve_parent((volume, chunk), link, first, need, &done, out, depth)?
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Fills the blocks not `done` of `out` from the chunk's parent `link`.
    #[allow(clippy::too_many_arguments)]
    fn resolve_parent(
        &self,
        (volume, chunk): Key,
        (parent, parent_seq): (u64, u64),
        first: u64,
        need: Need,
        done: &[bool],
        out: &mut Resolved,
        depth: usize,
    ) -> Result<()> {
        let bs = BLOCK_SIZE as usize;
        let n = out.kind.len();
        if depth >= MAX_DEPTH {
            return Err(Error::Corrupt(format!(
                "chunk {volume:016x}/{chunk:08x}: more than {MAX_DEPTH} parents in a row (a cycle of links?)"
            )));
        }
        // Each run of blocks still missing, from the parent.
        let mut i = 0;
        while i < n {
            if done[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && !done[i] {
                i += 1;
            }
            let mut sub = Resolved {
                data: if need.data() {
                    vec![0u8; (i - start) * bs]
                } else {
                    Vec::new()
                },
                kind: vec![BlockKind::Hole; i - start],
                bad: vec![false; i - start],
            };
            self.resolve_into(
                (parent, chunk),
                first + start as u64,
                Scope::as_of(parent_seq),
                need,
                &mut sub,
                depth + 1,
            )?;
            out.kind[start..i].copy_from_slice(&sub.kind);
            out.bad[start..i].copy_from_slice(&sub.bad);
            if need.data() {
                out.data[start * bs..i * bs].copy_from_slice(&sub.data);
            }
        }
        Ok(())
    }
}
