//! A region object: the non-zero blocks of up to [`REGION_BLOCKS`] consecutive blocks of a
//! chunk, compressed, with the bitmap saying which blocks they are.
//!
//! Format 1: `b"TSRG" | format u16 = 1 | blocks u16 | bitmap [u8; 32] | zstd(present blocks,
//! in order)` (integers little-endian; zstd level 3). Its name is the BLAKE3 of `b"tessera
//! region 1" | blocks u16 | bitmap | present blocks` (the logical content, not the
//! compressed bytes: a different zstd build or level names the same region the same).
//!
//! [`encode`] takes local data the caller read (trusted); [`decode`] takes bytes from a
//! store (untrusted): it never panics, never allocates more than a region's worth whatever
//! the object claims, and verifies the name, so a corrupt object is never served.
//!
//! [`REGION_BLOCKS`]: tessera_proto::control::REGION_BLOCKS

use bytes::Bytes;
use tessera_proto::control::{Hash, REGION_BLOCKS};

use crate::{Error, Result, keys};

/// Bytes of a block: the unit a bitmap bit stands for.
pub const BLOCK: usize = 4096;
/// The format this build writes (and the newest it reads).
pub const FORMAT: u16 = 1;
/// Bytes of a region object at most: its header and zstd's bound for a region's blocks
/// (`ZSTD_COMPRESSBOUND(1 MiB)`: the input, a 256th of it). Read with
/// `Store::get_bounded`, so a store's bytes never make a reader allocate more.
pub const MAX_OBJECT_BYTES: u64 = (HEADER + MAX_BLOCKS * BLOCK + MAX_BLOCKS * BLOCK / 256) as u64;

const MAGIC: &[u8; 4] = b"TSRG";
const HEADER: usize = 4 + 2 + 2 + 32;
const NAME_DOMAIN: &[u8] = b"tessera region 1";
const ZSTD_LEVEL: i32 = 3;
// REGION_BLOCKS is 256: a region's block index and count fit a u16, its bitmap 32 bytes.
const MAX_BLOCKS: usize = REGION_BLOCKS as usize;
const _: () = assert!(MAX_BLOCKS <= 256);

/// A region ready to put: its name and its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Its name.
    pub hash: Hash,
    /// The object's bytes.
    pub bytes: Bytes,
    /// Bytes of non-zero blocks it holds (before compression).
    pub logical: u64,
}

/// A region read back: which blocks it holds and their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Blocks the region spans (the last region of a chunk may be short).
    pub blocks: u16,
    /// Bit `i` (byte `i / 8`, bit `i % 8`): block `i` is held (non-zero).
    pub bitmap: [u8; 32],
    /// The held blocks, in order, 4 KiB each.
    pub data: Bytes,
}

impl Region {
    /// Whether block `i` is held.
    pub fn holds(&self, i: u16) -> bool {
        held(&self.bitmap, usize::from(i))
    }

    // Blocks it spans, at most a region's (the fields are public: never trust them to
    // index with).
    fn span(&self) -> u16 {
        self.blocks.min(MAX_BLOCKS as u16)
    }

    /// Runs of consecutive held blocks: `(first block, their bytes)`, ascending.
    pub fn runs(&self) -> Vec<(u16, Bytes)> {
        let mut runs = Vec::new();
        // Index of the next held block's bytes in `data`, and the run being built.
        let mut at = 0usize;
        let mut run: Option<(u16, usize)> = None;
        for i in 0..self.span() {
            if self.holds(i) && (at + 1) * BLOCK <= self.data.len() {
                run.get_or_insert((i, at));
                at += 1;
            } else if let Some((first, from)) = run.take() {
                runs.push((first, self.data.slice(from * BLOCK..at * BLOCK)));
            }
        }
        if let Some((first, from)) = run {
            runs.push((first, self.data.slice(from * BLOCK..at * BLOCK)));
        }
        runs
    }

    /// The region's bytes, `blocks * 4 KiB`, zeroes where no block is held.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize::from(self.span()) * BLOCK];
        for (first, bytes) in self.runs() {
            let at = usize::from(first) * BLOCK;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        out
    }
}

