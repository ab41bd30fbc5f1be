//! Placing whole blocks into one layer of a chunk: data, "written as zero" markers (a hole
//! with the checksum of a zero block) and absences (checksum 0, a hole), data first and
//! their checksums after, as the layer-1 write path does. Every write above layer 1, or
//! into a chunk with a parent, and the catch-up's raw writes, come through here.
//!
//! Runs under the layer's write lock; marks its files dirty for the next sync and queues
//! them for writeback; records blocks a full disk left torn. The only block it reads is a
//! partial block's own previous bytes in the layer (a [`Op::Patch`]), verified unless
//! replaying or torn, exactly as the layer-1 read-modify-write does (over rot, or over a
//! block below failing its checksum, the merged block gets a poisoned checksum: see
//! `write`). What lies below the
//! layer (its lower layers, its parent) is resolved by the caller beforehand, without the
//! lock: nothing writes there any more (see `layers`).
//!
//! Never syncs, but for one case: a partial block written over a block the layer holds
//! "written as zero" (or as zero data) makes its data durable before writing its
//! checksum. After a crash a checksum on disk over a hole must mean "the layer did not
//! hold this block before" (the replay then completes it from below); were the data of
//! such a write lost under its new checksum, the hole would be read that way too, and the
//! bytes the write did not cover would show what is below the zero block again. Rare (a
//! sub-block write into a block zeroed since the snapshot); one fdatasync each.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::debug;

use super::layout::{
    BLOCK_SIZE, CRC_LEN, FileKey, block_ok, is_poisoned, poisoned_crc, stored_crc, zero_crc,
};
use super::open_files::ChunkFiles;
use super::sys::{Zeroing, fdatasync, is_hole, read_full_at, write_crcs, zero_range};
use super::{ChunkStore, io_error};
use crate::{Error, Result};

/// What to place at a run of blocks.
pub(super) enum Op<'a> {
    /// Whole blocks of data (a multiple of `BLOCK_SIZE` bytes).
    Data(&'a [u8]),
    /// Whole blocks copied from a block failing its checksum (flatten, rollback, merge):
    /// their bytes as found, stored with a poisoned checksum (see `write`).
    Poisoned(&'a [u8]),
    /// One partial block: `bytes` at `at` over the layer's own block if it holds one, else
    /// over `below` (the block as the layers and parent below read; `poison`: it failed its
    /// checksum there, see `write`).
    Patch {
        below: Vec<u8>,
        poison: bool,
        at: usize,
        bytes: &'a [u8],
    },
    /// Blocks written as zero: present, reading zeroes, hiding what is below.
    Zero(u64),
    /// Blocks the layer no longer holds.
    Absent(u64),
}

impl Op<'_> {
    fn blocks(&self) -> u64 {
        match self {
            Op::Data(d) | Op::Poisoned(d) => d.len() as u64 / BLOCK_SIZE,
            Op::Patch { .. } => 1,
            Op::Zero(n) | Op::Absent(n) => *n,
        }
    }
}

