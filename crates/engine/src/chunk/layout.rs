//! The on-disk layout of a chunk store: where a chunk's files are, how the checksum sidecar
//! is laid out, and what makes a block verify.
//!
//! `<dir>/<volume:016x>/<chunk:08x>.dat` holds the data (block `b` at offset `b * 4096`),
//! `<chunk:08x>.crc` the CRC32C of block `b`, little-endian, at offset `b * 4`. A stored 0
//! with an all-zero block means "never written". Pure functions and constants, plus the
//! directory listing; never opens a chunk file.

use std::path::Path;

use crate::Result;

/// Bytes per checksummed block.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest chunk: offsets and lengths must stay within it.
pub const MAX_CHUNK: u64 = 4 << 30;
/// Bytes of one block's checksum in the sidecar.
pub(super) const CRC_LEN: u64 = 4;

/// A chunk: its volume and its index in the volume.
pub(super) type Key = (u64, u64);

/// Every chunk file under `dir`: its chunk, whether it is the data file (else the
/// checksums), and its directory entry. Names that are not chunk files are skipped.
pub(super) fn chunk_files(dir: &Path) -> Result<Vec<(Key, bool, std::fs::DirEntry)>> {
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
            let (stem, data) = match (name.strip_suffix(".dat"), name.strip_suffix(".crc")) {
                (Some(stem), _) => (stem, true),
                (None, Some(stem)) => (stem, false),
                (None, None) => continue,
            };
            if let Some(chunk) = parse_hex(stem) {
                out.push(((volume, chunk), data, f));
            }
        }
    }
    Ok(out)
}

/// A block verifies if its CRC matches, or if it was never written (stored 0, all zeroes).
pub(super) fn block_ok(block: &[u8], stored: u32) -> bool {
    crc32c::crc32c(block) == stored || (stored == 0 && block.iter().all(|&b| b == 0))
}

pub(super) fn stored_crc(crcs: &[u8], i: usize) -> u32 {
    let at = i * CRC_LEN as usize;
    u32::from_le_bytes([crcs[at], crcs[at + 1], crcs[at + 2], crcs[at + 3]])
}

fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