/// Encodes `data` (whole 4 KiB blocks, at most a region's): `None` if every block is zero.
///
/// `data` is the caller's own read of a chunk, so its shape is a bug of the caller, not
/// input to check: a debug build asserts it; a release build encodes the whole blocks of
/// the first region's worth of it (never panics).
pub fn encode(data: &[u8]) -> Option<Encoded> {
    debug_assert!(
        data.len().is_multiple_of(BLOCK) && data.len() <= MAX_BLOCKS * BLOCK,
        "a region is whole blocks, at most {MAX_BLOCKS}: {} bytes",
        data.len()
    );
    let blocks = (data.len() / BLOCK).min(MAX_BLOCKS);
    let mut bitmap = [0u8; 32];
    let mut present = Vec::new();
    for (i, block) in data.chunks_exact(BLOCK).take(blocks).enumerate() {
        if !is_zero(block) {
            bitmap[i / 8] |= 1 << (i % 8);
            present.extend_from_slice(block);
        }
    }
    if present.is_empty() {
        return None;
    }
    let blocks = blocks as u16; // At most MAX_BLOCKS (256).
    let hash = name(blocks, &bitmap, &present);
    let compressed = zstd::bulk::compress(&present, ZSTD_LEVEL)
        .expect("zstd compresses a region into a buffer of its bound");
    let mut bytes = Vec::with_capacity(HEADER + compressed.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&blocks.to_le_bytes());
    bytes.extend_from_slice(&bitmap);
    bytes.extend_from_slice(&compressed);
    Some(Encoded {
        hash,
        bytes: Bytes::from(bytes),
        logical: present.len() as u64,
    })
}

/// Decodes the object named `hash` from `bytes`, verified: [`crate::Error::Corrupt`] (with
/// `store` and the object's key) if it is not what its name says.
pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Region> {
    let corrupt = |why: String| Error::Corrupt {
        store: store.to_string(),
        key: keys::object(hash),
        why,
    };
    if bytes.len() < HEADER {
        return Err(corrupt(format!(
            "{} bytes, shorter than a header ({HEADER})",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt(format!("magic {:?} is not TSRG", &bytes[..4])));
    }
    let format = u16::from_le_bytes([bytes[4], bytes[5]]);
    if format > FORMAT {
        return Err(corrupt(format!(
            "format {format} is newer than this build reads ({FORMAT})"
        )));
    }
    if format != FORMAT {
        return Err(corrupt(format!("unknown format {format}")));
    }
    let blocks = u16::from_le_bytes([bytes[6], bytes[7]]);
    if blocks == 0 || usize::from(blocks) > MAX_BLOCKS {
        return Err(corrupt(format!(
            "{blocks} blocks (a region spans 1 to {MAX_BLOCKS})"
        )));
    }
    let mut bitmap = [0u8; 32];
    bitmap.copy_from_slice(&bytes[8..HEADER]);
    if (usize::from(blocks)..MAX_BLOCKS).any(|i| held(&bitmap, i)) {
        return Err(corrupt(format!(
            "its bitmap holds blocks past its {blocks}"
        )));
    }
    let present = bitmap
        .iter()
        .map(|b| b.count_ones() as usize)
        .sum::<usize>();
    if present == 0 {
        return Err(corrupt("it holds no block".to_string()));
    }
    // The capacity bounds what zstd may write, whatever the frame claims.
    let data = zstd::bulk::decompress(&bytes[HEADER..], present * BLOCK)
        .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
    if data.len() != present * BLOCK {
        return Err(corrupt(format!(
            "decompresses to {} bytes, its bitmap says {}",
            data.len(),
            present * BLOCK
        )));
    }
    let actual = name(blocks, &bitmap, &data);
    if actual != *hash {
        return Err(corrupt(format!("its content hashes to {actual}")));
    }
    Ok(Region {
        blocks,
        bitmap,
        data: Bytes::from(data),
    })
}

fn name(blocks: u16, bitmap: &[u8; 32], present: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(NAME_DOMAIN);
    h.update(&blocks.to_le_bytes());
    h.update(bitmap);
    h.update(present);
    Hash(*h.finalize().as_bytes())
}

fn held(bitmap: &[u8; 32], i: usize) -> bool {
    i < MAX_BLOCKS && bitmap[i / 8] & (1 << (i % 8)) != 0
}

fn is_zero(block: &[u8]) -> bool {
    // Word-wide ORs vectorize; a byte-wise `all` stops early but does not.
    block
        .chunks_exact(64)
        .all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

#[cfg(test)]
#[path = "region_tests.rs"]
mod tests;
