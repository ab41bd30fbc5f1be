//! The access record: client reads served per (volume, chunk) since this node started,
//! which a backup reports per chunk (`ChunkUpload::reads`) so that a restore of it
//! pre-warms the most read chunks first.
//!
//! In memory only and bounded: past [`MAX_CHUNKS`] chunks, new chunks are not counted
//! (those counted keep counting). An order hint, never a correctness input.

use std::collections::HashMap;
use std::sync::Mutex;

/// Chunks counted at most (about 32 bytes each).
pub(crate) const MAX_CHUNKS: usize = 1 << 20;

/// Reads per (volume, chunk).
pub(crate) struct AccessRecord {
    max: usize,
    counts: Mutex<HashMap<(u64, u64), u64>>,
}

impl Default for AccessRecord {
    fn default() -> Self {
        AccessRecord::with_max(MAX_CHUNKS)
    }
}

impl AccessRecord {
    /// A record of at most `max` chunks.
    pub(crate) fn with_max(max: usize) -> Self {
        AccessRecord {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// One client read of the chunk was served.
    pub(crate) fn count(&self, volume: u64, chunk: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let full = counts.len() >= self.max;
        match counts.get_mut(&(volume, chunk)) {
            Some(n) => *n = n.saturating_add(1),
            None if !full => {
                counts.insert((volume, chunk), 1);
            }
            None => {}
        }
    }

    /// Client reads of the chunk served so far.
    pub(crate) fn reads(&self, volume: u64, chunk: u64) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(volume, chunk)).copied().unwrap_or(0)
    }
}
