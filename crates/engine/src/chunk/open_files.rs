//! The open-file cache of a chunk store: [`ChunkFiles`], the two open files of one layer of
//! a chunk, opened on first use and kept in the store's map keyed by (volume, chunk, layer)
//! (each layer counts as one open chunk against the budget), and the store's side of the node's
//! [`FileBudget`]: which idle chunks it may close, and the dirty ones it hands to the next
//! sync to close.
//!
//! Never waits for an fdatasync on the caller's thread, except when the process is out of
//! descriptors ([`FileBudget::shed`]); never closes a chunk somebody holds a handle to.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::debug;

use super::layout::{FileKey, layer_paths};
use super::sys::{fdatasync, open_rw};
use super::{ChunkStore, FileBudget, io_error};
use crate::{Error, Result, is_out_of_descriptors};

/// The open files of one layer of a chunk.
pub(super) struct ChunkFiles {
    pub(super) data: File,
    pub(super) crcs: File,
    /// Writers exclusive, readers shared: a reader must never see a block and its checksum
    /// from different writes.
    pub(super) lock: RwLock<()>,
    /// Written since the last [`ChunkStore::sync`].
    pub(super) dirty: AtomicBool,
    /// Written since the last [`ChunkStore::start_writeback`] (and queued for it).
    pub(super) unstarted: AtomicBool,
    /// When last used, on the budget's clock.
    pub(super) used: AtomicU64,
    budget: Arc<FileBudget>,
}

/// A store dropped (its group removed) with dirty chunks still waiting for a sync to close
/// them: they close now, unsynced (nothing of a removed group must last), and leave the
/// budget's closing count, which would otherwise keep asking for syncs for good.
impl Drop for ChunkStore {
    fn drop(&mut self) {
        let waiting = self
            .closing
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if !cfg!(tessera_unfixed = "closing_leak") {
            self.budget.closed_dirty(waiting);
        }
    }
}

impl Drop for ChunkFiles {
    fn drop(&mut self) {
        self.budget.released();
    }
}

