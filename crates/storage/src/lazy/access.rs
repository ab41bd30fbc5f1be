//! The access record: client reads served per (volume, chunk) since this node started,
//! which a backup reports per chunk (`ChunkUpload::reads`) so that a restore of it
//! pre-warms the most read chunks first.
//!
//! In memory only and bounded ([`MAX_CHUNKS`]), sharded so that counting (on the Raft
//! poller's thread, for every read answered) takes one small lock and never rehashes more
//! than a shard: a full shard forgets its least recently read eighth, so new chunks are
//! always counted. A deleted volume's chunks are forgotten when they are dropped. An order
//! hint, never a correctness input.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Chunks counted at most (about 40 bytes each).
pub(crate) const MAX_CHUNKS: usize = 1 << 20;

/// Shards of the record.
const SHARDS: usize = 64;

/// Reads per (volume, chunk).
pub(crate) struct AccessRecord {
    per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    // Reads and the tick of the last one.
    counts: HashMap<(u64, u64), (u64, u64)>,
    tick: u64,
}

impl Default for AccessRecord {
    fn default() -> Self {
        AccessRecord::with_max(MAX_CHUNKS)
    }
}

impl AccessRecord {
    /// A record of about `max` chunks at most (at least one per shard).
    pub(crate) fn with_max(max: usize) -> Self {
        AccessRecord {
            per_shard: max.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// One client read of the chunk was served.
    pub(crate) fn count(&self, volume: u64, chunk: u64) {
        let mut shard = self.shard(volume, chunk);
        shard.tick += 1;
        let tick = shard.tick;
        if let Some((n, last)) = shard.counts.get_mut(&(volume, chunk)) {
            *n = n.saturating_add(1);
            *last = tick;
            return;
        }
        if shard.counts.len() >= self.per_shard {
            // Forget the least recently read eighth (at least one): a scan of one shard,
            // once every eighth of it new chunks.
            let mut ticks: Vec<u64> = shard.counts.values().map(|&(_, t)| t).collect();
            let cut = (ticks.len() / 8).max(1) - 1;
            let (_, &mut oldest, _) = ticks.select_nth_unstable(cut);
            shard.counts.retain(|_, &mut (_, t)| t > oldest);
        }
        shard.counts.insert((volume, chunk), (1, tick));
    }

    /// Client reads of the chunk served so far.
    pub(crate) fn reads(&self, volume: u64, chunk: u64) -> u64 {
        self.shard(volume, chunk)
            .counts
            .get(&(volume, chunk))
            .map_or(0, |&(n, _)| n)
    }

    /// Forgets the volume's `chunks` (dropped: the volume was deleted).
    pub(crate) fn forget(&self, volume: u64, chunks: &[u64]) {
        for &chunk in chunks {
            self.shard(volume, chunk).counts.remove(&(volume, chunk));
        }
    }

    fn shard(&self, volume: u64, chunk: u64) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one((volume, chunk)) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}
