//! Filling a restored chunk from its backup ([`ChunkStore::hydrate`]), applied from the log
//! like a write (`CmdOp::Hydrate`): the backup's bytes go only where nothing was ever
//! written, so a client's writes, zeroes and trims always win, in whatever order the
//! entries meet.
//!
//! Must never: overwrite or hide a block any layer of the chunk holds (data or "written as
//! zero"); write anywhere but layer 1 (every snapshot reads layer 1, and a restored
//! volume's snapshots must read the backup's bytes where the chunk had nothing).

use super::ChunkStore;
use crate::Result;

impl ChunkStore {
    /// Writes each whole block of `data` (at `offset`, both block-aligned) into layer 1
    /// where no layer of the chunk holds that block; leaves every other block as it is.
    /// Idempotent; replay-safe; durable after the next [`ChunkStore::sync`]. An all-zero
    /// block of `data` is written as zero (the backup said so).
    pub fn hydrate(&self, volume: u64, chunk: u64, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (volume, chunk, offset, data);
        todo!("hydrate: the engine branch implements it")
    }
}
