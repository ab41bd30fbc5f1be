//! [`ChunkStore`]: the node's chunk files, every 4 KiB block guarded by a CRC32C.
//!
//! Owns `<dir>/<volume:016x>/<chunk:08x>.dat` (sparse data, block `b` at offset `b * 4096`)
//! and its sidecar `<chunk:08x>.crc` (the CRC32C of block `b`, little-endian, at offset
//! `b * 4`). A stored 0 with an all-zero block means "never written" (a sparse hole in both
//! files), so unwritten ranges cost nothing and still verify. Those are the chunk's layer 1;
//! snapshots add layers `<chunk:08x>.L<layer:08x>.dat/.crc` of the same format, and a clone's
//! chunk a `<chunk:08x>.link` to the chunk it reads through to (see `layers`). Every layer
//! is held to what this doc says of the files: the open-file budget, sync, writeback,
//! torn blocks, replay mode.
//!
//! Writes are plain `pwrite`s with no fsync (exceptions: a link is durable when made, and
//! a RESTORED link's unlink, a dropped chunk's link deletion, a partial write over a block its layer holds as zero syncs its data first, a hydrate that
//! filled a block syncs layer 1; see `link`, `place`, `hydrate`): the log is the write-ahead
//! log, and the caller calls [`ChunkStore::sync`] before compacting it. Writeback starts
//! after each batch ([`ChunkStore::start_writeback`]): a steady stream, not a burst at each
//! sync. After a crash a block and its checksum may disagree until the log replay rewrites
//! them ([`ChunkStore::set_replaying`] lets it read-modify-write such torn blocks, never a
//! poisoned one). Reads always verify; a partial write over a block failing its checksum,
//! or a whole-chunk copy of one (merge, flatten, rollback), still applies, storing it with
//! a *poisoned* checksum so that it keeps failing (see `write`). Knows nothing of Raft.
//!
//! A failed fdatasync is [`Error::Fatal`], for that sync and every later one of the store:
//! the kernel may have dropped the dirty pages and marked them clean, so a retry would
//! "succeed" without writing them (Postgres' "fsyncgate"). The node must stop, as after a
//! failed log fsync. Syncs run one at a time, none while another's is in flight.
//!
//! This file is the store's API (read, write, zero, sync, list, verify); beside it: `layout`
//! the on-disk names and checksum format, `sys` the system calls on chunk files, `open_files`
//! the cache of open files (one entry per layer of a chunk) and its side of the node's
//! [`FileBudget`] (`budget`), `write` the layer-1 write path (block math, read-modify-write,
//! data then checksums), `torn` the blocks a full disk left torn, `layers` the API of snapshots
//! and clones (sequenced writes, reads as of a snapshot, links, changed blocks), `flatten` the
//! copies inside a chunk's family (flatten, rollback), `hydrate` a restored chunk's fill,
//! `merge` joining the layers of a deleted snapshot, `dropped` deleting layer files
//! (`drop_chunk` at once, a merge's dropped layers hidden until the next sync), `layer_copy`
//! the catch-up's raw access to one layer, `layout` also the layers' vocabulary, `layer_map`
//! which chunks have layers or a parent, `resolve` reading through layers and parents, `place`
//! writing whole blocks into one layer, `link` the link file, `scan` a scrubber's view of a
//! chunk's layers (blocks classified, never failing on a bad one).

mod budget;
mod dropped;
mod flatten;
mod hydrate;
mod layer_copy;
mod layer_map;
#[cfg(test)]
mod layer_tests;
mod layers;
mod layout;
mod link;
mod merge;
#[cfg(test)]
mod merge_tests;
mod open_files;
mod place;
mod resolve;
mod scan;
mod sys;
#[cfg(test)]
mod tests;
mod torn;
#[cfg(test)]
mod unlink_tests;
mod write;

pub use budget::{BudgetStats, DEFAULT_OPEN_CHUNKS, FileBudget, MAX_OPEN_CHUNKS};
pub use dropped::DropPin;
pub use hydrate::FillsExcluded;
pub use layers::{BlockKind, LayerKey, MergeRange, RESTORED, layer_of};
pub use layout::{BLOCK_SIZE, MAX_CHUNK};
pub use scan::{ChunkLayers, Scanned, block_hash};

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use crate::{Error, Result, is_no_space, is_out_of_descriptors};
use layer_map::LayerMap;
use layout::{
    CRC_LEN, FileKey, FileKind, Key, block_ok, chunk_files, layer_paths, link_path, stored_crc,
};
use open_files::ChunkFiles;
use sys::{Zeroing, fdatasync, read_full_at, start_writeback, sync_chunk_dir};
use torn::TornBlocks;

