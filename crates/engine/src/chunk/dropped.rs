//! Deleting a chunk's layer files: at once ([`ChunkStore::drop_chunk`], the catch-up's
//! `drop_layer`), or, for the layers a merge dropped ([`ChunkStore::drop_merged`]), hidden
//! at once and deleted by the next [`ChunkStore::sync`].
//!
//! A hidden layer is out of the layer map and of the open-file cache, and in the store's
//! `dropped` set: every access by path (`layer_files`, `layer_blocks`, the listings)
//! treats it as absent, so no read, listing, catch-up or usage report sees it. Its files
//! stay on disk until the next sync has made every chunk file durable (the merge's copies
//! among them), as an unlink's link file does (see `link`): after a crash before that, the
//! log replays the merge entries over their sources, which the store, opening, finds as
//! ordinary layers again (the replayed DropMerged hides them again). `used_bytes` counts
//! them until they are deleted (the disk holds them); `layer_bytes` and
//! `volume_layer_bytes` stop counting them at once.
//!
//! A write into a hidden layer cannot come (sequences only grow and the merged ranges are
//! below the volume's), but would find it absent: its files are deleted first, then
//! created anew. Lock order: the open map, then the `dropped` set (never the reverse).

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::ChunkStore;
use super::layout::{FileKey, layer_paths};
use super::open_files::ChunkFiles;
use crate::Result;

type OpenMap = HashMap<FileKey, Arc<ChunkFiles>>;

impl ChunkStore {
    /// Deletes the chunk's files, every layer (hidden ones too) and its link; it then reads
    /// as zeroes.
    pub fn drop_chunk(&self, volume: u64, chunk: u64) -> Result<()> {
        let mut layers = self.layer_map.get((volume, chunk)).upper;
        layers.push(1);
        layers.extend(
            self.dropped_set()
                .iter()
                .filter(|k| (k.0, k.1) == (volume, chunk))
                .map(|k| k.2),
        );
        for layer in layers {
            self.drop_layer_files(volume, chunk, layer)?;
        }
        self.remove_link_file(volume, chunk)?;
        self.forget_unlinked((volume, chunk));
        self.layer_map.forget((volume, chunk));
        self.torn.forget_chunk((volume, chunk));
        Ok(())
    }

    /// Deletes one layer's files (the directory entry made durable by the next sync).
    pub(super) fn drop_layer_files(&self, volume: u64, chunk: u64, layer: u64) -> Result<()> {
        let mut map = self.open_map_write();
        self.delete_layer_files(&mut map, (volume, chunk, layer))?;
        drop(map);
        self.layer_map.remove_layer((volume, chunk), layer);
        Ok(())
    }

    /// Deletes the layer's files now, under the open map's write lock (so that nothing
    /// opens them meanwhile), and forgets what the store knew of them.
    fn delete_layer_files(&self, map: &mut OpenMap, key: FileKey) -> io::Result<()> {
        let (volume, chunk, layer) = key;
        let cached = map.remove(&key);
        // Wait for in-flight users of the cached handles before deleting under them.
        let _guard = cached.as_ref().map(|f| f.write_guard());
        let (data, crcs) = layer_paths(&self.volume_dir(volume), chunk, layer);
        let mut removed = false;
        for p in [&data, &crcs] {
            match std::fs::remove_file(p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.dropped_set().remove(&key);
        if let Some(bytes) = self.alloc_map().remove(&key) {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.torn.forget_layer(key);
        // Only a directory an entry left needs its fsync: a chunk this store never had
        // (a deleted volume's chunk mapped here, never written) may have no directory,
        // whose fsync would fail the sync.
        if removed {
            self.dirs_map().insert(self.volume_dir(volume));
        }
        Ok(())
    }

    /// Hides layers of the chunk from every access at once; the next sync deletes their
    /// files (see the module doc). Idempotent.
    pub(super) fn hide_layers(&self, volume: u64, chunk: u64, layers: &[u64]) {
        for &layer in layers {
            let key = (volume, chunk, layer);
            let cached = {
                let mut map = self.open_map_write();
                self.dropped_set().insert(key);
                map.remove(&key)
            };
            // Readers holding the handles finish on files that still exist; dirty pages of
            // them need no sync: the files go, and a crash before that replays their writes.
            drop(cached);
            self.layer_map.remove_layer((volume, chunk), layer);
        }
    }

    /// The hidden layers so far, whose files a sync starting now deletes.
    pub(super) fn dropped_now(&self) -> Vec<FileKey> {
        self.dropped_set().iter().copied().collect()
    }

    /// Deletes the files of the hidden layers `keys` (taken by [`ChunkStore::dropped_now`]
    /// when the sync began, so after its fdatasyncs; the deletions are made durable by its
    /// directory fsyncs) still hidden.
    pub(super) fn remove_dropped(&self, keys: &[FileKey]) -> Result<()> {
        for &key in keys {
            let mut map = self.open_map_write();
            if self.is_dropped(key) {
                self.delete_layer_files(&mut map, key)?;
            }
        }
        Ok(())
    }

    /// Whether the layer is hidden, its files waiting for the next sync.
    pub(super) fn is_dropped(&self, key: FileKey) -> bool {
        let dropped = self.dropped_set();
        !dropped.is_empty() && dropped.contains(&key)
    }

    /// For `open_files`, under the open map's write lock `map`: whether the layer must be
    /// taken as absent (hidden, and not to be created). A hidden layer to create has its
    /// files deleted first (see the module doc).
    pub(super) fn absent_for_open(
        &self,
        map: &mut OpenMap,
        key: FileKey,
        create: bool,
    ) -> io::Result<bool> {
        if !self.is_dropped(key) {
            return Ok(false);
        }
        if !create {
            return Ok(true);
        }
        self.delete_layer_files(map, key)?;
        Ok(false)
    }

    /// The hidden layers, for the listings to leave out.
    pub(super) fn dropped_keys(&self) -> HashSet<FileKey> {
        self.dropped_set().clone()
    }

    fn dropped_set(&self) -> MutexGuard<'_, HashSet<FileKey>> {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner())
    }
}
