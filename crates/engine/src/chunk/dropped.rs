//! Deleting a chunk's layer files: at once ([`ChunkStore::drop_chunk`], the catch-up's
//! `drop_layer`), or, for the layers a merge dropped ([`ChunkStore::drop_merged`]), hidden
//! at once and deleted by the next [`ChunkStore::sync`].
//!
//! A hidden layer is out of the layer map and of the open-file cache, and in the store's
//! `dropped` set: every access by path (`layer_files`, `layer_blocks`, the listings)
//! treats it as absent, so no read, listing, usage report or copy into this store sees it.
//! What this store serves a peer copying it alone (`served_checksums_in`,
//! `served_blocks_in`, `served_read_in`) still reads it while its files exist: a copy
//! that listed the chunk before the drop must read the layers it listed, or it would clear
//! them and replay the log from before the merge without its sources. (A copy into this
//! store must not see it: it would skip the blocks it holds, then its first write would
//! start the layer anew without them.) Its files stay on disk until the next sync has made every chunk
//! file durable (the merge's copies among them), as an unlink's link file does (see
//! `link`), and while a catch-up holds a [`DropPin`]. After a crash before that, the log
//! replays the merge entries over their sources, which the store, opening, finds as
//! ordinary layers again (the replayed DropMerged hides them again). `used_bytes` counts
//! them until they are deleted (the disk holds them); `layer_bytes` and
//! `volume_layer_bytes` stop counting them at once.
//!
//! The deletion may stop part way (a crash, a failed unlink): per chunk, the hidden layers
//! go in ascending order, each deletion durable (its directory fsynced) before the next
//! layer of the chunk goes, so that the disk only ever lacks a lowest part of them. A
//! replay then finds a frozen merge's target durable and, of its sources, only layers newer
//! than every one deleted (which rewrite their own blocks over the target, as the first run
//! did), and a live merge's target holding everything. Any other order could leave an
//! older source over a target holding a newer one's block, which the replay copies back.
//!
//! All the layers of one drop are hidden together, under the open map's write lock: a
//! reader never skips a hidden layer and then finds an older one of the same drop visible.
//!
//! A write into a hidden layer cannot come (sequences only grow and the merged ranges are
//! below the volume's), but would find it absent: its files are deleted first, then
//! created anew. Lock order: the open map, then the `dropped` set (never the reverse).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};

use super::ChunkStore;
use super::layout::{FileKey, layer_paths};
use super::open_files::ChunkFiles;
use super::sys::{open_rw, sync_chunk_dir};
use crate::{Error, Result, is_out_of_descriptors};

/// Keeps the files of the store's hidden layers on disk while held: a catch-up serving a
/// copy holds one, so that the layers it listed before a drop stay readable through the
/// `served_` reads (see the module doc). Taken by [`ChunkStore::pin_dropped`]; the first sync
/// after the last one is released deletes them.
#[must_use = "the hidden layers may be deleted as soon as the pin is dropped"]
pub struct DropPin(Arc<AtomicUsize>);