/// Blocks read at a time by [`ChunkStore::verify_blocks`] (1 MiB).
const VERIFY_PIECE: u64 = 256;

/// The chunk files of one data directory. `Send + Sync`; caches open file handles.
pub struct ChunkStore {
    dir: PathBuf,
    budget: Arc<FileBudget>,
    /// Open files, per layer of a chunk.
    open: RwLock<HashMap<FileKey, Arc<ChunkFiles>>>,
    /// Which chunks have layers above 1 or a parent.
    layer_map: LayerMap,
    replaying: AtomicBool,
    /// Allocated bytes per layer of a chunk as last measured (at open, and at each sync).
    alloc: Mutex<HashMap<FileKey, u64>>,
    used: AtomicU64,
    /// Files written since the last [`ChunkStore::start_writeback`].
    unstarted: Mutex<Vec<Arc<ChunkFiles>>>,
    /// Directories with entries created since the last sync.
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    /// Held for the whole of a [`ChunkStore::sync`], so that a sync never finds a file clean
    /// while another sync's fdatasync of it is still in flight (or while the budget closes a
    /// dirty file, see [`FileBudget`]). Holds the first fdatasync failure, after which every
    /// sync fails (see the module doc).
    sync_failure: Mutex<Option<String>>,
    /// Blocks whose data and checksum may disagree because a write or zeroing of them failed
    /// part way for want of space (the entry will be applied again).
    torn: TornBlocks,
    /// Blocks written with a poisoned checksum (see `write`), since the store opened.
    poisoned: AtomicU64,
    /// Dirty chunks the budget took out of the open map to close them: still open, they are
    /// made durable and closed by the next [`ChunkStore::sync`] (or at once by
    /// [`ChunkStore::flush_closing`] when the process is out of descriptors), never on the
    /// caller's thread.
    closing: Mutex<Vec<Arc<ChunkFiles>>>,
    /// Chunks unlinked whose link file the next sync deletes (see `link`); held while a
    /// link file is written, so that a sync never deletes a new link.
    unlinked: Mutex<HashSet<Key>>,
    /// Links cut while replaying, still read through by replayed partial writes (see
    /// `link`); forgotten when the replay ends.
    replay_links: Mutex<HashMap<Key, (u64, u64)>>,
    /// Held by a hydrate from start to end, and by the log's applier around its entries
    /// ([`ChunkStore::try_exclude_fills`]): a fill outside the log never interleaves.
    fills: Mutex<()>,
    /// Layers a merge dropped: hidden, their files deleted by the next sync (see `dropped`).
    dropped: Mutex<HashSet<FileKey>>,
    /// How many layers `dropped` holds: a store with none takes no lock to know.
    dropped_count: AtomicUsize,
    /// [`DropPin`]s held: while any is, no sync deletes a hidden layer's files.
    drop_pins: Arc<AtomicUsize>,
}

impl ChunkStore {
    /// Opens (creating if missing) the chunk directory `dir` and measures what it holds,
    /// with a budget of its own of [`DEFAULT_OPEN_CHUNKS`] open chunks.
    pub fn open(dir: &Path) -> Result<Arc<ChunkStore>> {
        ChunkStore::open_in(dir, &FileBudget::new(DEFAULT_OPEN_CHUNKS))
    }

