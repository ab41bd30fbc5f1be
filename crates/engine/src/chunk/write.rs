//! The write path of a chunk store: a write or zeroing of a byte range becomes pwrites of
//! whole blocks, data first and their checksums after, partial blocks read-modify-written.
//!
//! Runs under the chunk's write lock, held by the caller ([`ChunkStore::write`],
//! [`ChunkStore::write_zeroes`], [`ChunkStore::discard`]). Marks the chunk dirty for the
//! next sync, never syncs; records blocks a full disk left torn. A read-modify-write never
//! trusts a block failing its checksum, except a torn one or during log replay, and never
//! one bearing a poisoned checksum (`is_poisoned`: not even then): over rot it
//! merges the new bytes into the block as read but stores a *poisoned* checksum
//! (`poisoned_crc`), so the write applies (a corrupt block never stalls the Raft apply)
//! while the block keeps failing its checksum (reads answer corrupt, a scrub finds it and a
//! Repair entry brings the majority's block). Logged and counted
//! ([`ChunkStore::poisoned_blocks`]).

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use tracing::{debug, error};

use super::layout::{BLOCK_SIZE, CRC_LEN, block_ok, is_poisoned, poisoned_crc};
use super::open_files::ChunkFiles;
use super::sys::{Zeroing, read_full_at, write_crcs, zero_range};
use super::{ChunkStore, check_range, io_error};
use crate::Result;

/// Largest single pwrite of chunk data (see `write_pieces`).
const WRITE_PIECE: usize = 16 << 10;