impl ChunkFiles {
    pub(super) fn read_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkStore {
    /// The files of the chunk's layer 1 (see [`ChunkStore::layer_files`]).
    pub(super) fn files(
        &self,
        volume: u64,
        chunk: u64,
        create: bool,
    ) -> Result<Option<Arc<ChunkFiles>>> {
        self.layer_files(volume, chunk, 1, create)
    }

    /// The files of one layer of the chunk, opened (and, with `create`, created) on first
    /// use. Out of descriptors, idle chunks are closed to make room and the open retried
    /// once; if that is not enough, [`Error::Exhausted`]: the caller waits and retries,
    /// nothing is lost.
    pub(super) fn layer_files(
        &self,
        volume: u64,
        chunk: u64,
        layer: u64,
        create: bool,
    ) -> Result<Option<Arc<ChunkFiles>>> {
        let key = (volume, chunk, layer);
        if let Some(f) = self.open_map_read().get(&key) {
            f.used.store(self.budget.now(), Ordering::Relaxed);
            return Ok(Some(f.clone()));
        }
        let mut shed = false;
        loop {
            match self.open_files(key, create) {
                Err(e) if is_out_of_descriptors(&e) && !shed => {
                    debug!(volume, chunk, "out of descriptors: closing idle chunks");
                    self.budget.shed();
                    shed = true;
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    return Err(Error::Exhausted(format!(
                        "opening chunk {volume:016x}/{chunk:08x}: {e} ({} chunks open)",
                        self.budget.stats().open
                    )));
                }
                Err(e) => return Err(io_error(e, volume, chunk, "opening")),
                Ok(opened) => {
                    if opened.as_ref().is_some_and(|(_, new)| *new) {
                        self.budget.make_room();
                    }
                    return Ok(opened.map(|(f, _)| f));
                }
            }
        }
    }

    /// [`ChunkStore::files`] without the retry: the files and whether they were opened now.
    pub(super) fn open_files(
        &self,
        key: FileKey,
        create: bool,
    ) -> io::Result<Option<(Arc<ChunkFiles>, bool)>> {
        let (volume, chunk, layer) = key;
        // Opened under the map's write lock, so that a concurrent drop_chunk can never leave
        // a handle to a deleted file in the cache.
        let mut map = self.open_map_write();
        if let Some(f) = map.get(&key) {
            f.used.store(self.budget.now(), Ordering::Relaxed);
            return Ok(Some((f.clone(), false)));
        }
        if self.absent_for_open(&mut map, key, create)? {
            return Ok(None);
        }
        let (data_path, crc_path) = layer_paths(&self.volume_dir(volume), chunk, layer);
        let data = match open_rw(&data_path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let vdir = self.volume_dir(volume);
                if !vdir.exists() {
                    std::fs::create_dir_all(&vdir)?;
                    self.dirs_map().insert(self.dir.clone());
                }
                self.dirs_map().insert(vdir);
                let data = open_rw(&data_path, true)?;
                // Known from now on: reads of the chunk look in this layer.
                self.layer_map.add_layer((volume, chunk), layer, || {
                    self.has_base(volume, chunk).unwrap_or(false)
                });
                data
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let crcs = open_rw(&crc_path, true)?;
        // Volume I/O is random: no speculative readahead, which would also fill the page
        // cache with large folios that make later small overwrites expensive (see
        // `WRITE_PIECE`). Advice only; nothing depends on it.
        // SAFETY: posix_fadvise reads its integer arguments; the descriptor is owned by
        // `data`, open for the duration of the call.
        unsafe {
            libc::posix_fadvise(data.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
        }
        let files = self.new_files(data, crcs);
        map.insert(key, files.clone());
        Ok(Some((files, true)))
    }

    /// Open files of a layer, counted against the budget until dropped.
    pub(super) fn new_files(&self, data: File, crcs: File) -> Arc<ChunkFiles> {
        self.budget.opened();
        Arc::new(ChunkFiles {
            data,
            crcs,
            lock: RwLock::new(()),
            dirty: AtomicBool::new(false),
            unstarted: AtomicBool::new(false),
            used: AtomicU64::new(self.budget.now()),
            budget: self.budget.clone(),
        })
    }

    /// Calls `f(key, dirty, last used)` for every open chunk nobody uses now.
    pub(super) fn idle_chunks(&self, mut f: impl FnMut(FileKey, bool, u64)) {
        for (k, files) in self.open_map_read().iter() {
            if Arc::strong_count(files) == 1 {
                f(
                    *k,
                    files.dirty.load(Ordering::Acquire),
                    files.used.load(Ordering::Relaxed),
                );
            }
        }
    }

    /// Takes those of `keys` that are still open and idle out of the open map: clean ones are
    /// closed at once, dirty ones left to the next sync (see `closing`). Never waits for a
    /// sync or an fdatasync. Returns how many it closed at once.
    pub(super) fn close_idle(&self, keys: &[FileKey]) -> usize {
        let taken: Vec<(FileKey, Arc<ChunkFiles>)> = {
            let mut map = self.open_map_write();
            let taken: Vec<(FileKey, Arc<ChunkFiles>)> = keys
                .iter()
                .filter_map(|k| {
                    let idle = map.get(k).is_some_and(|f| Arc::strong_count(f) == 1);
                    if idle {
                        map.remove(k).map(|f| (*k, f))
                    } else {
                        None
                    }
                })
                .collect();
            // Handed over before the map's lock is released: a sync collects the map's dirty
            // files, then `closing`, so a dirty file is always in one of the two for it
            // (taken out, then pushed later, a sync in between would miss it and yet report
            // its writes durable, and delete the sources of a merge it was the target of).
            let mut closing = self.closing_list();
            for (_, files) in &taken {
                if files.dirty.load(Ordering::Acquire) {
                    self.budget.handing_over();
                    closing.push(files.clone());
                }
            }
            taken
        };
        // Tests run a sync here: it must find the dirty ones in `closing`.
        fail::fail_point!("chunk::close_idle");
        let mut clean = 0;
        for (key, files) in taken {
            self.measure(key, &files);
            if !files.dirty.load(Ordering::Acquire) {
                clean += 1;
            }
        }
        clean
    }

    /// Makes the dirty chunks taken out for room durable and closes them now, waiting for a
    /// sync in progress: for a process out of descriptors.
    pub(super) fn flush_closing(&self) {
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        self.sync_closing(&mut failure);
    }

    /// Makes the chunks handed over for closing durable and closes every one of them; the
    /// first failed fdatasync is recorded in `failure` (the store's sync lock), after which
    /// nothing of this store is reported durable again, so the rest are only closed.
    /// They leave the budget's closing count before their files close: a status never shows
    /// more closing than open.
    pub(super) fn sync_closing(&self, failure: &mut Option<String>) {
        let closing = std::mem::take(&mut *self.closing_list());
        for files in &closing {
            if failure.is_some() {
                break;
            }
            if let Err(e) = fdatasync(&files.data).and_then(|()| fdatasync(&files.crcs)) {
                *failure = Some(format!(
                    "fdatasync of a chunk closed for room in {} failed: {e}",
                    self.dir.display()
                ));
            }
        }
        self.budget.closed_dirty(closing.len());
    }

    pub(super) fn closing_list(&self) -> MutexGuard<'_, Vec<Arc<ChunkFiles>>> {
        self.closing.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn open_map_read(&self) -> RwLockReadGuard<'_, HashMap<FileKey, Arc<ChunkFiles>>> {
        self.open.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn open_map_write(&self) -> RwLockWriteGuard<'_, HashMap<FileKey, Arc<ChunkFiles>>> {
        self.open.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkStore {
    /// Records the layer's allocated bytes now (see `ChunkStore::used_bytes`).
    pub(super) fn measure(&self, key: FileKey, files: &ChunkFiles) {
        use std::os::unix::fs::MetadataExt;
        let size = |f: &std::fs::File| f.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        let now = size(&files.data) + size(&files.crcs);
        let before = self.alloc_map().insert(key, now).unwrap_or(0);
        if now >= before {
            self.used.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(before - now, Ordering::Relaxed);
        }
    }
}