    /// As [`ChunkStore::open`], its open chunks counted against `budget` (shared with the
    /// node's other stores).
    pub fn open_in(dir: &Path, budget: &Arc<FileBudget>) -> Result<Arc<ChunkStore>> {
        std::fs::create_dir_all(dir)?;
        let mut alloc: HashMap<FileKey, u64> = HashMap::new();
        let layer_map = LayerMap::default();
        let mut bases = HashSet::new();
        let mut shapes = Vec::new();
        for (key, kind, f) in chunk_files(dir)? {
            let (volume, chunk, layer) = key;
            if kind == FileKind::Link {
                let parent = link::read_link(&f.path(), volume, chunk)?;
                shapes.push(((volume, chunk), Some(parent), layer));
                continue;
            }
            if layer == 1 {
                bases.insert((volume, chunk));
            } else {
                shapes.push(((volume, chunk), None, layer));
            }
            *alloc.entry(key).or_default() += f.metadata()?.blocks() * 512;
        }
        for (key, parent, layer) in shapes {
            let base = || bases.contains(&key);
            match parent {
                Some(parent) => layer_map.set_link(key, Some(parent), base),
                None => layer_map.add_layer(key, layer, base),
            }
        }
        let used = alloc.values().sum();
        let store = Arc::new(ChunkStore {
            dir: dir.to_path_buf(),
            budget: budget.clone(),
            open: RwLock::new(HashMap::new()),
            layer_map,
            replaying: AtomicBool::new(false),
            alloc: Mutex::new(alloc),
            used: AtomicU64::new(used),
            unstarted: Mutex::default(),
            dirty_dirs: Mutex::new(HashSet::new()),
            sync_failure: Mutex::new(None),
            torn: TornBlocks::default(),
            poisoned: AtomicU64::new(0),
            closing: Mutex::new(Vec::new()),
            unlinked: Mutex::new(HashSet::new()),
            replay_links: Mutex::new(HashMap::new()),
            fills: Mutex::new(()),
            dropped: Mutex::new(HashSet::new()),
            dropped_count: AtomicUsize::new(0),
            drop_pins: Arc::new(AtomicUsize::new(0)),
        });
        budget.register(&store);
        Ok(store)
    }