impl ChunkStore {
    /// Places `ops` (each at its block, sorted, not overlapping; blocks between them keep
    /// what they hold) into the layer. `how` is what zeroed blocks' data becomes: a hole
    /// (`Punch`) or allocated zeroes (`Provision`). Creates the layer's files unless the
    /// ops only clear blocks.
    pub(super) fn place(&self, key: FileKey, ops: &[(u64, Op<'_>)], how: Zeroing) -> Result<()> {
        let (volume, chunk, layer) = key;
        let ops: Vec<&(u64, Op<'_>)> = ops.iter().filter(|(_, op)| op.blocks() > 0).collect();
        let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
            return Ok(());
        };
        let only_clears = ops.iter().all(|(_, op)| matches!(op, Op::Absent(_)));
        let create = !only_clears || how == Zeroing::Provision;
        let Some(files) = self.layer_files(volume, chunk, layer, create)? else {
            return Ok(());
        };
        let _guard = files.write_guard();
        let lo = first.0;
        let mut hi = last.0 + last.1.blocks();
        if only_clears && how == Zeroing::Punch {
            // Blocks past the end of both files are already absent.
            let data_blocks = files.data.metadata()?.len().div_ceil(BLOCK_SIZE);
            let crc_blocks = files.crcs.metadata()?.len().div_ceil(CRC_LEN);
            hi = hi.min(data_blocks.max(crc_blocks));
            if hi <= lo {
                return Ok(());
            }
        }
        let bs = BLOCK_SIZE as usize;
        let mut crcs = vec![0u8; ((hi - lo) * CRC_LEN) as usize];
        // The blocks between the ops keep their checksums.
        read_full_at(&files.crcs, &mut crcs, lo * CRC_LEN)?;
        // A partial block over one the layer holds as zero: its data must be on disk
        // before its new checksum (see the module doc).
        let order = ops.iter().any(|(at, op)| {
            matches!(op, Op::Patch { .. })
                && *at < hi
                && stored_crc(&crcs, (*at - lo) as usize) == zero_crc()
        });
        let mut set_crc = |block: u64, crc: u32| {
            if block < hi {
                let i = ((block - lo) * CRC_LEN) as usize;
                crcs[i..i + 4].copy_from_slice(&crc.to_le_bytes());
            }
        };
        let mut patched: Vec<Option<Vec<u8>>> = Vec::with_capacity(ops.len());
        for (at, op) in &ops {
            let mut merged = None;
            match op {
                Op::Data(d) => {
                    for (i, block) in d.chunks_exact(bs).enumerate() {
                        set_crc(at + i as u64, crc32c::crc32c(block));
                    }
                }
                Op::Poisoned(d) => {
                    for (i, block) in d.chunks_exact(bs).enumerate() {
                        self.poisoned(volume, chunk, layer, at + i as u64);
                        set_crc(at + i as u64, poisoned_crc(block));
                    }
                }
                Op::Patch {
                    below,
                    poison,
                    at: within,
                    bytes,
                } => {
                    let own = self.own_block(&files, key, *at)?;
                    let (mut block, poisoned) = match own {
                        Some(own) => own,
                        None => {
                            if *poison {
                                self.poisoned(volume, chunk, layer, *at);
                            }
                            (below.clone(), *poison)
                        }
                    };
                    block.resize(bs, 0);
                    let end = (*within + bytes.len()).min(bs);
                    block[*within..end].copy_from_slice(&bytes[..end - *within]);
                    let crc = if poisoned {
                        poisoned_crc(&block)
                    } else {
                        crc32c::crc32c(&block)
                    };
                    set_crc(*at, crc);
                    merged = Some(block);
                }
                Op::Zero(n) => (0..*n).for_each(|i| set_crc(at + i, zero_crc())),
                Op::Absent(n) => (0..*n).for_each(|i| set_crc(at + i, 0)),
            }
            patched.push(merged);
        }

        files.dirty.store(true, Ordering::Release);
        let written = (|| -> Result<()> {
            for ((at, op), merged) in ops.iter().zip(&patched) {
                match op {
                    Op::Data(d) | Op::Poisoned(d) => {
                        Self::write_data(&files, volume, chunk, *at, d)?
                    }
                    Op::Patch { .. } => {
                        if let Some(block) = merged {
                            Self::write_data(&files, volume, chunk, *at, block)?;
                        }
                    }
                    Op::Zero(n) | Op::Absent(n) => {
                        let n = (*n).min(hi.saturating_sub(*at));
                        if n > 0 {
                            zero_range(&files.data, at * BLOCK_SIZE, n * BLOCK_SIZE, how)
                                .map_err(|e| io_error(e, volume, chunk, "zeroing data"))?;
                        }
                    }
                }
            }
            if order {
                self.sync_data_first(&files, key)?;
            }
            write_crcs(&files.crcs, &crcs, lo * CRC_LEN)
                .map_err(|e| io_error(e, volume, chunk, "writing checksums"))
        })();
        if written.is_ok() {
            self.torn.settle(key, lo..hi, &written);
        } else {
            // Only the ops' blocks may be torn: the checksums between them were written
            // over with their own values. (A merge retried after a full disk relies on it:
            // see `merge`.)
            for (at, op) in &ops {
                let end = (at + op.blocks()).min(hi);
                self.torn.settle(key, *at..end, &written);
            }
        }
        written?;
        // As in `write_locked`: a racing sync may have cleared the flag mid-write.
        files.dirty.store(true, Ordering::Release);
        self.queue_writeback(&files);
        Ok(())
    }

    /// The layer's own bytes of `block` if it holds it, verified unless replaying or torn (a
    /// poisoned checksum always is, see `write`)
    /// (`None`: complete it from below), and whether they fail their checksum (rot: the
    /// merge over them is poisoned, see `write`).
    fn own_block(
        &self,
        files: &ChunkFiles,
        key: FileKey,
        block: u64,
    ) -> Result<Option<(Vec<u8>, bool)>> {
        let (volume, chunk, _) = key;
        let mut crc = [0u8; CRC_LEN as usize];
        read_full_at(&files.crcs, &mut crc, block * CRC_LEN)?;
        let stored = stored_crc(&crc, 0);
        if stored == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        read_full_at(&files.data, &mut buf, block * BLOCK_SIZE)?;
        if !block_ok(&buf, stored) {
            let torn = self.torn.contains(key, block);
            // Poisoned stays poisoned, also while replaying or torn (see `write`).
            if is_poisoned(&buf, stored) || (!self.replaying() && !torn) {
                self.poisoned(volume, chunk, key.2, block);
                return Ok(Some((buf, true)));
            }
            // A crash left the checksum on disk without the data (a full disk never does:
            // the data goes first). A hole under it is a block this layer did not hold
            // before the write that tore it (one it held as zero had its data synced before
            // its checksum, see the module doc): it was completed from below, not zeroes.
            // (Zeroes written there are newer data under an older checksum: as they are.)
            if !torn && buf.iter().all(|&b| b == 0) && is_hole(&files.data, block * BLOCK_SIZE)? {
                debug!(
                    volume,
                    chunk,
                    block,
                    layer = key.2,
                    "completing a torn block from below"
                );
                return Ok(None);
            }
            debug!(
                volume,
                chunk,
                block,
                layer = key.2,
                "rewriting a torn block"
            );
        }
        Ok(Some((buf, false)))
    }

    /// fdatasync of the layer's data before its checksums are written. A failure is as
    /// fatal for the store as in [`ChunkStore::sync`] (under its lock, so no sync reports
    /// durable meanwhile what this one may have lost).
    fn sync_data_first(&self, files: &ChunkFiles, key: FileKey) -> Result<()> {
        self.sync_layer(files, key, false)
    }

    /// fdatasync of the layer's data and, with `crcs`, then of its checksums: one layer
    /// made durable at once (see `sync_data_first` for a failure).
    pub(super) fn sync_layer(&self, files: &ChunkFiles, key: FileKey, crcs: bool) -> Result<()> {
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(format!(
                "an earlier chunk sync failed: {reason}"
            )));
        }
        let synced = fdatasync(&files.data)
            .and_then(|()| if crcs { fdatasync(&files.crcs) } else { Ok(()) });
        synced.map_err(|e| {
            let reason = format!(
                "fdatasync of chunk {:016x}/{:08x} layer {} in {} failed: {e}",
                key.0,
                key.1,
                key.2,
                self.dir.display()
            );
            *failure = Some(reason.clone());
            Error::Fatal(reason)
        })
    }

    /// Queues written files for the next [`ChunkStore::start_writeback`].
    pub(super) fn queue_writeback(&self, files: &Arc<ChunkFiles>) {
        if !files.unstarted.swap(true, Ordering::AcqRel) {
            self.unstarted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(files.clone());
        }
    }
}
