//! A scrubber's view of a chunk: every layer it has ([`ChunkStore::chunk_layers`]) and each
//! block of one layer classified without failing on a bad one ([`ChunkStore::scan_in`]),
//! so that one read tells the scrubber which blocks are held, which verify (with a hash to
//! compare across replicas) and which fail their checksum.
//!
//! Reads only; knows nothing of Raft or replicas.

use super::layout::{BLOCK_SIZE, CRC_LEN, layer_of, stored_crc, zero_crc};
use super::sys::read_full_at;
use super::{ChunkStore, check_range};
use crate::{Error, Result};

/// What one block of one layer holds, as [`ChunkStore::scan_in`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// The layer does not hold it (stored checksum 0 over an all-zero block).
    Absent,
    /// Written as zero.
    Zero,
    /// Data that verifies; `hash` is the first 8 bytes of its BLAKE3, little-endian.
    Data {
        /// The block's hash.
        hash: u64,
    },
    /// Fails its checksum (rot, or a block a full disk left torn).
    Bad,
}

/// The layers and link of one chunk (see [`ChunkStore::chunk_layers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkLayers {
    /// Every layer with files, ascending.
    pub layers: Vec<u64>,
    /// Its link, `(parent volume, parent seq)`.
    pub link: Option<(u64, u64)>,
}

impl ChunkStore {
    /// Every layer of the chunk with files, ascending (a dropped layer is not listed), and
    /// its link if it has one. Empty and `None`: the store holds nothing of the chunk.
    pub fn chunk_layers(&self, volume: u64, chunk: u64) -> Result<ChunkLayers> {
        // The layer map answers for every non-plain chunk; a plain one (not in the map) has
        // only layer 1, whose data file a `stat` finds: no directory listing.
        let shape = self.layer_map.get((volume, chunk));
        let mut layers = Vec::with_capacity(shape.upper.len() + 1);
        if shape.base && self.has_base(volume, chunk)? {
            layers.push(1);
        }
        layers.extend(
            shape
                .upper
                .iter()
                .copied()
                .filter(|&l| l > 1 && !self.is_dropped((volume, chunk, l))),
        );
        Ok(ChunkLayers {
            layers,
            link: shape.link,
        })
    }

    /// `count` blocks from block `first` of one layer (0 names layer 1), each classified;
    /// one read of the data and checksums ([`ChunkStore::read_stored`], then
    /// [`Stored::classify`]). Blocks past the end of the layer's files are
    /// [`Scanned::Absent`]; a block that cannot be read (EIO) is [`Scanned::Bad`].
    pub fn scan_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<Scanned>> {
        Ok(self
            .read_stored(volume, chunk, layer, first, count)?
            .classify())
    }