    /// Writes `data` at `offset` of the chunk's layer 1 (creating it). Partial blocks are
    /// read-modify-written from layer 1 alone; the checksum of every touched block is
    /// updated. This is the raw layer-1 write ([`ChunkStore::write_seq`] with a sequence of
    /// 0 or 1 is the same for a chunk without a parent); volume writes go through
    /// [`ChunkStore::write_seq`].
    pub fn write(&self, volume: u64, chunk: u64, offset: u64, data: &[u8]) -> Result<()> {
        check_range(volume, chunk, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let files = self
            .files(volume, chunk, true)?
            .ok_or_else(|| Error::Io(io::Error::other("chunk files missing after creation")))?;
        let _guard = files.write_guard();
        self.write_locked(&files, volume, chunk, offset, data)?;
        if !files.unstarted.swap(true, Ordering::AcqRel) {
            self.unstarted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(files.clone());
        }
        Ok(())
    }

    /// Starts writeback of every file written since the last call, without waiting for
    /// it. Called after each batch of writes, it makes the disk see a steady stream rather
    /// than a burst at each [`ChunkStore::sync`], which every log fdatasync on the same
    /// disk would queue behind (measured, 4 KiB random writes through NBD: p99 at queue
    /// depth 1 2.4 ms -> 0.8 ms, at depth 32 12 -> 6 ms); one call per file per batch costs
    /// less than one per write. Durability is unchanged: only `sync` makes data durable.
    pub fn start_writeback(&self) {
        let files = std::mem::take(&mut *self.unstarted.lock().unwrap_or_else(|e| e.into_inner()));
        for f in files {
            f.unstarted.store(false, Ordering::Release);
            start_writeback(&f.data);
        }
    }

    /// Reads `len` bytes at `offset` of the chunk's live image (every layer, then its
    /// parent: [`ChunkStore::read_as_of`] with `as_of` 0), verifying the checksum of every
    /// touched block. Never-written ranges (and chunks) read as zeroes.
    pub fn read(&self, volume: u64, chunk: u64, offset: u64, len: u64) -> Result<Bytes> {
        self.read_as_of(volume, chunk, offset, len, 0)
    }

    /// [`ChunkStore::read`] of a plain chunk (layer 1 only, no parent): what a read cost
    /// before layers existed.
    pub(super) fn read_plain(
        &self,
        volume: u64,
        chunk: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        check_range(volume, chunk, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(files) = self.files(volume, chunk, false)? else {
            return Ok(Bytes::from(vec![0u8; len as usize]));
        };
        let _guard = files.read_guard();
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        let nblocks = (last - first + 1) as usize;
        let mut buf = vec![0u8; nblocks * BLOCK_SIZE as usize];
        read_full_at(&files.data, &mut buf, first * BLOCK_SIZE)?;
        let mut crcs = vec![0u8; nblocks * CRC_LEN as usize];
        read_full_at(&files.crcs, &mut crcs, first * CRC_LEN)?;
        for (i, block) in buf.chunks_exact(BLOCK_SIZE as usize).enumerate() {
            let stored = stored_crc(&crcs, i);
            if !block_ok(block, stored) {
                let at = first + i as u64;
                if self.torn.contains((volume, chunk, 1), at) {
                    return Err(Error::Exhausted(format!(
                        "chunk {volume:016x}/{chunk:08x} block {at} is being rewritten after the disk filled"
                    )));
                }
                return Err(corrupt(volume, chunk, at, block, stored));
            }
        }
        let start = (offset - first * BLOCK_SIZE) as usize;
        Ok(Bytes::from(buf).slice(start..start + len as usize))
    }

    /// Makes the range of layer 1 read as zeroes and keeps it provisioned: whole blocks become
    /// allocated zeroes (`FALLOC_FL_ZERO_RANGE`, creating the chunk's files if need be), so
    /// a later write there cannot fail for want of space; partial blocks are
    /// read-modify-written.
    pub fn write_zeroes(&self, volume: u64, chunk: u64, offset: u64, len: u64) -> Result<()> {
        self.zero(volume, chunk, offset, len, Zeroing::Provision)
    }

    /// Makes the range of layer 1 read as zeroes and gives its whole blocks' space back
    /// (punched out, checksum 0: a true hole); partial blocks are read-modify-written. A
    /// chunk without files stays without. The raw layer-1 discard: volume discards go
    /// through [`ChunkStore::discard_seq`], which never re-exposes a parent's data.
    pub fn discard(&self, volume: u64, chunk: u64, offset: u64, len: u64) -> Result<()> {
        self.zero(volume, chunk, offset, len, Zeroing::Punch)
    }

    /// While on, a read-modify-write that meets a block failing its checksum (torn by a
    /// crash; the log replay is about to rewrite it) uses its bytes as they are. Reads still
    /// verify.
    pub fn set_replaying(&self, on: bool) {
        self.replaying.store(on, Ordering::Release);
        if !on {
            self.replay_links_map().clear();
        }
    }

    /// Whether replay mode is on (see [`ChunkStore::set_replaying`]).
    pub fn replaying(&self) -> bool {
        self.replaying.load(Ordering::Acquire)
    }

    /// Makes every file written since the last sync durable (data and checksums), and the
    /// directory entries of files created or deleted since. Call before compacting the log.
    ///
    /// A failed fdatasync returns [`Error::Fatal`], and so does every later call: what it
    /// covered may be lost, so this store's data can never again be reported durable.
    pub fn sync(&self) -> Result<()> {
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(format!(
                "an earlier chunk sync failed: {reason}"
            )));
        }
        // Unlinked before this sync began: their writes are among the files synced below.
        let (unlinked, dropped) = (self.unlinked_now(), self.dropped_now());
        let dirty: Vec<(FileKey, Arc<ChunkFiles>)> = self
            .open_map_read()
            .iter()
            .filter(|(_, f)| f.dirty.load(Ordering::Acquire))
            .map(|(k, f)| (*k, f.clone()))
            .collect();
        for (key, files) in dirty {
            // Cleared first: a write racing with this sync marks it dirty again. A sync racing
            // with this one waits for `sync_failure` rather than find the file clean.
            files.dirty.store(false, Ordering::Release);
            let synced = fdatasync(&files.data).and_then(|()| fdatasync(&files.crcs));
            if let Err(e) = synced {
                files.dirty.store(true, Ordering::Release);
                let reason = format!(
                    "fdatasync of chunk {:016x}/{:08x} layer {} in {} failed: {e}",
                    key.0,
                    key.1,
                    key.2,
                    self.dir.display()
                );
                *failure = Some(reason.clone());
                return Err(Error::Fatal(reason));
            }
            let still_open = self
                .open_map_read()
                .get(&key)
                .is_some_and(|f| Arc::ptr_eq(f, &files));
            if still_open {
                self.measure(key, &files);
            }
        }
        // Taken after the map's dirty files: a file written before this sync began was
        // either collected above (and so could not be taken out of the map) or is here.
        self.sync_closing(&mut failure);
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(reason.clone()));
        }
        self.remove_unlinked(&unlinked)?;
        self.remove_dropped(&dropped, &mut failure)?;
        let dirs: Vec<PathBuf> = self.dirs_map().drain().collect();
        for (i, d) in dirs.iter().enumerate() {
            match sync_chunk_dir(d) {
                Ok(()) => {}
                // The store is being removed under this sync: nothing of it must last.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.dirs_map().extend(dirs[i..].iter().cloned());
                    let why = format!("directory {} to sync is gone: {e}", d.display());
                    return Err(io::Error::new(e.kind(), why).into());
                }
                // The directory could not even be opened: nothing was lost, the next sync
                // tries again (the caller must not count this one as done). Shedding syncs
                // every store's chunks waiting to be closed, this one's too, under each
                // store's sync lock: this store's is released first.
                Err(e) if is_out_of_descriptors(&e) => {
                    self.dirs_map().extend(dirs[i..].iter().cloned());
                    if !cfg!(tessera_unfixed = "shed_deadlock") {
                        drop(failure);
                    }
                    self.budget.shed();
                    return Err(Error::Exhausted(format!(
                        "opening directory {} to sync it: {e}",
                        d.display()
                    )));
                }
                // As with a file: the new names may be lost while the page cache says they
                // are on disk, and a retry could not tell.
                Err(e) => {
                    let reason = format!("fsync of directory {} failed: {e}", d.display());
                    *failure = Some(reason.clone());
                    return Err(Error::Fatal(reason));
                }
            }
        }
        Ok(())
    }

    /// Approximate bytes allocated on disk by chunk files (refreshed at each sync).
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Every chunk with files in this store (a data file of any layer, or a link), sorted.
    pub fn list_chunks(&self) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = self
            .listed_files()?
            .into_iter()
            .filter(|((v, c, _), kind)| match kind {
                FileKind::Data => true,
                FileKind::Crc => false,
                // Unlinked, its file waiting for the next sync to delete it.
                FileKind::Link => !self.is_unlinked((*v, *c)),
            })
            .map(|((v, c, _), _)| (v, c))
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Every chunk file of the store but the hidden layers' (none if its directory is gone).
    fn listed_files(&self) -> Result<Vec<(FileKey, FileKind)>> {
        self.listed_files_with(false)
    }

    /// As [`ChunkStore::listed_files`], with the hidden layers' files too if `hidden`.
    fn listed_files_with(&self, hidden: bool) -> Result<Vec<(FileKey, FileKind)>> {
        let dropped = if hidden {
            HashSet::new()
        } else {
            self.dropped_keys()
        };
        match chunk_files(&self.dir) {
            Ok(files) => Ok(files
                .into_iter()
                .map(|(k, kind, _)| (k, kind))
                .filter(|(k, _)| !dropped.contains(k))
                .collect()),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The stored checksums of `count` blocks from block `first` of a layer (4 bytes each,
    /// as in the sidecar: 0 for a block never written); a layer without files has only
    /// zeroes. `raw`: a hidden layer's files are read while they exist (see `dropped`).
    pub(super) fn layer_checksums(&self, key: FileKey, first: u64, count: u64) -> Result<Bytes> {
        self.stored_checksums(key, false, first, count)
    }

    pub(super) fn stored_checksums(
        &self,
        key: FileKey,
        raw: bool,
        first: u64,
        count: u64,
    ) -> Result<Bytes> {
        let (volume, chunk, _) = key;
        check_range(
            volume,
            chunk,
            first.saturating_mul(BLOCK_SIZE),
            count.saturating_mul(BLOCK_SIZE),
        )?;
        let mut buf = vec![0u8; (count * CRC_LEN) as usize];
        if let Some(files) = self.files_to_read(key, raw)? {
            let _guard = files.read_guard();
            read_full_at(&files.crcs, &mut buf, first * CRC_LEN)?;
        }
        Ok(Bytes::from(buf))
    }

    /// For each of `count` blocks from block `first` of a layer, whether its bytes match its
    /// stored checksum (as a read would find; a never-written block does). Reads the
    /// blocks, `VERIFY_PIECE` at a time.
    pub(super) fn layer_verify_blocks(
        &self,
        key: FileKey,
        first: u64,
        count: u64,
    ) -> Result<Vec<bool>> {
        let (volume, chunk, layer) = key;
        check_range(
            volume,
            chunk,
            first.saturating_mul(BLOCK_SIZE),
            count.saturating_mul(BLOCK_SIZE),
        )?;
        let Some(files) = self.layer_files(volume, chunk, layer, false)? else {
            return Ok(vec![true; count as usize]);
        };
        let mut ok = Vec::with_capacity(count as usize);
        let mut data = vec![0u8; (VERIFY_PIECE * BLOCK_SIZE) as usize];
        let mut crcs = vec![0u8; (VERIFY_PIECE * CRC_LEN) as usize];
        let end = first + count;
        let mut at = first;
        while at < end {
            let n = VERIFY_PIECE.min(end - at);
            let (data, crcs) = (
                &mut data[..(n * BLOCK_SIZE) as usize],
                &mut crcs[..(n * CRC_LEN) as usize],
            );
            {
                let _guard = files.read_guard();
                read_full_at(&files.data, data, at * BLOCK_SIZE)?;
                read_full_at(&files.crcs, crcs, at * CRC_LEN)?;
            }
            for (i, block) in data.chunks_exact(BLOCK_SIZE as usize).enumerate() {
                ok.push(block_ok(block, stored_crc(crcs, i)));
            }
            at += n;
        }
        Ok(ok)
    }

    /// Blocks of a layer as far as its files reach (0 if it has none; `raw` as for
    /// [`ChunkStore::stored_checksums`]). Looks at the files' sizes without opening them:
    /// listing a store's chunks must not churn the open ones.
    pub(super) fn layer_blocks(&self, key: FileKey) -> Result<u64> {
        self.stored_blocks(key, false)
    }

    pub(super) fn stored_blocks(&self, key: FileKey, raw: bool) -> Result<u64> {
        if !raw && self.is_dropped(key) {
            return Ok(0);
        }
        let (volume, chunk, layer) = key;
        let len = |p: &Path| match std::fs::metadata(p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        };
        let (data, crcs) = layer_paths(&self.volume_dir(volume), chunk, layer);
        let data = len(&data)?.div_ceil(BLOCK_SIZE);
        let crcs = len(&crcs)?.div_ceil(CRC_LEN);
        Ok(data.max(crcs))
    }

    fn volume_dir(&self, volume: u64) -> PathBuf {
        self.dir.join(format!("{volume:016x}"))
    }

    /// Whether the chunk's layer 1 has files (a `stat`: for the rare moments a chunk
    /// stops being plain); a failing disk is an error, never "no files".
    fn has_base(&self, volume: u64, chunk: u64) -> io::Result<bool> {
        let (data, _) = layer_paths(&self.volume_dir(volume), chunk, 1);
        Ok(!self.is_dropped((volume, chunk, 1)) && data.try_exists()?)
    }

    fn link_file(&self, volume: u64, chunk: u64) -> PathBuf {
        link_path(&self.volume_dir(volume), chunk)
    }

    fn alloc_map(&self) -> MutexGuard<'_, HashMap<FileKey, u64>> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dirs_map(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.dirty_dirs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_range(volume: u64, chunk: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_CHUNK => Ok(()),
        _ => Err(Error::OutOfRange(format!(
            "chunk {volume:016x}/{chunk:08x}: range {offset}+{len} exceeds the {MAX_CHUNK}-byte chunk limit"
        ))),
    }
}

fn corrupt(volume: u64, chunk: u64, block: u64, bytes: &[u8], stored: u32) -> Error {
    Error::Corrupt(format!(
        "chunk {volume:016x}/{chunk:08x} block {block} (offset {}): checksum {:#010x} does not match stored {stored:#010x}",
        block * BLOCK_SIZE,
        crc32c::crc32c(bytes)
    ))
}

fn io_error(e: io::Error, volume: u64, chunk: u64, what: &str) -> Error {
    if is_no_space(&e) {
        Error::DiskFull(format!("{what} chunk {volume:016x}/{chunk:08x}: {e}"))
    } else {
        Error::Io(e)
    }
}
