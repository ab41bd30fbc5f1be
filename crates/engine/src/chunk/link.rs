//! A chunk's link to its parent: the file `<chunk:08x>.link` beside its layers, naming the
//! chunk of another volume (same index, same store) it reads through to, and as of which
//! snapshot sequence.
//!
//! Format (28 bytes): `TSLINK01`, the parent volume (u64 LE), the parent sequence (u64 LE),
//! the CRC32C of those 24 bytes (u32 LE). Written atomically and durably before
//! [`ChunkStore::link`] returns (temporary file, fsync, rename, directory fsync), so a crash
//! never leaves half a link and the log may be compacted past the Link entry at once.
//! Removing it ([`ChunkStore::unlink`], `drop_chunk`) marks the directory for the next
//! [`ChunkStore::sync`], which makes the removal durable before the log is compacted.
//! Owns the file and its format; never touches a layer's files.

use std::io;
use std::path::Path;

use super::ChunkStore;
use crate::fsutil::{sync_dir, write_file_atomic};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TSLINK01";
const LEN: usize = 28;

/// Longest chain of parents a read follows: deeper (or a cycle) is an error.
pub(super) const MAX_DEPTH: usize = 64;

fn encode(parent: u64, seq: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&parent.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != LEN || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[24..28].try_into().ok()?);
    if crc32c::crc32c(&b[..24]) != crc {
        return None;
    }
    let parent = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let seq = u64::from_le_bytes(b[16..24].try_into().ok()?);
    Some((parent, seq))
}

/// The parent a link file names; a file that does not decode is [`Error::Corrupt`].
pub(super) fn read_link(path: &Path, volume: u64, chunk: u64) -> Result<(u64, u64)> {
    let bytes = std::fs::read(path)?;
    decode(&bytes).ok_or_else(|| {
        Error::Corrupt(format!(
            "link file of chunk {volume:016x}/{chunk:08x} ({}) does not decode",
            path.display()
        ))
    })
}

fn invalid(msg: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

impl ChunkStore {
    pub(super) fn link_chunk(
        &self,
        volume: u64,
        chunk: u64,
        parent: u64,
        parent_seq: u64,
    ) -> Result<()> {
        if parent == volume {
            return Err(invalid(format!(
                "chunk {volume:016x}/{chunk:08x} cannot read through to itself"
            )));
        }
        match self.layer_map.get((volume, chunk)).link {
            Some(link) if link == (parent, parent_seq) => return Ok(()),
            Some((p, s)) => {
                return Err(invalid(format!(
                    "chunk {volume:016x}/{chunk:08x} already reads through to {p:016x} as of {s}, not {parent:016x} as of {parent_seq}"
                )));
            }
            None => {}
        }
        let vdir = self.volume_dir(volume);
        if !vdir.exists() {
            std::fs::create_dir_all(&vdir)?;
            // The new volume directory's own entry, durable with the link inside it.
            sync_dir(&self.dir)?;
        }
        write_file_atomic(&self.link_file(volume, chunk), &encode(parent, parent_seq))?;
        self.layer_map
            .set_link((volume, chunk), Some((parent, parent_seq)));
        Ok(())
    }

    pub(super) fn unlink_chunk(&self, volume: u64, chunk: u64) -> Result<()> {
        self.remove_link_file(volume, chunk)?;
        self.layer_map.set_link((volume, chunk), None);
        Ok(())
    }

    /// Deletes the chunk's link file if it has one (durable at the next sync).
    pub(super) fn remove_link_file(&self, volume: u64, chunk: u64) -> Result<()> {
        match std::fs::remove_file(self.link_file(volume, chunk)) {
            Ok(()) => {
                self.dirs_map().insert(self.volume_dir(volume));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_round_trips_and_a_damaged_one_does_not_decode() {
        let b = encode(0x1234_5678_9abc, 7);
        assert_eq!(decode(&b), Some((0x1234_5678_9abc, 7)));
        for i in 0..LEN {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(decode(&bad), None, "byte {i}");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
    }
}
