//! One layer of a chunk as stored, nothing read through: the catch-up's access (a new
//! replica copies every layer and link of its group from a peer, block checksums first).
//! A layer of 0 names layer 1, as `Request::seq` 0 does.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::layers::{runs, touched};
use super::layout::{
    BLOCK_SIZE, CRC_LEN, FileKey, FileKind, LayerKey, block_ok, layer_of, stored_crc,
};
use super::place::Op;
use super::sys::{Zeroing, read_full_at};
use super::{ChunkStore, check_range, corrupt};
use crate::{Error, Result};

impl ChunkStore {
    // The catch-up's raw access: one layer at a time, nothing read through. A layer of 0
    // names layer 1 (as `Request::seq` 0 does). A layer a merge dropped is absent to them
    // (what the copier builds on locally), but served by the `served_` ones while its
    // files exist (see `dropped`), though no listing names it.

    /// The stored checksums of `count` blocks from block `first` of layer 1 (4 bytes each,
    /// as in the sidecar: 0 for a block never written). A chunk without files has only
    /// zeroes.
    pub fn checksums(&self, volume: u64, chunk: u64, first: u64, count: u64) -> Result<Bytes> {
        self.stored_checksums((volume, chunk, 1), false, first, count)
    }

    /// For each of `count` blocks from block `first` of layer 1, whether its bytes match its
    /// stored checksum (as a read would find; a never-written block does). A copy checks
    /// this before it trusts a stored checksum to skip a block: after a power loss the new
    /// checksum may be on disk without the new data.
    pub fn verify_blocks(
        &self,
        volume: u64,
        chunk: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<bool>> {
        self.layer_verify_blocks((volume, chunk, 1), first, count)
    }

    /// Blocks of the chunk's layer 1 as far as its files reach (0 if it has none). Looks at
    /// the files' sizes without opening them: listing a store's chunks must not churn the
    /// open ones.
    pub fn chunk_blocks(&self, volume: u64, chunk: u64) -> Result<u64> {
        self.stored_blocks((volume, chunk, 1), false)
    }

    /// Whether some chunk of the store has a layer above 1 or a parent: what a node from
    /// before snapshots cannot copy.
    pub fn holds_layers_or_links(&self) -> bool {
        !self.layer_map.empty()
    }

    /// Every layer of every chunk with files in this store, and every linked chunk (with
    /// its lowest layer, or layer 1 if it has none), sorted.
    pub fn list_layers(&self) -> Result<Vec<LayerKey>> {
        self.list_layers_with(false)
    }

    /// [`ChunkStore::list_layers`] as a store serving a copy lists them: with the layers a
    /// merge dropped whose files still exist (pinned, see `dropped`). A copy listing its
    /// pages across a drop would otherwise miss the sources of a merge its replay applies
    /// again; taking them changes no read (the merge's target holds what they hold).
    pub fn served_list_layers(&self) -> Result<Vec<LayerKey>> {
        self.list_layers_with(true)
    }

    fn list_layers_with(&self, hidden: bool) -> Result<Vec<LayerKey>> {
        let files = self.listed_files_with(hidden)?;
        let mut with_files = BTreeSet::new();
        let mut linked = Vec::new();
        for ((volume, chunk, layer), kind) in files {
            if kind == FileKind::Link {
                if !self.is_unlinked((volume, chunk)) {
                    linked.push((volume, chunk));
                }
            } else {
                with_files.insert(LayerKey {
                    volume,
                    chunk,
                    layer,
                });
            }
        }
        for (volume, chunk) in linked {
            let has_files = with_files
                .range(
                    LayerKey {
                        volume,
                        chunk,
                        layer: 0,
                    }..,
                )
                .next()
                .is_some_and(|k| (k.volume, k.chunk) == (volume, chunk));
            if !has_files {
                with_files.insert(LayerKey {
                    volume,
                    chunk,
                    layer: 1,
                });
            }
        }
        Ok(with_files.into_iter().collect())
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
        self.stored_checksums((volume, chunk, layer_of(layer)), false, first, count)
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
        self.layer_verify_blocks((volume, chunk, layer_of(layer)), first, count)
    }

    /// [`ChunkStore::chunk_blocks`] of one layer.
    pub fn chunk_blocks_in(&self, volume: u64, chunk: u64, layer: u64) -> Result<u64> {
        self.stored_blocks((volume, chunk, layer_of(layer)), false)
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
        self.layer_read((volume, chunk, layer_of(layer)), false, offset, len)
    }

    /// [`ChunkStore::checksums_in`] for a peer copying this store: a layer a merge dropped
    /// is served while its files exist (the copy may have listed it before the drop; hold
    /// a [`ChunkStore::pin_dropped`] pin for the whole copy so that they do).
    pub fn served_checksums_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        first: u64,
        count: u64,
    ) -> Result<Bytes> {
        self.stored_checksums((volume, chunk, layer_of(layer)), true, first, count)
    }

