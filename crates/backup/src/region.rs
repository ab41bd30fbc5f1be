//! A region object: the non-zero blocks of up to [`REGION_BLOCKS`] consecutive blocks of a
//! chunk, compressed, with the bitmap saying which blocks they are.
//!
//! Format 1: `b"TSRG" | format u16 = 1 | blocks u16 | bitmap [u8; 32] | zstd(present blocks,
//! in order)`. Its name is the BLAKE3 of `b"tessera region 1" | blocks u16 | bitmap |
//! present blocks` (the logical content, not the compressed bytes: a different zstd
//! build or level names the same region the same). Decoding verifies the name: a corrupt
//! object is never served.
//!
//! [`REGION_BLOCKS`]: tessera_proto::control::REGION_BLOCKS

use bytes::Bytes;
use tessera_proto::control::Hash;

use crate::Result;

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
    /// Runs of consecutive held blocks: `(first block, their bytes)`, ascending.
    pub fn runs(&self) -> Vec<(u16, Bytes)> {
        todo!("the backup branch implements it")
    }

    /// The region's bytes, `blocks * 4 KiB`, zeroes where no block is held.
    pub fn to_bytes(&self) -> Vec<u8> {
        todo!("the backup branch implements it")
    }
}

/// Encodes `data` (whole 4 KiB blocks, at most a region's): `None` if every block is zero.
pub fn encode(data: &[u8]) -> Option<Encoded> {
    let _ = data;
    todo!("the backup branch implements it")
}

/// Decodes the object named `hash` from `bytes`, verified: [`crate::Error::Corrupt`] (with
/// `store` and `key` for the caller to fill) if it is not what its name says.
pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Region> {
    let _ = (store, hash, bytes);
    todo!("the backup branch implements it")
}
