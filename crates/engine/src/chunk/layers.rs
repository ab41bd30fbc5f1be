//! Layers, parents and the catch-up's raw access: the API of snapshots and clones in the
//! chunk store. (Skeleton: the signatures are the contract the raft and storage crates
//! code against; the bodies are being written.)
//!
//! A chunk's blocks live in layers, one per snapshot sequence written (see
//! `tessera_proto::command`): layer `layer_of(seq) = max(seq, 1)`; the chunk's original
//! files are layer 1. A block is *present* in a layer when its stored checksum is not 0;
//! present as zero ("written as zero": a hole in the data file with the checksum of a zero
//! block) hides the layers and parent below it. Live reads take, per block, the newest
//! layer holding it; a read as of snapshot `s` the newest layer `<= s`; a block no layer
//! holds reads through to the chunk's parent (see [`ChunkStore::link`]) as of its sequence,
//! or as zeroes.

use bytes::Bytes;

use super::ChunkStore;
use crate::{Error, Result};

/// The layer a write of snapshot sequence `seq` goes to.
pub fn layer_of(seq: u64) -> u64 {
    seq.max(1)
}

/// What one block holds, as [`ChunkStore::block_status`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// No layer of the chunk (nor of a parent it reads through to) holds it.
    Hole,
    /// Written as zeroes (or written with all-zero data).
    Zero,
    /// Holds data.
    Data,
}

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

fn todo(what: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{what}: layers are not implemented yet"),
    ))
}