impl ChunkStore {
    pub(super) fn zero(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        how: Zeroing,
    ) -> Result<()> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // A chunk that does not exist already reads as zeroes; only provisioning needs it.
        let Some(files) = self.files(volume, chunk, how == Zeroing::Provision)? else {
            return Ok(());
        };
        let _guard = files.write_guard();
        let end = offset + len;
        let whole_first = offset.div_ceil(BLOCK_SIZE);
        let whole_end = end / BLOCK_SIZE;
        if whole_first >= whole_end {
            let zeros = vec![0u8; len as usize];
            return self.write_locked(&files, volume, chunk, offset, &zeros);
        }
        if offset < whole_first * BLOCK_SIZE {
            let zeros = vec![0u8; (whole_first * BLOCK_SIZE - offset) as usize];
            self.write_locked(&files, volume, chunk, offset, &zeros)?;
        }
        if end > whole_end * BLOCK_SIZE {
            let zeros = vec![0u8; (end - whole_end * BLOCK_SIZE) as usize];
            self.write_locked(&files, volume, chunk, whole_end * BLOCK_SIZE, &zeros)?;
        }
        let whole_end = match how {
            Zeroing::Provision => whole_end,
            // Blocks past the end of both files are already unwritten.
            Zeroing::Punch => {
                let data_blocks = files.data.metadata()?.len().div_ceil(BLOCK_SIZE);
                let crc_blocks = files.crcs.metadata()?.len().div_ceil(CRC_LEN);
                whole_end.min(data_blocks.max(crc_blocks))
            }
        };
        if whole_first < whole_end {
            files.dirty.store(true, Ordering::Release);
            let n = whole_end - whole_first;
            // A stored 0 with an all-zero block verifies (see the module doc).
            let crc_zeros = vec![0u8; (n * CRC_LEN) as usize];
            let zeroed = write_crcs(&files.crcs, &crc_zeros, whole_first * CRC_LEN)
                .map_err(|e| io_error(e, volume, chunk, "writing checksums"))
                .and_then(|()| {
                    zero_range(&files.data, whole_first * BLOCK_SIZE, n * BLOCK_SIZE, how)
                        .map_err(|e| io_error(e, volume, chunk, "zeroing data"))
                });
            self.torn
                .settle((volume, chunk, 1), whole_first..whole_end, &zeroed);
            zeroed?;
            // See `write_locked`: a racing sync may have cleared the flag mid-write.
            files.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub(super) fn write_locked(
        &self,
        files: &ChunkFiles,
        volume: u64,
        chunk: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let end = offset + data.len() as u64;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let bs = BLOCK_SIZE as usize;
        let mut crcs = vec![0u8; ((last - first + 1) * CRC_LEN) as usize];
        let mut set_crc = |block: u64, bytes: &[u8], poisoned: bool| {
            let i = ((block - first) * CRC_LEN) as usize;
            let crc = if poisoned {
                poisoned_crc(bytes)
            } else {
                crc32c::crc32c(bytes)
            };
            crcs[i..i + 4].copy_from_slice(&crc.to_le_bytes());
        };
        // Partial blocks (only the first and the last can be) are merged into the old bytes.
        let head_partial = !offset.is_multiple_of(BLOCK_SIZE) || end < (first + 1) * BLOCK_SIZE;
        let tail_partial = last != first && !end.is_multiple_of(BLOCK_SIZE);
        let mut head = None;
        let mut tail = None;
        if head_partial {
            let (mut block, poisoned) = self.read_for_rmw(files, volume, chunk, first)?;
            let at = (offset - first * BLOCK_SIZE) as usize;
            let n = data.len().min(bs - at);
            block[at..at + n].copy_from_slice(&data[..n]);
            set_crc(first, &block, poisoned);
            head = Some(block);
        }
        if tail_partial {
            let (mut block, poisoned) = self.read_for_rmw(files, volume, chunk, last)?;
            let n = (end - last * BLOCK_SIZE) as usize;
            block[..n].copy_from_slice(&data[data.len() - n..]);
            set_crc(last, &block, poisoned);
            tail = Some(block);
        }
        let whole_first = if head_partial { first + 1 } else { first };
        let whole_end = if tail_partial || (head_partial && first == last) {
            last
        } else {
            last + 1
        };
        let whole = if whole_first < whole_end {
            let from = (whole_first * BLOCK_SIZE - offset) as usize;
            let to = (whole_end * BLOCK_SIZE - offset) as usize;
            for (i, block) in data[from..to].chunks_exact(bs).enumerate() {
                set_crc(whole_first + i as u64, block, false);
            }
            Some(&data[from..to])
        } else {
            None
        };

        files.dirty.store(true, Ordering::Release);
        let pieces = [
            head.as_deref().map(|b| (first, b)),
            whole.map(|b| (whole_first, b)),
            tail.as_deref().map(|b| (last, b)),
        ];
        let written = Self::write_pieces(files, volume, chunk, first, &pieces, &crcs);
        self.torn
            .settle((volume, chunk, 1), first..last + 1, &written);
        written?;
        // Marked again after the writes: a sync that cleared the flag while they were in
        // flight may have missed them, and must not leave the file looking clean.
        files.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The pwrites of [`ChunkStore::write_locked`]: data first, then checksums.
    fn write_pieces(
        files: &ChunkFiles,
        volume: u64,
        chunk: u64,
        first: u64,
        pieces: &[Option<(u64, &[u8])>],
        crcs: &[u8],
    ) -> Result<()> {
        for &(block, bytes) in pieces.iter().flatten() {
            Self::write_data(files, volume, chunk, block, bytes)?;
        }
        write_crcs(&files.crcs, crcs, first * CRC_LEN)
            .map_err(|e| io_error(e, volume, chunk, "writing checksums"))
    }

    /// Writes whole or partial blocks' data from `block` on (no checksums).
    pub(super) fn write_data(
        files: &ChunkFiles,
        volume: u64,
        chunk: u64,
        block: u64,
        bytes: &[u8],
    ) -> Result<()> {
        // In pieces of at most WRITE_PIECE: the page cache sizes the folios it creates
        // after the write, and a later 4 KiB overwrite inside a large folio costs ext4
        // a walk over every block of that folio (measured: with chunk files written in
        // 1 MiB pieces, 47 % of all CPU during 4 KiB random writes went there).
        for (i, piece) in bytes.chunks(WRITE_PIECE).enumerate() {
            let at = block * BLOCK_SIZE + (i * WRITE_PIECE) as u64;
            files
                .data
                .write_all_at(piece, at)
                .map_err(|e| io_error(e, volume, chunk, "writing data"))?;
        }
        Ok(())
    }

    /// The current bytes of `block` (zeroes if its checksum is 0), verified unless replaying
    /// or torn, and whether the merge over them must be poisoned (they fail their checksum: rot, not a torn block; a
    /// poisoned checksum always is, see `is_poisoned`).
    fn read_for_rmw(
        &self,
        files: &ChunkFiles,
        volume: u64,
        chunk: u64,
        block: u64,
    ) -> Result<(Vec<u8>, bool)> {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let mut crc = [0u8; CRC_LEN as usize];
        read_full_at(&files.crcs, &mut crc, block * CRC_LEN)?;
        let stored = u32::from_le_bytes(crc);
        read_full_at(&files.data, &mut buf, block * BLOCK_SIZE)?;
        if stored == 0 {
            // Data whose CRC32C is 0 is stored as it is and verifies (`block_ok`): a block
            // like any other, kept. Any other bytes under a 0 are "never written" (a write
            // whose checksum a crash or a full disk kept from the disk): zeroes, as `place`
            // and the reads through layers take them, and as every other replica merged over.
            if crc32c::crc32c(&buf) != 0 {
                buf.fill(0);
            }
            return Ok((buf, false));
        }
        if !block_ok(&buf, stored) {
            // A poisoned checksum is rot, not a torn block, even while replaying or torn: the
            // replay of the partial write that poisoned it must poison it again, or it would
            // store a valid checksum over rotten bytes (silent corruption on this replica).
            if is_poisoned(&buf, stored)
                || (!self.replaying.load(Ordering::Acquire)
                    && !self.torn.contains((volume, chunk, 1), block))
            {
                self.poisoned(volume, chunk, 1, block);
                return Ok((buf, true));
            }
            debug!(volume, chunk, block, "rewriting a torn block");
        }
        Ok((buf, false))
    }

    /// Logs and counts a partial write merged over a block failing its checksum.
    pub(super) fn poisoned(&self, volume: u64, chunk: u64, layer: u64, block: u64) {
        self.poisoned.fetch_add(1, Ordering::Relaxed);
        error!(
            volume,
            chunk,
            layer,
            block,
            "a partial write over a block failing its checksum: stored with a poisoned checksum"
        );
    }

    /// Partial writes merged over a block failing its checksum (stored with a poisoned
    /// checksum, still failing) since the store opened.
    pub fn poisoned_blocks(&self) -> u64 {
        self.poisoned.load(Ordering::Relaxed)
    }
}