impl Drop for DropPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

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
        // The link first, its deletion durable: a crash part way must never leave a link
        // without its layers (the chunk would read its parent, or the backup, where the
        // replayed drop and the entries after it expect nothing).
        self.remove_link_durably(volume, chunk)?;
        self.forget_unlinked((volume, chunk));
        for layer in layers {
            self.drop_layer_files(volume, chunk, layer)?;
        }
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
    /// Whether a file was there to delete.
    fn delete_layer_files(&self, map: &mut OpenMap, key: FileKey) -> io::Result<bool> {
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
        self.unhide(key);
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
        Ok(removed)
    }

    /// Hides layers of the chunk from every access at once, all of them in one step (see
    /// the module doc); the next sync deletes their files. Idempotent.
    pub(super) fn hide_layers(&self, volume: u64, chunk: u64, layers: &[u64]) {
        let cached: Vec<Arc<ChunkFiles>> = {
            let mut map = self.open_map_write();
            let mut dropped = self.dropped_set();
            for &layer in layers {
                dropped.insert((volume, chunk, layer));
            }
            self.dropped_count.store(dropped.len(), Ordering::Release);
            drop(dropped);
            self.layer_map.remove_layers((volume, chunk), layers);
            let cached = layers
                .iter()
                .filter_map(|&l| map.remove(&(volume, chunk, l)));
            cached.collect()
        };
        // Readers holding the handles finish on files that still exist; dirty pages of
        // them need no sync: the files go, and a crash before that replays their writes.
        drop(cached);
    }

    /// The hidden layers so far, whose files a sync starting now deletes.
    pub(super) fn dropped_now(&self) -> Vec<FileKey> {
        self.dropped_set().iter().copied().collect()
    }

    /// Deletes the files of the hidden layers `keys` (taken by [`ChunkStore::dropped_now`]
    /// when the sync began, so after its fdatasyncs) still hidden, unless a [`DropPin`] is
    /// held: per chunk in ascending layer order, each deletion made durable before the
    /// next (see the module doc). A failed directory fsync is recorded in `failure` (the
    /// store's sync lock), as the sync's own.
    pub(super) fn remove_dropped(
        &self,
        keys: &[FileKey],
        failure: &mut Option<String>,
    ) -> Result<()> {
        if self.drop_pins.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        // A deletion whose directory fsync failed in an earlier sync (out of descriptors)
        // is made durable before any later one.
        let mut owed: Vec<PathBuf> = {
            let dirs = self.dirs_map();
            let volume_dirs = keys.iter().map(|k| self.volume_dir(k.0));
            volume_dirs.filter(|d| dirs.contains(d)).collect()
        };
        owed.dedup();
        for dir in &owed {
            self.sync_dropped_dir(dir, failure)?;
        }
        for (i, &key) in keys.iter().enumerate() {
            fail::fail_point!("chunk::remove_dropped", |_| Err(Error::Io(
                io::Error::other(
                    "deletion failure injected by the chunk::remove_dropped fail point"
                )
            )));
            let removed = {
                let mut map = self.open_map_write();
                self.is_dropped(key) && self.delete_layer_files(&mut map, key)?
            };
            let next_of_chunk = keys
                .get(i + 1)
                .is_some_and(|n| (n.0, n.1) == (key.0, key.1));
            if removed && next_of_chunk {
                self.sync_dropped_dir(&self.volume_dir(key.0), failure)?;
            }
        }
        Ok(())
    }

    /// Makes the deletions in `dir` durable, as the sync's own directory fsyncs do: failed,
    /// fatal, unless the directory is gone (the store is being removed) or could not even
    /// be opened (out of descriptors; it stays owed, see `remove_dropped`).
    fn sync_dropped_dir(&self, dir: &Path, failure: &mut Option<String>) -> Result<()> {
        match sync_chunk_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e.into()),
            Err(e) if is_out_of_descriptors(&e) => Err(Error::Exhausted(format!(
                "opening directory {} to sync it: {e}",
                dir.display()
            ))),
            Err(e) => {
                let reason = format!("fsync of directory {} failed: {e}", dir.display());
                *failure = Some(reason.clone());
                Err(Error::Fatal(reason))
            }
        }
    }

    /// Keeps the hidden layers' files on disk until the pin is dropped (see [`DropPin`]).
    pub fn pin_dropped(&self) -> DropPin {
        self.drop_pins.fetch_add(1, Ordering::AcqRel);
        DropPin(self.drop_pins.clone())
    }

    /// The files of a layer to read, as `layer_files` without creating; with `raw` (what a
    /// peer copying this store is served), also those of a hidden layer while they exist,
    /// opened apart from the open-file cache (which must not hold a hidden layer).
    pub(super) fn files_to_read(&self, key: FileKey, raw: bool) -> Result<Option<Arc<ChunkFiles>>> {
        let (volume, chunk, layer) = key;
        if !raw || !self.is_dropped(key) {
            return self.layer_files(volume, chunk, layer, false);
        }
        let (data, crcs) = layer_paths(&self.volume_dir(volume), chunk, layer);
        let open = |p: &std::path::Path| match open_rw(p, false) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(super::io_error(
                e,
                volume,
                chunk,
                "opening a hidden layer of",
            )),
        };
        let (Some(data), Some(crcs)) = (open(&data)?, open(&crcs)?) else {
            return Ok(None);
        };
        Ok(Some(self.new_files(data, crcs)))
    }

    /// Whether the layer is hidden, its files waiting for the next sync.
    pub(super) fn is_dropped(&self, key: FileKey) -> bool {
        // Lock-free for a store with no hidden layer (every plain open-cache miss asks).
        self.dropped_count.load(Ordering::Acquire) > 0 && self.dropped_set().contains(&key)
    }

    /// The layer is no longer hidden (its files deleted).
    fn unhide(&self, key: FileKey) {
        let mut dropped = self.dropped_set();
        dropped.remove(&key);
        self.dropped_count.store(dropped.len(), Ordering::Release);
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