impl ChunkStore {
    /// Stores `data` at `offset` of the chunk in layer `layer_of(seq)` (a partial block is
    /// completed from the chunk's current content, whatever layer or parent holds it).
    pub fn write_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        data: &[u8],
        seq: u64,
    ) -> Result<()> {
        if layer_of(seq) == 1 {
            return self.write(volume, chunk, offset, data);
        }
        Err(todo("write_seq"))
    }

    /// Makes `len` bytes at `offset` read as zeroes, kept allocated, in layer `layer_of(seq)`.
    pub fn write_zeroes_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        seq: u64,
    ) -> Result<()> {
        if layer_of(seq) == 1 {
            return self.write_zeroes(volume, chunk, offset, len);
        }
        Err(todo("write_zeroes_seq"))
    }

    /// Makes `len` bytes at `offset` read as zeroes and frees their space where it can, in
    /// layer `layer_of(seq)`: blocks that a lower layer or a parent holds become "written as
    /// zero" (so they never show the older data again), the others holes.
    pub fn discard_seq(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        seq: u64,
    ) -> Result<()> {
        if layer_of(seq) == 1 {
            return self.discard(volume, chunk, offset, len);
        }
        Err(todo("discard_seq"))
    }

    /// Reads `len` bytes at `offset`, live (`as_of` 0) or as of snapshot sequence `as_of`,
    /// every block verified.
    pub fn read_as_of(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        as_of: u64,
    ) -> Result<Bytes> {
        if as_of == 0 {
            return self.read(volume, chunk, offset, len);
        }
        Err(todo("read_as_of"))
    }

    /// What each block of `offset..offset + len` (whole blocks) holds, live or as of
    /// `as_of`.
    pub fn block_status(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        as_of: u64,
    ) -> Result<Vec<BlockKind>> {
        let _ = (volume, chunk, offset, len, as_of);
        Err(todo("block_status"))
    }

    /// The chunk (of a clone) reads through to chunk `chunk` of `parent` as of its snapshot
    /// sequence `parent_seq`. Idempotent; a different parent for a linked chunk is an error.
    pub fn link(&self, volume: u64, chunk: u64, parent: u64, parent_seq: u64) -> Result<()> {
        let _ = (volume, chunk, parent, parent_seq);
        Err(todo("link"))
    }

    /// The parent the chunk reads through to, if any.
    pub fn link_of(&self, volume: u64, chunk: u64) -> Result<Option<(u64, u64)>> {
        let _ = (volume, chunk);
        Ok(None)
    }

    /// The chunk no longer reads through to a parent. Idempotent.
    pub fn unlink(&self, volume: u64, chunk: u64) -> Result<()> {
        let _ = (volume, chunk);
        Err(todo("unlink"))
    }

    /// Copies into layer `layer_of(seq)` every block of `offset..offset + len` that no layer
    /// of the chunk holds and its parent does (as of the link's sequence). Idempotent; the
    /// chunk reads the same before and after.
    pub fn flatten(&self, volume: u64, chunk: u64, offset: u64, len: u64, seq: u64) -> Result<()> {
        let _ = (volume, chunk, offset, len, seq);
        Err(todo("flatten"))
    }

    /// Makes the chunk's live image its image as of snapshot sequence `to`, writing into
    /// layer `layer_of(seq)` (`seq > to`) every block a layer above `to` holds. Idempotent.
    pub fn rollback(&self, volume: u64, chunk: u64, to: u64, seq: u64) -> Result<()> {
        let _ = (volume, chunk, to, seq);
        Err(todo("rollback"))
    }

    /// Indexes of the blocks written (data, zeroes or discards) by sequences in
    /// `after + 1..=upto`: what changed between snapshot `after` and snapshot `upto`
    /// (`after` 0: since the beginning), found from the layers' checksums alone.
    pub fn changed_blocks(
        &self,
        volume: u64,
        chunk: u64,
        after: u64,
        upto: u64,
    ) -> Result<Vec<u64>> {
        let _ = (volume, chunk, after, upto);
        Err(todo("changed_blocks"))
    }

    // The catch-up's raw access: one layer at a time, nothing read through.

    /// Every layer of every chunk with files in this store, and every linked chunk (with
    /// its lowest layer, or layer 1 if it has none), sorted.
    pub fn list_layers(&self) -> Result<Vec<LayerKey>> {
        Ok(self
            .list_chunks()?
            .into_iter()
            .map(|(volume, chunk)| LayerKey {
                volume,
                chunk,
                layer: 1,
            })
            .collect())
    }

    /// [`ChunkStore::checksums`] of one layer.
    pub fn checksums_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Bytes> {
        if layer == 1 {
            return self.checksums(volume, chunk, first, count);
        }
        Err(todo("checksums_in"))
    }

    /// [`ChunkStore::verify_blocks`] of one layer.
    pub fn verify_blocks_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<bool>> {
        if layer == 1 {
            return self.verify_blocks(volume, chunk, first, count);
        }
        Err(todo("verify_blocks_in"))
    }

    /// [`ChunkStore::chunk_blocks`] of one layer.
    pub fn chunk_blocks_in(&self, volume: u64, chunk: u64, layer: u64) -> Result<u64> {
        if layer == 1 {
            return self.chunk_blocks(volume, chunk);
        }
        Err(todo("chunk_blocks_in"))
    }

    /// `len` bytes at `offset` of one layer as stored, verified; blocks the layer does not
    /// hold read as zeroes (their checksums say which).
    pub fn read_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let _ = (volume, chunk, layer, offset, len);
        Err(todo("read_in"))
    }

    /// Stores whole blocks into one layer as they are (a copy of a peer's layer).
    pub fn write_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        if layer == 1 {
            return self.write(volume, chunk, offset, data);
        }
        Err(todo("write_in"))
    }

    /// Makes whole blocks absent from one layer (checksum 0, a hole): a copy of a peer's
    /// layer that does not hold them.
    pub fn clear_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let _ = (volume, chunk, layer, offset, len);
        Err(todo("clear_in"))
    }

    /// Removes one layer's files.
    pub fn drop_layer(&self, volume: u64, chunk: u64, layer: u64) -> Result<()> {
        let _ = (volume, chunk, layer);
        Err(todo("drop_layer"))
    }
}
