//! A chunk's link to its parent: the file `<chunk:08x>.link` beside its layers, naming the
//! chunk of another volume (same index, same store) it reads through to, and as of which
//! snapshot sequence.
//!
//! Format (28 bytes): `TSLINK01`, the parent volume (u64 LE), the parent sequence (u64 LE),
//! the CRC32C of those 24 bytes (u32 LE). Written atomically and durably before
//! [`ChunkStore::link`] returns (temporary file, fdatasync, rename, directory fsync), so a
//! crash never leaves half a link and the log may be compacted past the Link entry at once.
//! A failed fsync there is fatal for the store, as in [`ChunkStore::sync`].
//!
//! [`ChunkStore::unlink`] stops reads going through at once, but the file is deleted (and
//! the deletion made durable) only by the next [`ChunkStore::sync`], after that sync has
//! made every chunk file durable. Deleting it at once could let a crash replay entries that
//! came before the Unlink (a partial write completed from the parent, a flatten) over a
//! chunk that no longer has its parent, and complete them from zeroes; once the files are
//! durable, replaying those entries only meets their own results. Entries after the Unlink
//! are the other side: a partial write completed from the flatten's copy, whose data page a
//! crash lost while its checksum reached the disk, would replay completing from below, no
//! longer the parent. So an Unlink applied while replaying keeps the parent for those
//! completions alone (`replay_links`, forgotten when the replay ends).
//!
//! A RESTORED link is the exception: its Unlink is eager. Its apply makes the chunk's
//! layer files durable (fdatasync), deletes the link file and fsyncs the directory before
//! it returns (a failed fsync is fatal, as in a sync). Lazy, a crash after a sync made the
//! files durable (a trim after the Unlink among them, checksum 0 on a plain chunk) but
//! before the link's deletion was would replay a partial write from before the Unlink
//! over the chunk linked again and that emptied block: Unfilled, refused where the first
//! run applied it, and the group stalls. Eager, entries after the Unlink always replay over
//! a chunk without its link, and those before it never need the link: every block such an
//! entry completed from was filled by a hydrate that made layer 1 durable before it
//! returned, or written by an entry that is replayed too (or, if the Link itself is
//! replayed, linked again and filled again by the replayed hydrates), so no `replay_links`
//! either. `drop_chunk` deletes the link file first, durably, then the chunk's layers: a
//! crash never leaves a link without its layers. Owns the file and its format; reads a
//! layer's files only to make them durable, never deletes or writes them.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::MutexGuard;

use super::layout::{Key, RESTORED};
use super::sys::{fdatasync, sync_chunk_dir};
use super::{ChunkStore, io_error};
use crate::{Error, Result, is_out_of_descriptors};

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

/// fsync of a directory a link was just written in; a failure is fatal for the store (see
/// [`ChunkStore::sync`]), except that the directory could not be opened (nothing lost: the
/// Link entry, applied again, writes it again).
fn sync_link_dir(dir: &Path, failure: &mut Option<String>) -> Result<()> {
    match sync_chunk_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if is_out_of_descriptors(&e) || e.kind() == io::ErrorKind::NotFound => {
            Err(Error::Exhausted(format!(
                "opening directory {} to sync it: {e}",
                dir.display()
            )))
        }
        Err(e) => {
            let reason = format!("fsync of directory {} failed: {e}", dir.display());
            *failure = Some(reason.clone());
            Err(Error::Fatal(reason))
        }
    }
}

fn invalid(msg: String) -> Error {
    Error::Refused(msg)
}

