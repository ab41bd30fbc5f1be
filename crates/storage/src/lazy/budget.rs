//! Bounds of the lazy fill's hydrates: the budget of hydrates reads propose in the air
//! ([`READ_HYDRATE_KIB`]), and the hydrate entries committed lately ([`Recent`]), which
//! reads served between an entry's commit and its apply (they still find the blocks
//! unfilled) must not propose again: each would be another 1 MiB entry through the log.
//!
//! An optimisation only: a hydrate skipped is never a wrong answer (the read is served
//! from the backup's bytes all the same; the pre-warm, or a later read, fills it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// KiB of hydrates proposed by reads in the air on the node at most (256 MiB); past it a
/// read's hydrate is skipped. Writes' hydrates are not counted: they wait.
pub(crate) const READ_HYDRATE_KIB: usize = 256 * 1024;

/// How long a committed hydrate entry is remembered.
pub(crate) const RECENT: Duration = Duration::from_secs(5);

/// Entries remembered at most (oldest first forgotten past it).
const MAX_RECENT: usize = 1 << 16;

/// Hydrate entries (volume, chunk, offset) committed in the last [`RECENT`].
#[derive(Default)]
pub(crate) struct Recent(Mutex<HashMap<(u64, u64, u64), Instant>>);

impl Recent {
    /// Whether the entry was committed in the last [`RECENT`].
    pub(crate) fn contains(&self, key: &(u64, u64, u64)) -> bool {
        self.lock().get(key).is_some_and(|at| at.elapsed() < RECENT)
    }

    /// The entry was committed now.
    pub(crate) fn insert(&self, key: (u64, u64, u64)) {
        let mut map = self.lock();
        if map.len() >= MAX_RECENT {
            map.retain(|_, at| at.elapsed() < RECENT);
            if map.len() >= MAX_RECENT {
                // More commits than remembered in the window: start over (a few repeated
                // proposals at worst).
                map.clear();
            }
        }
        map.insert(key, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64, u64), Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
