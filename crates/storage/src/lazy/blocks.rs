//! Block and region arithmetic of the lazy fill, pure: which blocks of a write are partial,
//! which regions a read's unfilled blocks lie in, copying a region's bytes into a read, and
//! padding a short region to a whole one for its hydrate.

use bytes::Bytes;

use tessera_proto::control::{REGION_BLOCKS, REGION_BYTES};

/// Bytes of a block.
pub(crate) const BLOCK: u64 = tessera_engine::chunk::BLOCK_SIZE;

/// The blocks a write, zeroing or discard of `len` bytes at `offset` covers only in part
/// (its head block, its tail block, or one block both): those whose other bytes it must
/// keep. Ascending, each once; none for whole blocks or an empty range.
pub(crate) fn partial_blocks(offset: u32, len: u32) -> Vec<u32> {
    if len == 0 {
        return Vec::new();
    }
    let (start, end) = (u64::from(offset), u64::from(offset) + u64::from(len));
    let mut out = Vec::with_capacity(2);
    if !start.is_multiple_of(BLOCK) {
        out.push(start / BLOCK);
    }
    if !end.is_multiple_of(BLOCK) && out.last() != Some(&((end - 1) / BLOCK)) {
        out.push((end - 1) / BLOCK);
    }
    // A chunk is at most 4 GiB: its block indexes fit a u32.
    out.into_iter().map(|b| b as u32).collect()
}

/// The region block `b` of a chunk lies in.
pub(crate) fn region_of(b: u32) -> u32 {
    (u64::from(b) / REGION_BLOCKS) as u32
}

/// The regions `blocks` (ascending) lie in, ascending, each once.
pub(crate) fn regions_of(blocks: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = blocks.iter().map(|&b| region_of(b)).collect();
    out.dedup();
    out
}

/// Copies into `read` (the bytes at `offset` of the chunk) the part of block `b` it
/// covers, from `region` (the bytes of region `region_of(b)`, as decoded: possibly short,
/// the last region of a chunk). Bytes past the region's end are left as they are (zeroes,
/// as the read answered them). A block outside the read changes nothing.
pub(crate) fn overlay(read: &mut [u8], offset: u64, b: u32, region: &[u8]) {
    let block_start = u64::from(b) * BLOCK;
    let start = block_start.max(offset);
    let end = (block_start + BLOCK).min(offset + read.len() as u64);
    if start >= end {
        return;
    }
    let base = u64::from(region_of(b)) * REGION_BYTES;
    let (from, to) = (start - base, end - base);
    let avail = (region.len() as u64).min(to);
    if from >= avail {
        return;
    }
    let dst = (start - offset) as usize;
    let n = (avail - from) as usize;
    read[dst..dst + n].copy_from_slice(&region[from as usize..avail as usize]);
}

/// Whether a write, zeroing or discard of `len` bytes at `offset` covers a block only in
/// part (what [`partial_blocks`] would list, without allocating).
pub(crate) fn is_partial(offset: u32, len: u32) -> bool {
    let end = u64::from(offset) + u64::from(len);
    len != 0 && (!u64::from(offset).is_multiple_of(BLOCK) || !end.is_multiple_of(BLOCK))
}

/// A region's bytes as decoded (possibly short: the last region of a backup's last chunk,
/// of a volume whose size was not a multiple of the chunk size, and which may have grown
/// since) padded with zeroes to a whole region, as its hydrate must be: blocks past the
/// decoded end are zeroes in the backup, and left out of the hydrate they would stay
/// unfilled for good (a partial write over one could never be proposed, a stalled apply
/// never resumed). Whole regions are returned as they are.
pub(crate) fn padded(region: Bytes) -> Bytes {
    let whole = REGION_BYTES as usize;
    if region.len() >= whole {
        return region;
    }
    let mut v = Vec::with_capacity(whole);
    v.extend_from_slice(&region);
    v.resize(whole, 0);
    Bytes::from(v)
}
