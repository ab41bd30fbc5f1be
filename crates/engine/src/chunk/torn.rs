//! [`TornBlocks`]: the blocks of a chunk store whose data and checksum may disagree because
//! a write or zeroing of them failed part way for want of space.
//!
//! The entry that failed will be applied again and rewrite them whole; until then a
//! read-modify-write may use their bytes as they are, and a read reports them as
//! [`Error::Exhausted`] (retry later), never as corrupt. Owns only the set; never reads or
//! writes a file.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::{FileKey, Key};
use crate::{Error, Result};

/// The torn blocks of one store, by chunk layer and block index.
#[derive(Default)]
pub(super) struct TornBlocks {
    set: Mutex<HashSet<(FileKey, u64)>>,
    /// Whether `set` is not empty: the common case (none) costs no lock.
    any: AtomicBool,
}

impl TornBlocks {
    /// Records the outcome of writing `blocks`: after a failure part way (a full disk
    /// between the data and its checksums) they are torn until written again whole; after a
    /// success they no longer are. A torn block is tolerated by the next read-modify-write
    /// (the same entry applied again rewrites it; after a crash, the replay does) and read
    /// as [`Error::Exhausted`], never as corrupt: nothing was acknowledged that it lost.
    pub(super) fn settle<T>(
        &self,
        key: FileKey,
        blocks: std::ops::Range<u64>,
        outcome: &Result<T>,
    ) {
        match outcome {
            // Any other failure is an I/O error that stops the node: nothing to retry.
            Err(Error::DiskFull(_)) => {
                let mut torn = self.set.lock().unwrap_or_else(|e| e.into_inner());
                torn.extend(blocks.map(|b| (key, b)));
                self.any.store(true, Ordering::Release);
            }
            Err(_) => {}
            Ok(_) if self.any.load(Ordering::Acquire) => {
                let mut torn = self.set.lock().unwrap_or_else(|e| e.into_inner());
                for b in blocks {
                    torn.remove(&(key, b));
                }
                self.any.store(!torn.is_empty(), Ordering::Release);
            }
            Ok(_) => {}
        }
    }

    /// Whether `block` of the chunk's layer is torn.
    pub(super) fn contains(&self, key: FileKey, block: u64) -> bool {
        !cfg!(tessera_unfixed = "torn_enospc")
            && self.any.load(Ordering::Acquire)
            && self
                .set
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(key, block))
    }

    /// Forgets every torn block of a chunk whose files are deleted.
    pub(super) fn forget_chunk(&self, key: Key) {
        self.forget(|k| (k.0, k.1) == key);
    }

    /// Forgets every torn block of a chunk's layer whose files are deleted.
    pub(super) fn forget_layer(&self, key: FileKey) {
        self.forget(|k| k == key);
    }

    fn forget(&self, gone: impl Fn(FileKey) -> bool) {
        if self.any.load(Ordering::Acquire) {
            let mut torn = self.set.lock().unwrap_or_else(|e| e.into_inner());
            torn.retain(|(k, _)| !gone(*k));
            self.any.store(!torn.is_empty(), Ordering::Release);
        }
    }
}
