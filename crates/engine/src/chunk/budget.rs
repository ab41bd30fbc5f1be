//! [`FileBudget`]: how many chunks a node keeps open at once, across all its chunk stores.
//!
//! An open chunk holds two descriptors (data and checksums), and a node holds hundreds of
//! thousands of chunks: they cannot all be open. Each layer of a chunk (see
//! `chunk::layers`) is a pair of files of its own and counts here as one open chunk. The budget counts open chunks node-wide and,
//! once past its limit, closes the least recently used idle chunks of any store in one batch
//! (down to seven eighths of the limit, so the scan is paid once per many opens). Clean
//! chunks go first and are closed at once; a dirty one is handed to its store's next
//! [`ChunkStore::sync`], which makes it durable and closes it, so that neither the caller
//! (the thread applying entries) waits for an fdatasync nor can a sync return while
//! something it covers is neither synced nor still open. Only a process that has run out
//! of descriptors ([`FileBudget::shed`]) syncs and closes those at once. A chunk in use (a
//! handle held outside the store's map) is never closed.
//!
//! Chunks handed over still hold their descriptors until that sync: under a stream of writes
//! to ever new chunks they pile up between two periodic syncs. Once they reach an eighth of
//! the limit, [`FileBudget::wants_sync`] tells the caller driving the syncs to start one now,
//! so that they never exceed what accumulates during one sync round (the count is in
//! [`BudgetStats::closing`], for the node's status).
//!
//! Owns the count, the recency clock and the list of stores; each store owns its own map of
//! open files and decides, under its own locks, what it closes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::ChunkStore;

/// Open chunks a budget allows when nothing else says: what 1,024 descriptors afford.
pub const DEFAULT_OPEN_CHUNKS: usize = 384;
/// The most chunks a node keeps open whatever its descriptor limit: past this, the kernel's
/// per-file memory costs more than reopening an idle chunk.
pub const MAX_OPEN_CHUNKS: usize = 32_768;

/// A node-wide limit on open chunks. Shared by every [`ChunkStore`] of the node.
pub struct FileBudget {
    limit: usize,
    open: AtomicUsize,
    /// Of `open`, the dirty chunks handed to a sync to close.
    closing: AtomicUsize,
    clock: AtomicU64,
    closed: AtomicU64,
    stores: Mutex<Vec<Weak<ChunkStore>>>,
    /// One eviction pass at a time; others carry on slightly over the limit.
    evicting: Mutex<()>,
}

/// What a budget holds, for a node's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// Chunks that may be open and not being closed.
    pub limit: usize,
    /// Chunks open now, `closing` included.
    pub open: usize,
    /// Of `open`, the dirty chunks waiting for the next sync to make them durable and close
    /// them.
    pub closing: usize,
    /// Chunks closed to make room, since the budget was made.
    pub closed: u64,
}

impl FileBudget {
    /// A budget of `limit` open chunks (at least 16).
    pub fn new(limit: usize) -> Arc<FileBudget> {
        Arc::new(FileBudget {
            limit: limit.max(16),
            open: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            stores: Mutex::new(Vec::new()),
            evicting: Mutex::new(()),
        })
    }

    /// The budget a process whose descriptor limit is `descriptors` can afford: a quarter of
    /// the descriptors (at least 256) stay for sockets, log segments and the rest; each open
    /// chunk takes two of the others; at most [`MAX_OPEN_CHUNKS`].
    pub fn for_descriptors(descriptors: u64) -> Arc<FileBudget> {
        let d = usize::try_from(descriptors).unwrap_or(usize::MAX);
        let reserve = (d / 4).max(256);
        FileBudget::new((d.saturating_sub(reserve) / 2).min(MAX_OPEN_CHUNKS))
    }

    /// What the budget holds now.
    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            limit: self.limit,
            open: self.open.load(Ordering::Relaxed),
            closing: self.closing.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }

    /// Whether enough dirty chunks wait to be closed that the next [`ChunkStore::sync`]
    /// should start now rather than at its usual time: an eighth of the limit. Closing them
    /// is left to that sync so that nobody applying writes waits for an fdatasync; this
    /// bounds the descriptors they hold meanwhile.
    pub fn wants_sync(&self) -> bool {
        self.closing.load(Ordering::Relaxed) >= self.sync_at()
    }

    /// Dirty chunks waiting to be closed past which [`FileBudget::wants_sync`] says so.
    pub fn sync_at(&self) -> usize {
        self.limit / 8
    }

    pub(super) fn register(&self, store: &Arc<ChunkStore>) {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|s| s.strong_count() > 0);
        stores.push(Arc::downgrade(store));
    }

    /// A recency stamp for a chunk just used.
    pub(super) fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn released(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A dirty chunk is handed to a sync to close (counted before the sync can see it).
    pub(super) fn handing_over(&self) {
        self.closing.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync closed `n` chunks handed to it.
    pub(super) fn closed_dirty(&self, n: usize) {
        self.closing.fetch_sub(n, Ordering::Relaxed);
        self.closed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Open chunks not yet handed over to be closed.
    fn held(&self) -> usize {
        self.open
            .load(Ordering::Relaxed)
            .saturating_sub(self.closing.load(Ordering::Relaxed))
    }

    /// Closes idle chunks if the budget is exceeded. Call with no store lock held.
    pub(super) fn make_room(&self) {
        if self.held() <= self.limit {
            return;
        }
        let Ok(_one) = self.evicting.try_lock() else {
            return;
        };
        self.close_down_to(self.limit - self.limit / 8);
    }

    /// The process ran out of descriptors: closes half of the idle chunks and, waiting for
    /// syncs in progress, makes the dirty ones handed over durable and closes them. Call with
    /// no store lock held.
    pub(super) fn shed(&self) {
        let _one = self.evicting.lock().unwrap_or_else(|e| e.into_inner());
        self.close_down_to(self.held() / 2);
        for s in self.stores() {
            s.flush_closing();
        }
    }

    fn stores(&self) -> Vec<Arc<ChunkStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|s| s.strong_count() > 0);
        stores.iter().filter_map(Weak::upgrade).collect()
    }

    fn close_down_to(&self, target: usize) {
        let held = self.held();
        if held <= target {
            return;
        }
        let stores = self.stores();
        let mut idle = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            s.idle_chunks(|key, dirty, used| idle.push((dirty, used, i, key)));
        }
        // Clean before dirty (closing those costs no fdatasync), oldest first.
        let n = (held - target).min(idle.len());
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n, |&(dirty, used, _, _)| (dirty, used));
        }
        idle.truncate(n);
        idle.sort_unstable_by_key(|&(_, _, store, key)| (store, key));
        for (i, s) in stores.iter().enumerate() {
            let from = idle.partition_point(|c| c.2 < i);
            let to = idle.partition_point(|c| c.2 <= i);
            if from < to {
                let keys: Vec<_> = idle[from..to].iter().map(|c| c.3).collect();
                let clean = s.close_idle(&keys);
                self.closed.fetch_add(clean as u64, Ordering::Relaxed);
            }
        }
    }
}
