//! The log's segment files: rolling into a new segment (a recycled file, the preallocated
//! spare, or one zero-filled now), and recycling the oldest segments once everything in
//! them is obsolete.
//!
//! Owns which files are part of the log (the segments of the `Book`),
//! the files kept for reuse, and the durability of their names (the directory is fsynced
//! before a record goes into a new segment). Never writes a record: that is the batch
//! path's, in `writer.rs`. Never recycles the current segment, nor a segment out of order.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::warn;

use super::super::record::Record;
use super::super::replay::{free_path, segment_path};
use super::super::state::SegmentMeta;
use super::{Current, Writer, fatal};
use crate::{Error, Result, is_no_space, is_out_of_descriptors};

/// Obsolete segment files kept for reuse; more are deleted.
const MAX_FREE: usize = 2;

impl Writer {
    /// Starts a new segment of at least `need` bytes: a recycled file, the preallocated
    /// spare, or (failing both) one zero-filled now. The directory is fsynced before any
    /// record goes in, so an acknowledged record is never in a file under a stale name.
    ///
    /// Running out of descriptors is a wait like a full disk ([`Error::Exhausted`]), never
    /// a failure: nothing changed, the same roll is tried again. Only a failed fsync is
    /// fatal.
    pub(super) fn roll(&mut self, need: u64) -> Result<()> {
        let seq = self.next_seq;
        let path = segment_path(&self.dir, seq);
        let len = need.max(self.opts.segment_size);
        let standard = len == self.opts.segment_size;
        let reuse = if standard {
            self.free.pop().or_else(|| self.prealloc.take())
        } else {
            None
        };
        let file = match reuse {
            Some(from) => {
                // Opened before it is renamed: a refused open leaves it free for later.
                let file = open_segment(&from);
                if file.is_err() {
                    self.free.push(from.clone());
                }
                let file = file?;
                std::fs::rename(&from, &path)?;
                file
            }
            None => {
                let tmp = self.dir.join(format!("{seq:016x}.tmp"));
                let mut created = create_zeroed(&tmp, len);
                if created.as_ref().is_err_and(is_no_space) && !standard && self.drop_free() {
                    // An oversized segment can never be a recycled file: the files kept
                    // for reuse give it their room instead.
                    created = create_zeroed(&tmp, len);
                }
                let file = created.map_err(|e| {
                    if is_no_space(&e) {
                        Error::DiskFull(format!("preallocating log segment {}: {e}", tmp.display()))
                    } else if is_out_of_descriptors(&e) {
                        exhausted(&tmp, &e)
                    } else {
                        Error::Io(e)
                    }
                })?;
                std::fs::rename(&tmp, &path)?;
                file
            }
        };
        let dir = match open_dir(&self.dir) {
            Ok(dir) => dir,
            Err(e) => {
                // Not part of the log yet: back to the files kept for reuse (or gone), so
                // the next try starts over cleanly.
                let to = free_path(&self.dir, seq);
                if standard && std::fs::rename(&path, &to).is_ok() {
                    self.free.push(to);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        dir.sync_all()
            .map_err(|e| fatal(&self.dir, "fsync directory", &e))?;
        self.next_seq += 1;
        self.book.segments.insert(seq, SegmentMeta::new(path, len));
        self.current = Some(Current {
            seq,
            file,
            offset: 0,
            len,
        });
        if self.free.is_empty() {
            self.prealloc
                .request(self.dir.join("prealloc.tmp"), self.opts.segment_size);
        }
        Ok(())
    }

    /// Deletes the files kept for reuse (and the spare); true if there was any.
    fn drop_free(&mut self) -> bool {
        let mut dropped = false;
        for path in self.free.drain(..).chain(self.prealloc.take()) {
            match std::fs::remove_file(&path) {
                Ok(()) => dropped = true,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot delete a spare log segment")
                }
            }
        }
        dropped
    }

    /// Latest slot values and compaction marks living in the oldest segments whose entries
    /// are all compacted: re-appended, they stop pinning those segments.
    pub(super) fn reappends(&self) -> Vec<Record> {
        let current = self.current.as_ref().map(|c| c.seq);
        let mut out = Vec::new();
        for (&seq, seg) in &self.book.segments {
            // Noted indexes suffice: the marks making it so go with the re-appends.
            if Some(seq) == current || !self.book.entries_obsolete(seg, false) {
                break;
            }
            if seg.pins > 0 {
                out.extend(self.book.pinned_in(seq));
            }
        }
        out
    }

    /// Drops obsolete segments, oldest first, keeping up to [`MAX_FREE`] files for reuse.
    pub(super) fn recycle(&mut self) {
        let current = self.current.as_ref().map(|c| c.seq);
        while let Some((&seq, seg)) = self.book.segments.first_key_value() {
            if Some(seq) == current || !self.book.is_obsolete(seg) {
                break;
            }
            let result = if seg.len == self.opts.segment_size && self.free.len() < MAX_FREE {
                let to = free_path(&self.dir, seq);
                std::fs::rename(&seg.path, &to).map(|()| Some(to))
            } else {
                std::fs::remove_file(&seg.path).map(|()| None)
            };
            match result {
                Ok(reusable) => {
                    self.free.extend(reusable);
                    self.book.segments.remove(&seq);
                }
                Err(e) => {
                    // Keep it (and every newer one) in the log: dropping segments out of
                    // order could resurrect records a later tombstone overrides.
                    warn!(path = %seg.path.display(), error = %e, "cannot recycle log segment");
                    break;
                }
            }
        }
    }
}

/// Opens a segment file for writing; out of descriptors is [`Error::Exhausted`].
fn open_segment(path: &Path) -> Result<File> {
    OpenOptions::new().write(true).open(path).map_err(|e| {
        if is_out_of_descriptors(&e) {
            exhausted(path, &e)
        } else {
            Error::Io(e)
        }
    })
}

/// Opens the log directory to fsync it. Failing to open it changes nothing: out of
/// descriptors is [`Error::Exhausted`] (a wait), anything else is refused like any
/// failure before a write; only the fsync itself is fatal.
fn open_dir(dir: &Path) -> Result<File> {
    File::open(dir).map_err(|e| {
        if is_out_of_descriptors(&e) {
            exhausted(dir, &e)
        } else {
            Error::Io(e)
        }
    })
}

fn exhausted(path: &Path, e: &io::Error) -> Error {
    Error::Exhausted(format!("opening {}: {e}", path.display()))
}

/// Creates `path` (which must not exist) as `len` bytes of written zeros, fsynced: later
/// overwrites then change no block allocation, so fdatasync needs no metadata.
/// The `log::no_space` fail point makes it fail with ENOSPC (a full disk) in tests.
pub(super) fn create_zeroed(path: &Path, len: u64) -> io::Result<File> {
    const CHUNK: u64 = 1 << 20;
    fail::fail_point!("log::no_space", |_| Err(io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut off = 0;
        while off < len {
            let n = CHUNK.min(len - off) as usize;
            file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        file.sync_all()?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}
