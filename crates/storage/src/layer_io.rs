//! One layer of a chunk as stored, for the catch-up (both its source and its copier): the
//! engine's raw per-layer access, bridged for layer 1 while the engine's layers are being
//! written (branch `wip-engine`).
//!
//! The engine's skeleton answers `Unsupported` for [`ChunkStore::read_in`] and
//! [`ChunkStore::clear_in`] even of layer 1. Until it implements them, a store can hold
//! nothing but layer 1 of unlinked chunks (every call that makes another layer or a link
//! fails the same way), and there layer 1 as stored is what [`ChunkStore::read`] reads and
//! a hole is what [`ChunkStore::discard`] leaves. So for layer 1, and only on that answer,
//! these fall back to them. Once the engine implements them the fallback is never taken;
//! remove it then.

use bytes::Bytes;
use tessera_engine::{ChunkStore, Error, Result};

fn unimplemented(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == std::io::ErrorKind::Unsupported)
}

/// `len` bytes at `offset` of one layer of a chunk as stored, verified; blocks the layer
/// does not hold read as zeroes.
pub(crate) fn read_in(
    store: &ChunkStore,
    volume: u64,
    chunk: u64,
    layer: u64,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    match store.read_in(volume, chunk, layer, offset, len) {
        Err(e) if layer == 1 && unimplemented(&e) => store.read(volume, chunk, offset, len),
        other => other,
    }
}

/// Makes whole blocks absent from one layer of a chunk (checksum 0, a hole).
pub(crate) fn clear_in(
    store: &ChunkStore,
    volume: u64,
    chunk: u64,
    layer: u64,
    offset: u64,
    len: u64,
) -> Result<()> {
    match store.clear_in(volume, chunk, layer, offset, len) {
        Err(e) if layer == 1 && unimplemented(&e) => store.discard(volume, chunk, offset, len),
        other => other,
    }
}