impl ChunkStore {
    pub(super) fn link_chunk(
        &self,
        volume: u64,
        chunk: u64,
        parent: u64,
        parent_seq: u64,
    ) -> Result<()> {
        // In the order a sync takes them: its failure, then the unlinked chunks.
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        let mut unlinked = self.unlinked_set();
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
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(format!(
                "an earlier chunk sync failed: {reason}"
            )));
        }
        let vdir = self.volume_dir(volume);
        if !vdir.exists() {
            std::fs::create_dir_all(&vdir)?;
            // The new volume directory's own entry, durable with the link inside it.
            sync_link_dir(&self.dir, &mut failure)?;
        }
        let path = self.link_file(volume, chunk);
        let tmp = path.with_extension("link.tmp");
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&encode(parent, parent_seq))?;
            Ok(f)
        })();
        let f = written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(e, volume, chunk, "writing the link of")
        })?;
        // A failed fsync is fatal for the store, as for its chunk files: what it covered
        // may be lost while the page cache says it is written.
        if let Err(e) = fdatasync(&f) {
            let reason = format!("fdatasync of {} failed: {e}", tmp.display());
            *failure = Some(reason.clone());
            return Err(Error::Fatal(reason));
        }
        std::fs::rename(&tmp, &path)?;
        sync_link_dir(&vdir, &mut failure)?;
        unlinked.remove(&(volume, chunk));
        self.layer_map
            .set_link((volume, chunk), Some((parent, parent_seq)), || {
                self.has_base(volume, chunk).unwrap_or(false)
            });
        Ok(())
    }

    pub(super) fn unlink_chunk(&self, volume: u64, chunk: u64) -> Result<()> {
        let link = self.layer_map.get((volume, chunk)).link;
        if matches!(link, Some((RESTORED, _))) {
            return self.unlink_restored(volume, chunk);
        }
        if self.replaying()
            && let Some(link) = self.layer_map.get((volume, chunk)).link
        {
            self.replay_links_map().insert((volume, chunk), link);
        }
        let mut unlinked = self.unlinked_set();
        if self.layer_map.is_linked((volume, chunk)) {
            self.layer_map.set_link((volume, chunk), None, || true);
            unlinked.insert((volume, chunk));
        }
        Ok(())
    }

    /// A RESTORED link's eager unlink (see the module doc): the chunk's layers durable, then
    /// the link file deleted and the deletion durable, then reads stop going through. A
    /// retry after an error (a directory that could not be opened) does it all again.
    fn unlink_restored(&self, volume: u64, chunk: u64) -> Result<()> {
        let mut layers = self.layer_map.get((volume, chunk)).upper;
        layers.push(1);
        for layer in layers {
            if let Some(files) = self.layer_files(volume, chunk, layer, false)? {
                self.sync_layer(&files, (volume, chunk, layer), true)?;
            }
        }
        // In the order a sync takes them: its failure, then the unlinked chunks.
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        let mut unlinked = self.unlinked_set();
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(format!(
                "an earlier chunk sync failed: {reason}"
            )));
        }
        let path = self.link_file(volume, chunk);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e, volume, chunk, "deleting the link of")),
        }
        sync_link_dir(&self.volume_dir(volume), &mut failure)?;
        unlinked.remove(&(volume, chunk));
        self.layer_map.set_link((volume, chunk), None, || true);
        Ok(())
    }

    /// The parent a replayed partial write of a chunk unlinked during this replay completes
    /// from (see the module doc).
    pub(super) fn replay_link(&self, key: Key) -> Option<(u64, u64)> {
        let links = self.replay_links_map();
        if links.is_empty() {
            return None;
        }
        links.get(&key).copied()
    }

    pub(super) fn replay_links_map(
        &self,
    ) -> MutexGuard<'_, std::collections::HashMap<Key, (u64, u64)>> {
        self.replay_links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunks unlinked so far, whose link files a sync starting now deletes.
    pub(super) fn unlinked_now(&self) -> Vec<Key> {
        self.unlinked_set().iter().copied().collect()
    }

    /// Deletes the link files of `keys` (taken by [`ChunkStore::unlinked_now`] when the
    /// sync began; the deletions are made durable by its directory fsyncs), unless linked
    /// again since.
    pub(super) fn remove_unlinked(&self, keys: &[Key]) -> Result<()> {
        let mut unlinked = self.unlinked_set();
        for &key in keys {
            if unlinked.contains(&key) && !self.layer_map.is_linked(key) {
                self.remove_link_file(key.0, key.1)?;
                unlinked.remove(&key);
            }
        }
        Ok(())
    }

    /// Forgets a pending unlink of a chunk being dropped.
    pub(super) fn forget_unlinked(&self, key: Key) {
        self.unlinked_set().remove(&key);
    }

    /// Whether the chunk has a link file on disk that reads no longer follow.
    pub(super) fn is_unlinked(&self, key: Key) -> bool {
        self.unlinked_set().contains(&key)
    }

    fn unlinked_set(&self) -> MutexGuard<'_, HashSet<Key>> {
        self.unlinked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the chunk's link file if it has one, the deletion durable before it returns
    /// (a failed directory fsync is fatal, as in a sync).
    pub(super) fn remove_link_durably(&self, volume: u64, chunk: u64) -> Result<()> {
        if !self.link_file(volume, chunk).exists() {
            return Ok(());
        }
        let mut failure = self.sync_failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = failure.as_ref() {
            return Err(Error::Fatal(format!(
                "an earlier chunk sync failed: {reason}"
            )));
        }
        self.remove_link_file(volume, chunk)?;
        sync_link_dir(&self.volume_dir(volume), &mut failure)
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