    /// [`ChunkStore::chunk_blocks_in`] for a peer copying this store (see
    /// [`ChunkStore::served_checksums_in`]).
    pub fn served_blocks_in(&self, volume: u64, chunk: u64, layer: u64) -> Result<u64> {
        self.stored_blocks((volume, chunk, layer_of(layer)), true)
    }

    /// [`ChunkStore::read_in`] for a peer copying this store (see
    /// [`ChunkStore::served_checksums_in`]).
    pub fn served_read_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.layer_read((volume, chunk, layer_of(layer)), true, offset, len)
    }

    fn layer_read(&self, key: FileKey, raw: bool, offset: u64, len: u64) -> Result<Bytes> {
        let (volume, chunk, layer) = key;
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(files) = self.files_to_read(key, raw)? else {
            return Ok(Bytes::from(vec![0u8; len as usize]));
        };
        let (first, n) = touched(offset, len);
        let bs = BLOCK_SIZE as usize;
        let mut buf = vec![0u8; n as usize * bs];
        let mut crcs = vec![0u8; (n * CRC_LEN) as usize];
        {
            let _guard = files.read_guard();
            read_full_at(&files.data, &mut buf, first * BLOCK_SIZE)?;
            read_full_at(&files.crcs, &mut crcs, first * CRC_LEN)?;
        }
        for (i, block) in buf.chunks_exact_mut(bs).enumerate() {
            let stored = stored_crc(&crcs, i);
            if stored == 0 {
                block.fill(0);
            } else if !block_ok(block, stored) {
                let at = first + i as u64;
                if self.torn.contains((volume, chunk, layer), at) {
                    return Err(Error::Exhausted(format!(
                        "chunk {volume:016x}/{chunk:08x} layer {layer} block {at} is being rewritten after the disk filled"
                    )));
                }
                return Err(corrupt(volume, chunk, at, block, stored));
            }
        }
        let start = (offset - first * BLOCK_SIZE) as usize;
        Ok(Bytes::from(buf).slice(start..start + len as usize))
    }

    /// Stores whole blocks into one layer as they are (a copy of a peer's layer): every
    /// block becomes present, an all-zero one as "written as zero" (a hole with the zero
    /// block's checksum). `offset` and the length must be multiples of the block size.
    pub fn write_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        check_whole(volume, chunk, offset, data.len() as u64)?;
        let bs = BLOCK_SIZE as usize;
        let zero: Vec<bool> = data
            .chunks_exact(bs)
            .map(|b| b.iter().all(|&x| x == 0))
            .collect();
        let first = offset / BLOCK_SIZE;
        let ops: Vec<(u64, Op<'_>)> = runs(&zero)
            .into_iter()
            .map(|(s, e, zero)| {
                let at = first + s as u64;
                if zero {
                    (at, Op::Zero((e - s) as u64))
                } else {
                    (at, Op::Data(&data[s * bs..e * bs]))
                }
            })
            .collect();
        self.place((volume, chunk, layer_of(layer)), &ops, Zeroing::Punch)
    }

    /// Makes whole blocks absent from one layer (checksum 0, a hole): a copy of a peer's
    /// layer that does not hold them. `offset` and `len` must be multiples of the block
    /// size. A layer without files stays without.
    pub fn clear_in(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        check_whole(volume, chunk, offset, len)?;
        let ops = [(offset / BLOCK_SIZE, Op::Absent(len / BLOCK_SIZE))];
        self.place((volume, chunk, layer_of(layer)), &ops, Zeroing::Punch)
    }

    /// Removes one layer's files (the deletion durable at the next sync). Idempotent.
    pub fn drop_layer(&self, volume: u64, chunk: u64, layer: u64) -> Result<()> {
        self.drop_layer_files(volume, chunk, layer_of(layer))
    }
}

pub(super) fn check_whole(volume: u64, chunk: u64, offset: u64, len: u64) -> Result<()> {
    check_range(volume, chunk, offset, len)?;
    if !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::OutOfRange(format!(
            "chunk {volume:016x}/{chunk:08x}: {offset}+{len} is not whole blocks"
        )));
    }
    Ok(())
}