    /// The stored bytes and checksums of `count` blocks from block `first` of one layer (0
    /// names layer 1), as [`ChunkStore::scan_in`] classifies them: the I/O half, under the
    /// chunk's read lock, so that a caller can hash them elsewhere (off the lock, at a lower
    /// priority). A read that fails (a latent sector error) is retried block by block, and
    /// the blocks that still fail are marked unreadable, never an error for the region.
    pub fn read_stored(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Stored> {
        let too_far = || {
            Error::OutOfRange(format!(
                "chunk {volume:016x}/{chunk:08x}: blocks {first}+{count} lie outside the chunk"
            ))
        };
        let offset = first.checked_mul(BLOCK_SIZE).ok_or_else(too_far)?;
        let len = count.checked_mul(BLOCK_SIZE).ok_or_else(too_far)?;
        check_range(volume, chunk, offset, len)?;
        let n = usize::try_from(count).map_err(|_| too_far())?;
        // The files failing to open (EIO on the directory, say): the region's read fails.
        fail::fail_point!("chunk::scan_fails", |_| Err(Error::Io(
            std::io::Error::from_raw_os_error(libc::EIO)
        )));
        let Some(files) = self.files_to_read((volume, chunk, layer_of(layer)), false)? else {
            return Ok(Stored::absent(n));
        };
        let bs = BLOCK_SIZE as usize;
        let crc_len = CRC_LEN as usize;
        let mut data = vec![0u8; n * bs];
        let mut crcs = vec![0u8; n * crc_len];
        let mut unreadable = Vec::new();
        let _guard = files.read_guard();
        let whole = scan_eio(first, count)
            .and_then(|()| read_full_at(&files.data, &mut data, offset))
            .and_then(|()| read_full_at(&files.crcs, &mut crcs, first * CRC_LEN));
        if let Err(e) = whole {
            tracing::warn!(
                volume,
                chunk,
                layer,
                first,
                count,
                "scan: reading the region failed ({e}); reading it block by block"
            );
            for i in 0..n {
                let b = first + i as u64;
                let one = scan_eio(b, 1)
                    .and_then(|()| {
                        read_full_at(&files.data, &mut data[i * bs..][..bs], b * BLOCK_SIZE)
                    })
                    .and_then(|()| {
                        read_full_at(
                            &files.crcs,
                            &mut crcs[i * crc_len..][..crc_len],
                            b * CRC_LEN,
                        )
                    });
                if let Err(e) = one {
                    tracing::warn!(
                        volume,
                        chunk,
                        layer,
                        block = b,
                        "scan: block unreadable: {e}"
                    );
                    unreadable.push(i);
                }
            }
        }
        Ok(Stored {
            data,
            crcs,
            unreadable,
            absent: 0,
        })
    }
}

/// Blocks of one layer as stored (see [`ChunkStore::read_stored`]).
#[derive(Debug)]
pub struct Stored {
    data: Vec<u8>,
    crcs: Vec<u8>,
    /// Indexes of the blocks that could not be read.
    unreadable: Vec<usize>,
    /// Blocks of a layer without files (then `data` and `crcs` are empty).
    absent: usize,
}

impl Stored {
    fn absent(n: usize) -> Stored {
        Stored {
            data: Vec::new(),
            crcs: Vec::new(),
            unreadable: Vec::new(),
            absent: n,
        }
    }

    /// Each block classified (CPU only: CRC32C and BLAKE3 of every block).
    pub fn classify(&self) -> Vec<Scanned> {
        if self.absent > 0 {
            return vec![Scanned::Absent; self.absent];
        }
        let mut out: Vec<Scanned> = self
            .data
            .chunks_exact(BLOCK_SIZE as usize)
            .enumerate()
            .map(|(i, block)| classify(block, stored_crc(&self.crcs, i)))
            .collect();
        for &i in &self.unreadable {
            out[i] = Scanned::Bad;
        }
        out
    }
}

/// The `chunk::scan_eio` fail point: `return(N)` makes block N unreadable (a latent sector
/// error under it), for reads of any chunk.
fn scan_eio(first: u64, count: u64) -> std::io::Result<()> {
    fail::fail_point!("chunk::scan_eio", |arg: Option<String>| {
        match arg.as_deref().map(str::parse::<u64>) {
            Some(Ok(b)) if !(first..first + count).contains(&b) => Ok(()),
            _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }
    });
    let _ = (first, count);
    Ok(())
}

/// One block as stored, classified (see [`Scanned`]).
fn classify(block: &[u8], stored: u32) -> Scanned {
    let zero = || block.iter().all(|&b| b == 0);
    if stored == 0 {
        // Past the files' ends both read as zeroes: absent, as a hole is. Data whose
        // CRC32C is 0 verifies as stored (`block_ok`): data like any other.
        return if zero() {
            Scanned::Absent
        } else if crc32c::crc32c(block) == 0 {
            Scanned::Data {
                hash: block_hash(block),
            }
        } else {
            Scanned::Bad
        };
    }
    if stored == zero_crc() && zero() {
        return Scanned::Zero;
    }
    if crc32c::crc32c(block) == stored {
        return Scanned::Data {
            hash: block_hash(block),
        };
    }
    Scanned::Bad
}

/// The first 8 bytes of the block's BLAKE3, little-endian.
pub fn block_hash(block: &[u8]) -> u64 {
    let h = blake3::hash(block);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
