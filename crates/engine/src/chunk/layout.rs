//! The on-disk layout of a chunk store: where a chunk's files are, how the checksum sidecar
//! is laid out, and what makes a block verify.
//!
//! Layer 1 of chunk `c` of volume `v`: `<dir>/<v:016x>/<c:08x>.dat` holds the data (block
//! `b` at offset `b * 4096`), `<c:08x>.crc` the CRC32C of block `b`, little-endian, at
//! offset `b * 4`. Layer `L > 1`: `<c:08x>.L<L:08x>.dat` and `<c:08x>.L<L:08x>.crc`, the same
//! format. A stored 0 means the layer does not hold the block (with an all-zero block: a
//! hole, "never written"); the checksum of a zero block over a hole is "written as zero".
//! `<c:08x>.link` names the chunk's parent (see `link`). Pure functions and constants, plus
//! the directory listing; never opens a chunk file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Result;

/// Bytes per checksummed block.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest chunk: offsets and lengths must stay within it.
pub const MAX_CHUNK: u64 = 4 << 30;
/// Bytes of one block's checksum in the sidecar.
pub(super) const CRC_LEN: u64 = 4;

/// A chunk: its volume and its index in the volume.
pub(super) type Key = (u64, u64);
/// One layer of a chunk (its pair of files): volume, chunk index, layer (at least 1).
pub(super) type FileKey = (u64, u64, u64);

/// What a file of a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    /// A layer's data file.
    Data,
    /// A layer's checksum sidecar.
    Crc,
    /// The chunk's link to its parent (the key's layer is 0).
    Link,
}

/// Every chunk file under `dir`: its chunk and layer, what it is, and its directory
/// entry. Names that are not chunk files (temporary files among them) are skipped.
pub(super) fn chunk_files(dir: &Path) -> Result<Vec<(FileKey, FileKind, std::fs::DirEntry)>> {
    let mut out = Vec::new();
    for vol in std::fs::read_dir(dir)? {
        let vol = vol?;
        let Some(volume) = vol.file_name().to_str().and_then(parse_hex) else {
            continue;
        };
        if !vol.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(vol.path())? {
            let f = f?;
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((chunk, layer, kind)) = parse_name(name) {
                out.push(((volume, chunk, layer), kind, f));
            }
        }
    }
    Ok(out)
}

/// The chunk, layer and kind a file name stands for, if it is a chunk file's.
pub(super) fn parse_name(name: &str) -> Option<(u64, u64, FileKind)> {
    if let Some(stem) = name.strip_suffix(".link") {
        return parse_hex(stem).map(|c| (c, 0, FileKind::Link));
    }
    let (stem, kind) = match (name.strip_suffix(".dat"), name.strip_suffix(".crc")) {
        (Some(stem), _) => (stem, FileKind::Data),
        (None, Some(stem)) => (stem, FileKind::Crc),
        (None, None) => return None,
    };
    match stem.split_once(".L") {
        None => parse_hex(stem).map(|c| (c, 1, kind)),
        Some((chunk, layer)) => {
            let chunk = parse_hex(chunk)?;
            // Layer 1 has only the plain name: `.L00000001` would alias it.
            let layer = parse_hex(layer).filter(|&l| l > 1)?;
            Some((chunk, layer, kind))
        }
    }
}

/// The data and checksum files of one layer of a chunk, in its volume's directory.
pub(super) fn layer_paths(volume_dir: &Path, chunk: u64, layer: u64) -> (PathBuf, PathBuf) {
    if layer <= 1 {
        (
            volume_dir.join(format!("{chunk:08x}.dat")),
            volume_dir.join(format!("{chunk:08x}.crc")),
        )
    } else {
        (
            volume_dir.join(format!("{chunk:08x}.L{layer:08x}.dat")),
            volume_dir.join(format!("{chunk:08x}.L{layer:08x}.crc")),
        )
    }
}

/// The chunk's link file, in its volume's directory.
pub(super) fn link_path(volume_dir: &Path, chunk: u64) -> PathBuf {
    volume_dir.join(format!("{chunk:08x}.link"))
}

/// A block verifies if its CRC matches, or if it was never written (stored 0, all zeroes).
pub(super) fn block_ok(block: &[u8], stored: u32) -> bool {
    crc32c::crc32c(block) == stored || (stored == 0 && block.iter().all(|&b| b == 0))
}

/// The checksum of an all-zero block: stored over a hole, "written as zero".
pub(super) fn zero_crc() -> u32 {
    static ZERO: OnceLock<u32> = OnceLock::new();
    *ZERO.get_or_init(|| crc32c::crc32c(&[0u8; BLOCK_SIZE as usize]))
}

/// XORed into a block's CRC32C to store a checksum that never verifies (see `write`).
const POISON: u32 = 0x5c4b_d00d;

/// The checksum stored for a block merged over one failing its checksum: never its CRC32C
/// (so the block keeps failing), never 0 (which would mean "not held").
pub(super) fn poisoned_crc(block: &[u8]) -> u32 {
    match crc32c::crc32c(block) ^ POISON {
        0 => 1,
        c => c,
    }
}

/// Whether `stored` is the poisoned checksum of `block` (see `poisoned_crc`): rot that a
/// partial write merged over, never a block a crash or a full disk tore (whose checksum is
/// an older block's CRC32C). A block bearing it stays poisoned, also while replaying.
pub(super) fn is_poisoned(block: &[u8], stored: u32) -> bool {
    stored != 0 && stored == poisoned_crc(block)
}

pub(super) fn stored_crc(crcs: &[u8], i: usize) -> u32 {
    let at = i * CRC_LEN as usize;
    u32::from_le_bytes([crcs[at], crcs[at + 1], crcs[at + 2], crcs[at + 3]])
}

fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The layer a write of snapshot sequence `seq` goes to.
pub fn layer_of(seq: u64) -> u64 {
    seq.max(1)
}

/// What one block holds, as [`super::ChunkStore::block_status`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// No layer of the chunk (nor of a parent it reads through to) holds it.
    Hole,
    /// Written as zeroes (or written with all-zero data).
    Zero,
    /// Holds data.
    Data,
    /// No layer holds it and the chunk is restored from a backup ([`super::RESTORED`]):
    /// its bytes are the backup's, not filled yet.
    Unfilled,
}

/// The parent a restored chunk links to ([`super::ChunkStore::link`] with this parent and
/// the backup's id as its sequence): the blocks no layer holds are the backup's, reported
/// [`BlockKind::Unfilled`] (reads: [`crate::Error::Unfilled`]) until filled
/// ([`super::ChunkStore::hydrate`]); unlinked once every block is filled. Equal to the
/// wire's `RESTORED_PARENT`; no volume has this id.
pub const RESTORED: u64 = u64::MAX;

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
